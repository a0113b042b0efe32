"""The firewall of this network namespace as one observed fact (facts.Firewall), read only when it changed.

- nf_tables (nftables-native tables, firewalld's, and iptables-nft's, which are nf_tables tables too) is
  read through libnftables' JSON (the `nftables` module of python3-nftables), never by parsing `nft` text.
- The read is keyed by the nf_tables ruleset generation id, which the kernel bumps on every committed
  change and hands out on a tiny NFT_MSG_GETGEN netlink request (~50 µs): a pass that finds the
  generation unchanged reads nothing and reuses the Firewall of the last read.
- iptables-nft's FORWARD chain is also read through `iptables-nft -S FORWARD` (its xt matches, e.g.
  `-m physdev --physdev-is-bridged`, are opaque in nf_tables' JSON), but only when that chain exists and
  the generation changed. iptables-legacy has no generation and no event: read as before, each time,
  and only where its tables are loaded.
- Writes (netmedic's own accept rule, and only that) go through libnftables' JSON commands too.

Everything acts in the network namespace of the calling process.
"""
from __future__ import annotations

import os
import socket
import struct
import threading
from typing import Optional

from netmedic.errors import DependencyError, HostError
from netmedic.facts import (
    NETMEDIC_COMMENT,
    Firewall,
    ForwardChain,
    NatRule,
    NftChain,
    NftRule,
    literal_ifname,
    nft_accept_expr,
    render_rule,
)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1
NFTA_GEN_PROC_PID = 2
NFTA_GEN_PROC_NAME = 3
_NLMSG_ERROR = 2
_NLM_F_REQUEST = 1
_HDR = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")  # family, version, res_id (big endian, 0)

_lock = threading.Lock()
_cache: dict = {}  # netns inode -> Firewall (the latest read there)
_nft = None
stats = {"reads": 0, "cached": 0}  # how often the ruleset was read / reused (tests, bench)


def generation() -> Optional[int]:
    """The nf_tables ruleset generation of this namespace (NFT_MSG_GETGEN), None when unavailable."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    except OSError:
        return None
    try:
        sock.settimeout(2.0)
        sock.bind((0, 0))
        msg = _HDR.pack(_HDR.size + _NFGEN.size, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN, _NLM_F_REQUEST,
                        1, 0) + _NFGEN.pack(socket.AF_UNSPEC, 0, 0)
        sock.send(msg)
        data = sock.recv(8192)
    except OSError:
        return None
    finally:
        sock.close()
    return parse_gen(data)[0]


def parse_gen(data: bytes, end: Optional[int] = None):
    """(generation id, pid, process name) from a datagram holding an NFT_MSG_NEWGEN message, or
    (None, None, None)."""
    end = len(data) if end is None else end
    off = 0
    while off + _HDR.size <= end:
        length, kind, _flags, _seq, _pid = _HDR.unpack_from(data, off)
        if length < _HDR.size or off + length > end:
            break
        if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN:
            gen = pid = name = None
            pos = off + _HDR.size + _NFGEN.size
            while pos + 4 <= off + length:
                alen, atype = struct.unpack_from("=HH", data, pos)
                if alen < 4 or pos + alen > off + length:
                    break
                atype &= 0x3FFF
                if atype == NFTA_GEN_ID and alen >= 8:
                    gen = struct.unpack_from(">I", data, pos + 4)[0]
                elif atype == NFTA_GEN_PROC_PID and alen >= 8:
                    pid = struct.unpack_from(">I", data, pos + 4)[0]
                elif atype == NFTA_GEN_PROC_NAME:
                    name = bytes(data[pos + 4:pos + alen]).split(b"\0", 1)[0].decode("utf-8", "replace")
                pos += (alen + 3) & ~3
            return gen, pid, name
        off += (length + 3) & ~3
    return None, None, None


def _netns() -> int:
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return 0


def _nftables():
    """One libnftables context (JSON output), or DependencyError without python3-nftables."""
    global _nft
    if _nft is None:
        try:
            import nftables
        except ImportError:
            raise DependencyError("python3-nftables is not installed: nf_tables rulesets are not read") from None
        ctx = nftables.Nftables()
        ctx.set_json_output(True)
        ctx.set_handle_output(True)
        _nft = ctx
    return _nft


def _cmd(commands: list) -> dict:
    ctx = _nftables()
    rc, out, err = ctx.json_cmd({"nftables": commands})
    if rc != 0:
        raise HostError(f"libnftables: {(err or 'failed').strip().splitlines()[-1] if err else 'failed'}")
    return out if isinstance(out, dict) else {}


def parse_ruleset(data: dict) -> tuple:
    """(chains, nat_rules) from libnftables' JSON of `list ruleset`."""
    chains: dict = {}
    order: list = []
    rules: dict = {}
    for item in data.get("nftables", ()):
        if not isinstance(item, dict):
            continue
        if "chain" in item:
            c = item["chain"]
            key = (c.get("family"), c.get("table"), c.get("name"))
            prio = c.get("prio")
            chains[key] = c
            order.append(key)
            if isinstance(prio, dict):  # a symbolic priority: not expected from the JSON output
                c = dict(c, prio=None)
                chains[key] = c
        elif "rule" in item:
            r = item["rule"]
            key = (r.get("family"), r.get("table"), r.get("chain"))
            rules.setdefault(key, []).append(NftRule(int(r.get("handle") or 0), tuple(r.get("expr") or ()),
                                                     r.get("comment")))
    out = []
    nat: list = []
    for key in order:
        c = chains[key]
        chain = NftChain(family=key[0], table=key[1], name=key[2], rules=tuple(rules.get(key, ())),
                         hook=c.get("hook"), prio=c.get("prio"), policy=c.get("policy"), type=c.get("type"))
        out.append(chain)
        for rule in chain.rules:
            nr = _masquerade(chain, rule)
            if nr is not None:
                nat.append(nr)
    return tuple(out), tuple(nat)


