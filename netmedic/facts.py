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
class BridgeGuard:
    """One bridge's part of netmedic's reflection guard (netmedic.nftguard)."""

    bridge: str
    macs: frozenset  # the guarded VM MACs (lower-case)
    rule: bool  # the bridge's drop rule is in netmedic's prerouting chain
    drops: int = 0  # frames the rule dropped since it was made: a VM MAC that came in on another port
    drop_bytes: int = 0


@dataclasses.dataclass(frozen=True)
class GuardTable:
    """netmedic's bridge-family nf_tables table, as read from the kernel."""

    present: bool  # the table exists
    hooked: bool = False  # its prerouting base chain exists
    owners: frozenset = frozenset()  # (mac, tap) pairs whose frames pass
    bridges: dict = dataclasses.field(default_factory=dict)  # bridge -> BridgeGuard
    error: Optional[str] = None  # why it could not be read (python3-nftables missing)

    def guards(self, bridge: str, mac: str, tap: str) -> bool:
        """Are frames with `mac` dropped on every port of `bridge` but `tap`?"""
        bg = self.bridges.get(bridge)
        return bool(self.present and self.hooked and bg is not None and bg.rule and mac in bg.macs
                    and (mac, tap) in self.owners)

    def drops(self, bridge: str) -> int:
        bg = self.bridges.get(bridge)
        return bg.drops if bg is not None else 0
