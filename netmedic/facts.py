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
    # ... and runs in this network namespace: None when that cannot be known (under the unit's
    # capabilities /proc/PID/ns/net of another user's process is EACCES: unknown, not a violation)
    same_netns: Optional[bool]
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


# --- nf_tables (netmedic.firewall reads them through libnftables' JSON) ----------------------------------
# Interface names that nft and iptables read literally: nft takes a trailing `*` as a wildcard and `\`
# as an escape, iptables a trailing `+`. netmedic writes no rule for any other name.
LITERAL_IFNAME = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def literal_ifname(name) -> bool:
    """True when `name` is an interface name no firewall tool reads as a pattern."""
    return isinstance(name, str) and 0 < len(name) <= 15 and set(name) <= LITERAL_IFNAME \
        and name not in (".", "..") and not name.startswith("-")


NETMEDIC_COMMENT = "netmedic: accept bridged traffic of "  # + bridge name: the mark of netmedic's own rules


@dataclasses.dataclass(frozen=True)
class NftRule:
    handle: int
    expr: tuple  # the rule's statements as libnftables' JSON gives them (dicts)
    comment: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class NftChain:
    family: str  # 'ip', 'ip6', 'inet', 'bridge', 'arp', 'netdev'
    table: str
    name: str
    rules: tuple = ()  # NftRule, in order
    hook: Optional[str] = None  # None: a regular chain (reached by jump/goto only)
    prio: Optional[int] = None
    policy: Optional[str] = None  # 'accept' / 'drop' for a base chain
    type: Optional[str] = None  # 'filter', 'nat', 'route'

    @property
    def base(self) -> bool:
        return self.hook is not None

    @property
    def where(self) -> str:
        return f"table {self.family} {self.table} chain {self.name}"


@dataclasses.dataclass(frozen=True)
class Firewall:
    """The namespace's firewall as one fact, read only when the nf_tables generation changed."""

    generation: Optional[int]  # the nf_tables ruleset generation it was read at (None: unknown)
    chains: tuple = ()  # NftChain: every chain of every nf_tables table (iptables-nft's included)
    iptables: tuple = ()  # ForwardChain of each iptables backend in use (iptables-nft, iptables-legacy)
    nat_rules: tuple = ()  # NatRule: the masquerade rules of nf_tables (iptables-nft's included)
    error: Optional[str] = None  # why nf_tables could not be read (then `chains` is empty)

    def chain(self, family: str, table: str, name: str) -> Optional[NftChain]:
        for c in self.chains:
            if c.family == family and c.table == table and c.name == name:
                return c
        return None


def nft_accept_expr(bridge: str, family: str = "inet") -> list:
    """The statements of netmedic's accept for one bridge's own bridged traffic: `iifname BR oifname BR
    accept` (ip/inet tables, where br_netfilter shows the bridge as both interfaces)."""
    return [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": bridge}},
            {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": bridge}},
            {"accept": None}]


def is_netmedic_rule(rule: NftRule, bridge: str) -> bool:
    return rule.comment == NETMEDIC_COMMENT + bridge


def _render_value(v) -> str:
    if isinstance(v, dict):
        if "prefix" in v and isinstance(v["prefix"], dict):
            return f"{v['prefix'].get('addr')}/{v['prefix'].get('len')}"
        if "set" in v:
            return "{ " + ", ".join(_render_value(x) for x in v["set"]) + " }"
        if "meta" in v:
            return f"meta {v['meta'].get('key')}"
        if "payload" in v:
            return f"{v['payload'].get('protocol')} {v['payload'].get('field')}"
        if "ct" in v:
            return f"ct {v['ct'].get('key')}"
        if "range" in v:
            return "-".join(_render_value(x) for x in v["range"])
    if isinstance(v, list):
        return "{ " + ", ".join(_render_value(x) for x in v) + " }"
    if isinstance(v, str):
        return f'"{v}"' if not v.replace("-", "").replace("_", "").isalnum() or v in ("accept", "drop") else v
    return str(v)


def render_rule(expr) -> str:
    """A rule's JSON statements in nft's words, for evidence and audit lines (rendered from the JSON,
    never parsed back)."""
    out = []
    for stmt in expr:
        if not isinstance(stmt, dict) or len(stmt) != 1:
            out.append(str(stmt))
            continue
        (key, val), = stmt.items()
        if key == "match" and isinstance(val, dict):
            op = val.get("op", "==")
            out.append(f"{_render_value(val.get('left'))} {'' if op in ('==', 'in') else op + ' '}"
                       f"{_render_value(val.get('right'))}")
        elif key in ("accept", "drop", "return", "continue"):
            out.append(key)
        elif key in ("jump", "goto") and isinstance(val, dict):
            out.append(f"{key} {val.get('target')}")
        elif key == "counter":
            out.append("counter")
        elif key == "reject":
            out.append("reject")
        elif key == "xt" and isinstance(val, dict):
            out.append(f"xt {val.get('type')} {val.get('name')}")
        elif key == "vmap" and isinstance(val, dict):
            out.append(f"{_render_value(val.get('key'))} vmap {{...}}")
        else:
            out.append(key)
    return " ".join(out)


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