def _prefix(right) -> Optional[str]:
    import ipaddress

    try:
        if isinstance(right, dict) and "prefix" in right:
            return str(ipaddress.ip_network(f"{right['prefix']['addr']}/{right['prefix']['len']}", strict=False))
        if isinstance(right, str):
            return str(ipaddress.ip_network(right, strict=False))
    except (ValueError, KeyError, TypeError):
        return None
    return None


def _masquerade(chain: NftChain, rule: NftRule) -> Optional[NatRule]:
    """A masquerade rule (native `masquerade` or iptables-nft's `-j MASQUERADE` xt target) as a NatRule."""
    masq = False
    src = dst = None
    for stmt in rule.expr:
        if not isinstance(stmt, dict):
            continue
        if "masquerade" in stmt:
            masq = True
        elif "xt" in stmt and isinstance(stmt["xt"], dict) and stmt["xt"].get("name") == "MASQUERADE":
            masq = True
        elif "match" in stmt:
            m = stmt["match"]
            left = m.get("left") if isinstance(m, dict) else None
            payload = left.get("payload") if isinstance(left, dict) else None
            if isinstance(payload, dict) and payload.get("protocol") in ("ip", "ip6"):
                if payload.get("field") == "saddr" and m.get("op") in ("==", "in"):
                    src = _prefix(m.get("right"))
                elif payload.get("field") == "daddr" and m.get("op") == "!=":
                    dst = _prefix(m.get("right"))
    if not masq:
        return None
    backend = "nft" if (chain.family, chain.table) == ("ip", "nat") else "nft-native"
    return NatRule(backend, f"{chain.where}: {render_rule(rule.expr)}", src, dst)


def _iptables_nft_forward() -> Optional[ForwardChain]:
    from netmedic import ops

    for chain in ops.read_forward_chains(backends=("nft",)):
        return chain
    return None


def read(force: bool = False, legacy: bool = True) -> Firewall:
    """The Firewall of this namespace: nf_tables read afresh only when its generation changed since the
    last read (in this process, in this namespace); iptables-legacy (with `legacy`) read each time where
    in use."""
    from netmedic import ops

    legacy = tuple(ops.read_forward_chains(backends=("legacy",))) if legacy else ()
    ns = _netns()
    gen = generation()
    with _lock:
        cached = _cache.get(ns)
        if not force and cached is not None and gen is not None and cached.generation == gen:
            stats["cached"] += 1
            return Firewall(cached.generation, cached.chains, _with_legacy(cached.iptables, legacy),
                            cached.nat_rules, cached.error)
        stats["reads"] += 1
        try:
            data = _cmd([{"list": {"ruleset": None}}])
            chains, nat = parse_ruleset(data)
            error = None
        except (DependencyError, HostError) as exc:
            # No libnftables: iptables-nft is still read through its own tool (as before).
            chains, nat, error = (), (), str(exc)
        nft_fwd = None
        if error is not None or any(c.family == "ip" and c.table == "filter" and c.name == "FORWARD" for c in chains):
            nft_fwd = _iptables_nft_forward()
        fw = Firewall(gen, chains, (nft_fwd,) if nft_fwd is not None else (), nat, error)
        _cache[ns] = fw
    return Firewall(fw.generation, fw.chains, _with_legacy(fw.iptables, legacy), fw.nat_rules, fw.error)


def _with_legacy(iptables: tuple, legacy: tuple) -> tuple:
    return tuple(c for c in iptables if c.backend != "legacy") + legacy


def forget() -> None:
    """Drop the cached read (tests)."""
    with _lock:
        _cache.clear()


# --- netmedic's own rule -------------------------------------------------------------------------------
def _check(family: str, table: str, chain: str, bridge: str) -> None:
    if family not in ("ip", "ip6", "inet", "bridge"):
        raise HostError(f"refusing nf_tables family {family!r}")
    for what, value in (("table", table), ("chain", chain)):
        if not isinstance(value, str) or not value or len(value) > 255:
            raise HostError(f"refusing nf_tables {what} {value!r}")
    if not literal_ifname(bridge):
        raise HostError(f"refusing to write a rule for {bridge!r}: nft/iptables would read it as a pattern")


def insert_accept(family: str, table: str, chain: str, bridge: str) -> None:
    """Insert `iifname BR oifname BR accept` (commented as netmedic's) at the top of that chain."""
    _check(family, table, chain, bridge)
    _cmd([{"insert": {"rule": {"family": family, "table": table, "chain": chain,
                               "expr": nft_accept_expr(bridge, family), "comment": NETMEDIC_COMMENT + bridge}}}])
    forget()


def own_rules(family: str, table: str, chain: str, bridge: str) -> list:
    """Handles of netmedic's accept rules for `bridge` in that chain (read now)."""
    _check(family, table, chain, bridge)
    try:
        data = _cmd([{"list": {"chain": {"family": family, "table": table, "name": chain}}}])
    except HostError as exc:
        if "No such file" in str(exc) or "does not exist" in str(exc):
            return []
        raise
    chains, _ = parse_ruleset(data)
    return [r.handle for c in chains for r in c.rules if r.comment == NETMEDIC_COMMENT + bridge]


def delete_accept(family: str, table: str, chain: str, bridge: str) -> None:
    """Delete netmedic's accept rules for `bridge` from that chain (nothing else; none there: done)."""
    handles = own_rules(family, table, chain, bridge)
    if handles:
        _cmd([{"delete": {"rule": {"family": family, "table": table, "chain": chain, "handle": h}}}
              for h in handles])
    forget()
