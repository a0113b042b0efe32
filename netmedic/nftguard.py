"""netmedic's reflection guard in nf_tables: read and change it through libnftables' JSON API (the
`nftables` Python module of Debian's python3-nftables), never through nft's text.

The guard is netmedic's own bridge-family table, holding (for the network namespace it runs in):

    table bridge netmedic {
        set owners { type ether_addr . ifname }      # every guarded VM MAC with its own tap
        set vms_BRIDGE { type ether_addr }            # the guarded VM MACs of one bridge
        chain prerouting {
            type filter hook prerouting priority -200; policy accept;
            ether saddr @vms_BRIDGE ether saddr . iifname != @owners counter drop comment "guard BRIDGE"
        }
    }

A frame whose source MAC is a guarded VM's but that enters through any port other than that VM's tap
(a round-robin bond or a switch reflecting the VM's broadcasts, or another machine using the MAC) is
dropped before the bridge learns from it (learning happens after the bridge prerouting hook), so the
VM's fdb entry stays on its tap: a plain dynamic entry, on every kernel with nf_tables' bridge family
(3.18+), sticky flag or not. Guarding one more VM is two set elements in one transaction; the rule
(one per bridge) is made with the bridge's first VM and removed with its last, the table with the
last bridge. The rule's counter is the evidence: frames with a VM's MAC that came in elsewhere.

The rule matches the source MAC on every bridge of the namespace (`meta ibrname` needs the
nft_meta_bridge module, which this kernel lacks), but the allowed pairs are those of every bridge,
so a MAC a VM uses on two bridges passes on both of its taps.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Optional

from netmedic.errors import DependencyError, HostError
from netmedic.facts import BridgeGuard, GuardTable
from netmedic.firewall import generation  # the ruleset generation (NFT_MSG_GETGEN, ~50 µs): the cache key

FAMILY = "bridge"
TABLE = "netmedic"
CHAIN = "prerouting"
PRIORITY = -200  # before anything else on the hook; the bridge learns after the hook in any case
OWNERS = "owners"
_T = {"family": FAMILY, "table": TABLE}
_SADDR = {"payload": {"protocol": "ether", "field": "saddr"}}

_ctx = None
_cache: dict = {}  # netns inode -> (generation, _Model): the latest read (or own change) there
stats = {"reads": 0, "cached": 0}  # how often the table was listed / a cached model reused (tests, bench)



def set_name(bridge: str) -> str:
    """The bridge's set name: an nft identifier whatever the interface name (a saved ruleset must load
    again with `nft -f`), e.g. vms_br0, vms_br_x2d0 for br-0."""
    return "vms_" + re.sub(r"[^A-Za-z0-9]", lambda m: f"_x{ord(m.group()):02x}", bridge)


def rule_comment(bridge: str) -> str:
    return f"guard {bridge}"


def available() -> bool:
    try:
        import nftables  # noqa: F401
    except ImportError:
        return False
    return True


def _nft():
    """One libnftables context per process (creating it loads the library: ~1 ms)."""
    global _ctx
    if _ctx is None:
        try:
            import nftables
        except ImportError:
            raise DependencyError("the reflection guard needs libnftables' Python module (Debian/Ubuntu: "
                                  "python3-nftables; EL: python3-nftables)") from None
        ctx = nftables.Nftables()
        ctx.set_json_output(True)
        ctx.set_handle_output(True)
        ctx.set_stateless_output(False)
        _ctx = ctx
    return _ctx


def _cmd(commands: list, what: str):
    rc, out, err = _nft().json_cmd({"nftables": commands})
    if rc != 0:
        msg = " ".join((err or "").split()).replace("internal:0:0-0: ", "") or f"rc {rc}"
        raise HostError(f"nft: {what}: {msg}")
    return out


@dataclasses.dataclass
class _Model:
    """netmedic's table as listed: what a change is planned from, and what a read hands out."""

    present: bool = False
    hooked: bool = False
    sets: dict = dataclasses.field(default_factory=dict)  # name -> set of elements (mac, or (mac, tap))
    rules: dict = dataclasses.field(default_factory=dict)  # bridge -> {"handle", "packets", "bytes"}

    def table(self) -> GuardTable:
        bridges = {}
        for bridge, r in self.rules.items():
            macs = self.sets.get(set_name(bridge))
            if macs is None:
                continue  # a rule without its set cannot be: re-made when the bridge is guarded
            bridges[bridge] = BridgeGuard(bridge=bridge, macs=frozenset(macs), rule=True, drops=r["packets"],
                                          drop_bytes=r["bytes"])
        return GuardTable(present=self.present, hooked=self.hooked,
                          owners=frozenset(self.sets.get(OWNERS, ())), bridges=bridges)


