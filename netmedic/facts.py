"""The plain data of the host facts beyond netlink (firewall chains, NAT rules, dnsmasq) and the pure
helpers that judge them. Reading them is netmedic.ops' and netmedic.hostfacts' job; invariants and
healers import this module, which touches nothing on the host.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from typing import Optional


@dataclasses.dataclass(frozen=True)
class ForwardChain:
    backend: str  # 'nft' or 'legacy'
    policy: str  # 'ACCEPT', 'DROP', ...
    rules: tuple  # '-A FORWARD ...' lines as iptables -S prints them


@dataclasses.dataclass(frozen=True)
class NatRule:
    backend: str  # 'nft' (iptables-nft), 'legacy' (iptables-legacy) or 'nft-native' (nft table)
    rule: str  # the rule as the tool prints it
    source: Optional[str]  # the -s / saddr network, None when the rule has none
    negated_dest: Optional[str] = None  # the `! -d NET` network, if any


@dataclasses.dataclass(frozen=True)
class Dnsmasq:
    network: str
    pid_file: str
    pid: Optional[int]  # from the pid file; None when there is no (readable) pid file
    alive: bool  # a dnsmasq process with that pid exists ...
    same_netns: bool  # ... and runs in this network namespace
    cmdline: str = ""


def bridge_accept_rule(bridge: str) -> list:
    """The FORWARD rule netmedic inserts so bridged traffic of one bridge is not dropped."""
    return ["-i", bridge, "-o", bridge, "-j", "ACCEPT"]


def masquerades(rules: list, subnet: str) -> list:
    """The rules that masquerade traffic from `subnet` (a rule with no source matches everything)."""
    net = ipaddress.ip_network(subnet, strict=False)
    out = []
    for r in rules:
        if r.source is None:
            out.append(r)
            continue
        src = ipaddress.ip_network(r.source, strict=False)
        if src.version == net.version and net.subnet_of(src):
            out.append(r)
    return out


@dataclasses.dataclass(frozen=True)
class Counters:
    """A VM tap's interface counters (IFLA_STATS64). The tap's rx is what the guest sent, its tx what the
    bridge delivered to the guest."""

    rx_packets: int
    tx_packets: int
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclasses.dataclass(frozen=True)
class RouteLookup:
    """The host's route lookup (RTM_GETROUTE) for one address of a VM, and the FIB entry that matched."""

    address: str  # the VM's address
    source: str  # where the address was found: 'dhcp_lease', 'neighbour', 'guest_agent'
    oif: Optional[str]  # the interface the host's packets to it leave through (None: no route)
    route: str  # the matched FIB entry in plain words: "198.51.100.0/28 dev veth1 table 254"
    gateway: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class DirectLink:
    """A macvlan/macvtap link (a VM's macvtap, or a host macvlan), with its parent (lower) device."""

    name: str
    index: int
    kind: str  # 'macvtap' or 'macvlan'
    mode: Optional[str]  # 'private', 'vepa', 'bridge', 'passthru', 'source'
    parent: Optional[str]  # name of the lower device (None: not found in this namespace)
    parent_up: bool = False
    parent_carrier: bool = False
    up: bool = False
    carrier: bool = False
    addresses: tuple = ()  # 'addr/prefix' on this link (a host macvlan that can reach the guests)


MACVLAN_MODES = {1: "private", 2: "vepa", 4: "bridge", 8: "passthru", 16: "source"}
