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

import re
from typing import Optional

from netmedic.errors import DependencyError, HostError
from netmedic.facts import BridgeGuard, GuardTable

FAMILY = "bridge"
TABLE = "netmedic"
CHAIN = "prerouting"
PRIORITY = -200  # before anything else on the hook; the bridge learns after the hook in any case
OWNERS = "owners"
_T = {"family": FAMILY, "table": TABLE}
_SADDR = {"payload": {"protocol": "ether", "field": "saddr"}}

_ctx = None


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


def _listing() -> Optional[list]:
    """The objects of netmedic's table (None when there is no such table)."""
    rc, out, _err = _nft().json_cmd({"nftables": [{"list": {"table": {"family": FAMILY, "name": TABLE}}}]})
    if rc != 0:
        return None  # ENOENT: no table (any other failure shows when writing)
    return (out or {}).get("nftables", [])


def _elem_value(e):
    return e.get("elem", {}).get("val") if isinstance(e, dict) and "elem" in e else e


def read() -> GuardTable:
    """The guard as the kernel has it now."""
    try:
        objs = _listing()
    except DependencyError as exc:
        return GuardTable(present=False, error=str(exc))
    if objs is None:
        return GuardTable(present=False)
    sets: dict = {}
    hooked = False
    rules: dict = {}  # bridge -> (packets, bytes)
    for obj in objs:
        if "set" in obj:
            s = obj["set"]
            sets[s.get("name")] = [_elem_value(e) for e in s.get("elem", [])]
        elif "chain" in obj and obj["chain"].get("name") == CHAIN and obj["chain"].get("hook") == "prerouting":
            hooked = True
        elif "rule" in obj and obj["rule"].get("chain") == CHAIN:
            r = obj["rule"]
            comment = r.get("comment") or ""
            if not comment.startswith("guard "):
                continue
            counter = next((x["counter"] for x in r.get("expr", []) if isinstance(x, dict) and "counter" in x), None)
            counter = counter if isinstance(counter, dict) else {}
            rules[comment[len("guard "):]] = (int(counter.get("packets", 0)), int(counter.get("bytes", 0)))
    owners = set()
    for v in sets.get(OWNERS, []):
        if isinstance(v, dict) and isinstance(v.get("concat"), list) and len(v["concat"]) == 2:
            owners.add((str(v["concat"][0]).lower(), str(v["concat"][1])))
    bridges = {}
    names = {set_name(b): b for b in rules}
    for name, elems in sets.items():
        if not name.startswith("vms_"):
            continue
        bridge = names.get(name)
        if bridge is None:
            continue  # a set whose rule is gone: no bridge to name (re-made when the bridge is guarded)
        packets, nbytes = rules[bridge]
        bridges[bridge] = BridgeGuard(bridge=bridge, macs=frozenset(str(m).lower() for m in elems),
                                      rule=True, drops=packets, drop_bytes=nbytes)
    for bridge, (packets, nbytes) in rules.items():
        bridges.setdefault(bridge, BridgeGuard(bridge=bridge, macs=frozenset(), rule=True, drops=packets,
                                               drop_bytes=nbytes))
    return GuardTable(present=True, hooked=hooked, owners=frozenset(owners), bridges=bridges)


def add(bridge: str, mac: str, tap: str, stale_tap: Optional[str] = None) -> None:
    """Guard `mac` on `bridge`: its frames are accepted from `tap` only. Makes the table, the chain, the
    sets and the bridge's rule when missing (a firewall reload took them); one transaction."""
    mac = mac.lower()
    objs = _listing() or []
    vms = set_name(bridge)
    have_rule = any("rule" in o and o["rule"].get("chain") == CHAIN
                    and o["rule"].get("comment") == rule_comment(bridge) for o in objs)
    cmds: list = [
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        {"add": {"chain": {**_T, "name": CHAIN, "type": "filter", "hook": "prerouting", "prio": PRIORITY,
                           "policy": "accept"}}},
        {"add": {"set": {**_T, "name": OWNERS, "type": ["ether_addr", "ifname"]}}},
        {"add": {"set": {**_T, "name": vms, "type": "ether_addr"}}},
    ]
    if not have_rule:
        cmds.append({"add": {"rule": {**_T, "chain": CHAIN, "comment": rule_comment(bridge), "expr": [
            {"match": {"op": "==", "left": _SADDR, "right": f"@{vms}"}},
            {"match": {"op": "!=", "left": {"concat": [_SADDR, {"meta": {"key": "iifname"}}]},
                       "right": f"@{OWNERS}"}},
            {"counter": None},
            {"drop": None}]}}})
    if stale_tap and stale_tap != tap and (mac, stale_tap) in _owner_pairs(objs):
        cmds.append({"delete": {"element": {**_T, "name": OWNERS,
                                            "elem": [{"concat": [mac, stale_tap]}]}}})
    cmds += [
        {"add": {"element": {**_T, "name": OWNERS, "elem": [{"concat": [mac, tap]}]}}},
        {"add": {"element": {**_T, "name": vms, "elem": [mac]}}},
    ]
    _cmd(cmds, f"guard {mac} on {tap} of {bridge}")


def _owner_pairs(objs: list) -> set:
    out = set()
    for o in objs:
        if "set" in o and o["set"].get("name") == OWNERS:
            for e in o["set"].get("elem", []):
                v = _elem_value(e)
                if isinstance(v, dict) and isinstance(v.get("concat"), list) and len(v["concat"]) == 2:
                    out.add((str(v["concat"][0]).lower(), str(v["concat"][1])))
    return out


def remove(bridge: str, mac: str, tap: str) -> None:
    """Stop guarding `mac` on `bridge` (and forget its tap); the bridge's rule and set go with its last
    MAC, the table with the last bridge. What is already gone is no error."""
    mac = mac.lower()
    objs = _listing()
    if objs is None:
        return  # no table: nothing of netmedic's is left to remove
    vms = set_name(bridge)
    sets = {o["set"]["name"]: [_elem_value(e) for e in o["set"].get("elem", [])] for o in objs if "set" in o}
    cmds: list = []
    if (mac, tap) in _owner_pairs(objs):
        cmds.append({"delete": {"element": {**_T, "name": OWNERS, "elem": [{"concat": [mac, tap]}]}}})
    left = [str(m).lower() for m in sets.get(vms, [])]
    if mac in left:
        cmds.append({"delete": {"element": {**_T, "name": vms, "elem": [mac]}}})
        left.remove(mac)
    if not left:  # the bridge's last guarded MAC: its rule and set go
        for o in objs:
            r = o.get("rule")
            if r and r.get("chain") == CHAIN and r.get("comment") == rule_comment(bridge):
                cmds.append({"delete": {"rule": {**_T, "chain": CHAIN, "handle": r["handle"]}}})
        if vms in sets:
            cmds.append({"delete": {"set": {**_T, "name": vms}}})
        others = [n for n, elems in sets.items() if n.startswith("vms_") and n != vms and elems]
        if not others:
            cmds = [{"delete": {"table": {"family": FAMILY, "name": TABLE}}}]
    if cmds:
        _cmd(cmds, f"stop guarding {mac} on {tap} of {bridge}")