def _elem(e):
    v = e.get("elem", {}).get("val") if isinstance(e, dict) and "elem" in e else e
    if isinstance(v, dict) and isinstance(v.get("concat"), list) and len(v["concat"]) == 2:
        return (str(v["concat"][0]).lower(), str(v["concat"][1]))
    return str(v).lower() if isinstance(v, str) else None


def _load() -> _Model:
    """List netmedic's table (its cost grows with the number of guarded MACs: libnftables fills its
    cache with every element; ~20-60 ms for 1,000)."""
    stats["reads"] += 1
    rc, out, _err = _nft().json_cmd({"nftables": [{"list": {"table": {"family": FAMILY, "name": TABLE}}}]})
    if rc != 0:
        return _Model()  # ENOENT: no table (any other failure shows when writing)
    m = _Model(present=True)
    for obj in (out or {}).get("nftables", []):
        if "set" in obj:
            m.sets[obj["set"].get("name")] = {x for x in map(_elem, obj["set"].get("elem", [])) if x is not None}
        elif "chain" in obj and obj["chain"].get("name") == CHAIN and obj["chain"].get("hook") == "prerouting":
            m.hooked = True
        elif "rule" in obj and obj["rule"].get("chain") == CHAIN:
            r = obj["rule"]
            comment = r.get("comment") or ""
            if not comment.startswith("guard "):
                continue
            counter = next((x["counter"] for x in r.get("expr", []) if isinstance(x, dict) and "counter" in x), None)
            counter = counter if isinstance(counter, dict) else {}
            m.rules[comment[len("guard "):]] = {"handle": r.get("handle"), "packets": int(counter.get("packets", 0)),
                                                "bytes": int(counter.get("bytes", 0))}
    return m


def _netns() -> int:
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return 0


def _model(fresh: bool = False) -> tuple:
    """(generation, _Model): the cached model while the ruleset generation is the one it was read at."""
    gen = generation()
    cached = _cache.get(_netns())
    if not fresh and gen is not None and cached is not None and cached[0] == gen:
        stats["cached"] += 1
        return gen, cached[1]
    m = _load()
    if gen is not None:
        _cache[_netns()] = (gen, m)
    return gen, m


def _changed(gen0: Optional[int], m: _Model, apply) -> None:
    """After netmedic's own commit: when it was the only change since `gen0`, apply it to the cached model;
    otherwise forget the model (the next read lists the table again)."""
    gen1 = generation()
    if gen0 is None or gen1 is None or gen1 != (gen0 + 1) & 0xFFFFFFFF or apply is None:
        _cache.pop(_netns(), None)
        return
    apply(m)
    _cache[_netns()] = (gen1, m)


def read(fresh: bool = False) -> GuardTable:
    """The guard as the kernel has it. Listed again only when the ruleset generation changed since the last
    read (the drop counters change without a new generation: `fresh` lists it anyway, for the counters)."""
    try:
        return _model(fresh)[1].table()
    except DependencyError as exc:
        return GuardTable(present=False, error=str(exc))


