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
class KernelEvent:
    """One kernel-log line netmedic recognises (netmedic.kmsg.PATTERNS)."""

    kind: str  # 'nic_hang', 'nic_reset', 'tx_timeout', 'conntrack_full', 'own_address'
    device: Optional[str]  # the interface the line names (None for conntrack)
    message: str  # the line as the kernel logged it
    ts: float  # seconds since boot (the kernel's timestamp)
    seq: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)
