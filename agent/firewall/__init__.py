"""Security-group firewall dataplane (nftables): validated model, pure renderer, atomic applier.

Standalone: nothing else in the agent imports it yet. See model.py (input and error codes),
render.py (ruleset layout), apply.py (loading, incremental updates, verify/restore).
"""
from agent.firewall.apply import (ApplyResult, FirewallApplier, FirewallApplyError, Nft, VerifyResult,
                                  bridge_netfilter_enabled)
from agent.firewall.model import (FirewallInputError, HostFirewall, PortFirewall, Rule, SecurityGroup)
from agent.firewall.render import Rendered, render

__all__ = ["ApplyResult", "FirewallApplier", "FirewallApplyError", "FirewallInputError", "HostFirewall",
           "Nft", "PortFirewall", "bridge_netfilter_enabled", "Rendered", "Rule", "SecurityGroup", "VerifyResult", "render"]
