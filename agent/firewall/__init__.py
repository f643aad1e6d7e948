"""Security-group firewall dataplane (nftables): validated model, pure renderer, atomic applier.

Wired into the agent through agent/network/firewall_sync.py (FirewallSync), the "firewall"
subsystem of the NetworkService: each accepted NetworkSpec's security groups become a HostFirewall
that is applied, then verified every second between passes. See model.py (input and error
codes), render.py (ruleset layout), apply.py (incremental updates, verify/restore) and load.py
(the one loader of every nftables table the agent owns, NAT's included: libnftables in process
or the nft CLI entered into the host's namespace, one atomic in-place transaction).
"""
from agent.firewall.apply import (ApplyResult, FirewallApplier, FirewallApplyError, Nft, VerifyResult,
                                  bridge_netfilter_enabled)
from agent.firewall.model import (FirewallInputError, HostFirewall, PortFirewall, Rule, SecurityGroup)
from agent.firewall.render import Rendered, render

__all__ = ["ApplyResult", "FirewallApplier", "FirewallApplyError", "FirewallInputError", "HostFirewall",
           "Nft", "PortFirewall", "bridge_netfilter_enabled", "Rendered", "Rule", "SecurityGroup", "VerifyResult", "render"]
