"""Gratuitous ARP for public IPs a host has just taken over.

When an elastic IP moves to another host, neighbours on the uplink (the outside router) still
hold the old host's MAC until their entry expires (tens of seconds). A gratuitous ARP from the
new host overrides that entry at once (Linux accepts it even within its locktime), so a move is
effective well within the 2 s target. The frame is built here from typed values, and the raw
socket is opened inside the host's namespace.
"""
from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address
from typing import Optional

from pyroute2 import netns as pnetns

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6


def garp_frame(src_mac: str, ip: IPv4Address) -> bytes:
    """An Ethernet broadcast ARP request with sender IP = target IP = ip (a gratuitous ARP)."""
    mac = bytes.fromhex(src_mac.replace(":", ""))
    if len(mac) != 6:
        raise ValueError(f"bad MAC {src_mac!r}")
    addr = ip.packed
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, addr, b"\x00" * 6, addr)
    return BROADCAST + mac + struct.pack("!H", ETH_P_ARP) + arp


def send_garp(netns: Optional[str], dev: str, src_mac: str, ips: list[IPv4Address],
              count: int = 2) -> None:
    if netns is None:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    else:
        sock = pnetns.create_socket(netns, socket.AF_PACKET, socket.SOCK_RAW,
                                    socket.htons(ETH_P_ARP))
    try:
        sock.bind((dev, ETH_P_ARP))
        for _ in range(count):
            for ip in ips:
                sock.send(garp_frame(src_mac, ip))
    finally:
        sock.close()