def add(bridge: str, mac: str, tap: str, stale_tap: Optional[str] = None) -> None:
    """Guard `mac` on `bridge`: its frames are accepted from `tap` only. Makes the table, the chain, the
    sets and the bridge's rule when missing (a firewall reload took them); one transaction."""
    mac = mac.lower()
    gen0, m = _model()
    vms = set_name(bridge)
    new_rule = not (m.present and m.hooked and bridge in m.rules and vms in m.sets)
    cmds: list = []
    # Only what is missing (an `add` of an existing object is harmless, but has libnftables fill its cache
    # with every element first: tens of ms with 1,000 guarded MACs).
    if not m.present:
        cmds.append({"add": {"table": {"family": FAMILY, "name": TABLE}}})
    if not m.hooked:
        cmds.append({"add": {"chain": {**_T, "name": CHAIN, "type": "filter", "hook": "prerouting",
                                       "prio": PRIORITY, "policy": "accept"}}})
    if OWNERS not in m.sets:
        cmds.append({"add": {"set": {**_T, "name": OWNERS, "type": ["ether_addr", "ifname"]}}})
    if vms not in m.sets:
        cmds.append({"add": {"set": {**_T, "name": vms, "type": "ether_addr"}}})
    if new_rule:
        if bridge in m.rules:  # its set is gone: the rule is re-made with it
            cmds.append({"delete": {"rule": {**_T, "chain": CHAIN, "handle": m.rules[bridge]["handle"]}}})
        cmds.append({"add": {"rule": {**_T, "chain": CHAIN, "comment": rule_comment(bridge), "expr": [
            {"match": {"op": "==", "left": _SADDR, "right": f"@{vms}"}},
            {"match": {"op": "!=", "left": {"concat": [_SADDR, {"meta": {"key": "iifname"}}]},
                       "right": f"@{OWNERS}"}},
            {"counter": None},
            {"drop": None}]}}})
    stale = stale_tap and stale_tap != tap and (mac, stale_tap) in m.sets.get(OWNERS, ())
    if stale:
        cmds.append({"delete": {"element": {**_T, "name": OWNERS, "elem": [{"concat": [mac, stale_tap]}]}}})
    cmds += [
        {"add": {"element": {**_T, "name": OWNERS, "elem": [{"concat": [mac, tap]}]}}},
        {"add": {"element": {**_T, "name": vms, "elem": [mac]}}},
    ]
    _cmd(cmds, f"guard {mac} on {tap} of {bridge}")

    def apply(model: _Model) -> None:
        model.present = model.hooked = True
        owners = model.sets.setdefault(OWNERS, set())
        if stale:
            owners.discard((mac, stale_tap))
        owners.add((mac, tap))
        model.sets.setdefault(vms, set()).add(mac)

    _changed(gen0, m, None if new_rule else apply)  # a new rule's handle is only known from a listing


def remove(bridge: str, mac: str, tap: str) -> None:
    """Stop guarding `mac` on `bridge` (and forget its tap); the bridge's rule and set go with its last
    MAC, the table with the last bridge. What is already gone is no error."""
    mac = mac.lower()
    gen0, m = _model()
    if not m.present:
        return  # no table: nothing of netmedic's is left to remove
    vms = set_name(bridge)
    cmds: list = []
    if (mac, tap) in m.sets.get(OWNERS, ()):
        cmds.append({"delete": {"element": {**_T, "name": OWNERS, "elem": [{"concat": [mac, tap]}]}}})
    left = set(m.sets.get(vms, ()))
    if mac in left:
        cmds.append({"delete": {"element": {**_T, "name": vms, "elem": [mac]}}})
        left.discard(mac)
    drop_bridge = not left
    drop_table = drop_bridge and not any(elems for n, elems in m.sets.items() if n.startswith("vms_") and n != vms)
    if drop_table:
        cmds = [{"delete": {"table": {"family": FAMILY, "name": TABLE}}}]
    elif drop_bridge:  # the bridge's last guarded MAC: its rule and set go
        if bridge in m.rules:
            cmds.append({"delete": {"rule": {**_T, "chain": CHAIN, "handle": m.rules[bridge]["handle"]}}})
        if vms in m.sets:
            cmds.append({"delete": {"set": {**_T, "name": vms}}})
    if not cmds:
        return
    _cmd(cmds, f"stop guarding {mac} on {tap} of {bridge}")

    def apply(model: _Model) -> None:
        if drop_table:
            model.present, model.hooked, model.sets, model.rules = False, False, {}, {}
            return
        model.sets.get(OWNERS, set()).discard((mac, tap))
        model.sets.get(vms, set()).discard(mac)
        if drop_bridge:
            model.rules.pop(bridge, None)
            model.sets.pop(vms, None)

    _changed(gen0, m, apply)
