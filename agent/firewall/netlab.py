"""A throw-away test bed for the firewall dataplane: network namespaces, a bridge, veth "taps".

Owns building and removing the topology that the dataplane tests and the benchmark use instead of
guests: one "host" namespace with a Linux bridge (br_netfilter on), and per "guest" a namespace
holding one end of a veth pair (MAC + IPv4 set) whose other end is a bridge port in the host
namespace, named like a tap. Every name starts with a random ``kfw-xxxxxx`` prefix; nothing is
created in, linked to or sent into the machine's own namespace (``ip -n NS`` everywhere).
Not used by the agent in production.
"""
from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass, field
from ipaddress import IPv4Address


def run(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=timeout)


@dataclass
class Guest:
    ns: str
    tap: str
    mac: str
    ipv4: IPv4Address


@dataclass
class FirewallBed:
    """``with FirewallBed() as bed: bed.add_guest(...)``; everything is deleted on exit."""

    bridge: str = "br-kfw"
    prefix: str = field(default_factory=lambda: f"kfw-{uuid.uuid4().hex[:6]}")
    guests: list[Guest] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"{self.prefix}-h"

    def __enter__(self) -> "FirewallBed":
        run("ip", "netns", "add", self.host)
        try:
            run("ip", "-n", self.host, "link", "set", "lo", "up")
            run("ip", "netns", "exec", self.host, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
            run("ip", "-n", self.host, "link", "add", self.bridge, "type", "bridge")
            run("ip", "-n", self.host, "link", "set", self.bridge, "up")
        except Exception:
            self.close()
            raise
        return self

    def add_guest(self, index: int, ipv4: str, prefixlen: int = 16) -> Guest:
        ns = f"{self.prefix}-g{index}"
        tap = f"kt{index}"
        mac = "02:4b:%02x:%02x:%02x:01" % (index >> 16 & 255, index >> 8 & 255, index & 255)
        run("ip", "netns", "add", ns)
        guest = Guest(ns, tap, mac, IPv4Address(ipv4))
        self.guests.append(guest)
        run("ip", "-n", self.host, "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", ns)
        run("ip", "-n", self.host, "link", "set", tap, "master", self.bridge, "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", ns, "link", "set", "eth0", "address", mac, "up")
        run("ip", "-n", ns, "addr", "add", f"{ipv4}/{prefixlen}", "dev", "eth0")
        return guest

    def close(self) -> None:
        for g in self.guests:
            run("ip", "netns", "del", g.ns, check=False)
        self.guests = []
        run("ip", "netns", "del", self.host, check=False)

    def __exit__(self, *exc: object) -> None:
        self.close()


def leftovers(prefix: str = "kfw-") -> list[str]:
    """Namespaces with our prefix still present (tests assert none remain)."""
    out = run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]
