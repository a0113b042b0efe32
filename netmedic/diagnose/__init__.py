"""`netmedic diagnose DOMAIN`: walk the path of one VM NIC hop by hop and name the first broken hop.

A bridged NIC's hops (docs/diagnose.md): 1 domain and NIC, 2 tap, 3 bridge port, 4 fdb, 5 duplicates,
6 uplink, 7 L3 on the host, 8 the VM's IP address, 9 probe and 10 DHCP conversation (these two only
with --probe: it sends an ARP probe and watches the DHCP exchange). A macvtap or hostdev NIC walks its
own path (netmedic.diagnose.direct). Each hop has a verdict (ok / broken / risk / unknown), evidence
and a fix.

The verdicts come from one observation (the same Snapshot the invariants judge) and the invariants
themselves: each invariant declares the hop its violations belong on, and diagnose names none of them,
so `diagnose` and `check` never disagree. What diagnose adds is what no invariant judges: the domain's
own XML (hop 1), IP discovery (hop 8), the probe and the DHCP watch (hops 9, 10). Read-only, except
that --probe sends one ARP request from the bridge.

Modules: hops (the bridged path and how violations land on hops), direct (macvtap/hostdev), probe (the
raw-socket capture), dhcp (hop 10), ipfind (addresses, guest agent, the daemon's fdb moves), render.
JSON output: docs/diagnose.schema.json. Exit 0: no broken hop; 1: a hop is broken; 2: error.
"""
from __future__ import annotations

import time
from typing import Optional

from netmedic import hostfacts, nl, pathfacts
from netmedic import inventory as inventory_mod
from netmedic.diagnose import dhcp, direct, ipfind
from netmedic.diagnose import hops as hops_mod
from netmedic.diagnose.hops import HOPS, Ctx, Hop, uplinks
from netmedic.diagnose.probe import DHCP_SECONDS, arp_request, run_probe  # noqa: F401 (public)
from netmedic.diagnose.render import render
from netmedic.errors import InputError
from netmedic.observe import observe
from netmedic.policies import INVARIANTS

SCHEMA_VERSION = 2
VERDICTS = ("ok", "broken", "risk", "unknown")
RECENT_SECONDS = 1.0  # the tap counters' "last seconds" window without --probe


class DiagnoseError(InputError):
    """The domain or NIC to diagnose does not exist (exit 2)."""


def all_needs() -> set:
    """Every fact any registered invariant reads: diagnose judges with all of them."""
    out: set = set()
    for inv in INVARIANTS.values():
        out |= set(inv.NEEDS)
    return out


def _select_nic(domain, selector: Optional[str]):
    nics = list(domain.nics) + list(domain.direct_nics)
    if not nics:
        raise DiagnoseError(f"domain {domain.name} has no network interface netmedic can walk")
    if selector is None:
        return nics[0], nics[1:]
    sel = selector.strip().lower()
    for n in nics:
        dev = getattr(n, "tap", None) or getattr(n, "dev", None)
        if n.mac == sel.replace("-", ":") or (dev and dev.lower() == sel):
            return n, [o for o in nics if o is not n]
    have = ", ".join(f"{n.mac} ({getattr(n, 'tap', None) or getattr(n, 'dev', None)})" for n in nics)
    raise DiagnoseError(f"domain {domain.name} has no NIC with MAC or tap {selector!r} (it has: {have})")


def violations(snap, policy) -> list:
    """What `netmedic check` reports for this snapshot: the enabled invariants, in scope, not off."""
    out = []
    for name, inv in INVARIANTS.items():
        ipol = policy.invariants[name]
        if not ipol.enabled:
            continue
        out += [v for v in inv.check(snap, ipol.options) if policy.in_scope(v.subject.bridge, v.subject.domain)
                and ipol.mode_for(v.subject.bridge) != "off"]
    return out


def _counters(netlink, tap: Optional[str]) -> Optional[dict]:
    link = netlink.link(tap) if tap else None
    c = pathfacts.counters(netlink, [(tap, link.index)]).get(tap) if link is not None else None
    return None if c is None else {"from_guest": c.rx_packets, "to_guest": c.tx_packets, "t": time.monotonic()}


def diagnose(domain: str, nic: Optional[str] = None, domain_dir: Optional[str] = None,
             network_dir: Optional[str] = None, policy=None, leases_dir: str = hostfacts.DEFAULT_LEASES_DIR,
             probe: bool = False, probe_seconds: float = 1.5, netlink=None, dhcp_seconds: float = DHCP_SECONDS,
             socket_path: Optional[str] = None, agent: bool = True, state=None) -> dict:
    from netmedic import settings

    policy = policy or settings.load_policy(None)
    inv = inventory_mod.load(domain_dir, network_dir)
    dom = inv.domains.get(domain)
    if dom is None:
        bad = [str(e) for e in inv.errors if domain in str(e)]
        raise DiagnoseError(f"domain {domain!r} is not running here (no run-state XML in {domain_dir})"
                            + (f"; {bad[0]}" if bad else ""))
    chosen, others = _select_nic(dom, nic)
    bridged = isinstance(chosen, inventory_mod.VmNic)
    own = netlink is None
    netlink = netlink or nl.Netlink()
    try:
        snap = observe(netlink, inv, {}, needs=all_needs(), leases_dir=leases_dir,
                       kernel=state.kernel if state is not None else None)
        before = _counters(netlink, chosen.tap) if bridged else None
        found = ipfind.find(netlink, chosen, leases_dir, agent=agent)
        if not bridged:
            ctx = Ctx(snap, chosen, policy, violations(snap, policy))
            hops = direct.walk(ctx, others)
            vm_ip = hops_mod.hop_ip(ctx, hops[3], found, leases_dir)
            probe_result = None
        else:
            hops = [Hop(num, name, title) for num, name, title in HOPS]
            ctx = Ctx(snap, chosen, policy, [])
            vm_ip = hops_mod.hop_ip(ctx, hops[7], found, leases_dir)
            probe_result = None
            if probe:
                probe_result = run_probe(snap, chosen, vm_ip, probe_seconds, dhcp_seconds,
                                         tuple(uplinks(snap, chosen.bridge)))
                cap = probe_result.get("capture") or {}
                if cap.get("ports"):
                    snap.sightings = {(chosen.bridge, chosen.mac): {
                        "ports": cap["ports"], "incoming": cap["incoming"], "reflected": cap["reflected"],
                        "remote": cap["remote"], "seconds": cap["seconds"]}}
            elif before is not None:
                time.sleep(max(0.0, RECENT_SECONDS - (time.monotonic() - before["t"])))
            counters = _recent(before, _counters(netlink, chosen.tap))
            ctx.mine = [v for v in violations(snap, policy) if hops_mod.concerns(v, chosen)]
            moves = ipfind.daemon_moves(chosen.mac, socket_path)
            hops_mod.hop_nic(ctx, hops[0], others)
            hops_mod.hop_tap(ctx, hops[1], counters)
            hops_mod.hop_port(ctx, hops[2])
            hops_mod.hop_fdb(ctx, hops[3], moves)
            hops_mod.hop_duplicates(ctx, hops[4])
            hops_mod.hop_uplink(ctx, hops[5], hops[3])
            hops_mod.hop_l3(ctx, hops[6])
            hops_mod.hop_probe(ctx, hops[8], probe_result, vm_ip)
            dhcp.hop_dhcp(ctx, hops[9], probe_result, vm_ip, counters, leases_dir)
            _remedies(snap, policy, hops)
    finally:
        if own:
            netlink.close()
    return _report(dom, chosen, bridged, hops, vm_ip, probe and bridged, inv)


def _remedies(snap, policy, hops) -> None:
    """What a host-dependent remedy option resolves to here (Invariant.choice: a `remedy: auto` ->
    pin-sticky or guard), on the invariant's hop, once the kernel's answer settled it or the policy forces it."""
    by_name = {h.name: h for h in hops}
    for name, inv in INVARIANTS.items():
        ipol = policy.invariants.get(name)
        choice = inv.choice(snap, ipol.options) if ipol is not None and ipol.enabled else None
        if choice and (choice.get("detected") or choice.get("remedy") != "auto") and inv.HOP in by_name:
            by_name[inv.HOP].evidence.setdefault("remedies", {})[name] = {
                k: choice.get(k) for k in ("remedy", "chosen", "why")}


def _state(args):
    """netmedic's state, read only (what the kernel showed about itself), or None."""
    from netmedic.settings import DEFAULT_STATE_DIR
    from netmedic.state import State

    try:
        return State(getattr(args, "state_dir", None) or DEFAULT_STATE_DIR).read()
    except OSError:
        return None


def _recent(before: Optional[dict], after: Optional[dict]) -> Optional[dict]:
    if before is None or after is None:
        return None
    return {"from_guest": after["from_guest"], "to_guest": after["to_guest"],
            "from_guest_recent": after["from_guest"] - before["from_guest"],
            "to_guest_recent": after["to_guest"] - before["to_guest"],
            "recent_seconds": round(after["t"] - before["t"], 1)}


def _report(dom, chosen, bridged, hops, vm_ip, probe, inv) -> dict:
    first = next((h for h in hops if h.verdict == "broken"), None)
    risks = [h for h in hops if h.verdict == "risk"]
    verdict = "broken" if first else ("risk" if risks else "healthy")
    if first:
        headline = f"Most likely cause: hop {first.number} ({first.title}): {first.summary}"
    elif risks:
        headline = (f"No broken hop; at risk: hop {risks[0].number} ({risks[0].title}): {risks[0].summary}"
                    + "".join(f"; hop {h.number} ({h.title})" for h in risks[1:]))
    else:
        headline = "The path looks healthy: no broken hop."
    if bridged:
        nic = {"mac": chosen.mac, "tap": chosen.tap, "bridge": chosen.bridge, "network": chosen.network}
    else:
        nic = {"mac": chosen.mac, "tap": chosen.dev, "bridge": None, "network": chosen.network,
               "kind": chosen.type, "parent": chosen.parent, "mode": chosen.mode, "pci": chosen.pci}
    return {"schema_version": SCHEMA_VERSION, "domain": dom.name, "path": "bridge" if bridged else "direct",
            "nic": nic, "verdict": verdict, "headline": headline,
            "first_broken": None if first is None else {"number": first.number, "name": first.name,
                                                        "title": first.title, "summary": first.summary,
                                                        "fix": first.fix, "cause": first.cause},
            "vm_ip": vm_ip, "probe": probe,
            "hops": [h.as_dict() for h in hops], "errors": [str(e) for e in inv.errors]}


def exit_code(report: dict) -> int:
    return 1 if report["first_broken"] else 0


def main(args) -> int:
    """The CLI entry (netmedic.cli registers the subcommand)."""
    import json
    import sys

    from netmedic import settings
    from netmedic.errors import NetmedicError

    policy = settings.load_policy(args.policy, getattr(args, "mode", None))
    try:
        report = diagnose(args.domain, nic=args.nic, domain_dir=args.domain_xml_dir,
                          network_dir=args.network_xml_dir, policy=policy, leases_dir=args.leases_dir,
                          probe=args.probe, probe_seconds=args.probe_seconds,
                          dhcp_seconds=getattr(args, "dhcp_seconds", DHCP_SECONDS),
                          socket_path=getattr(args, "socket", None), state=_state(args))
    except (NetmedicError, PermissionError):
        raise  # the CLI's one-line error, exit 2
    except Exception as exc:  # noqa: BLE001 - a bug must not look like a broken hop (exit 1)
        print(f"netmedic: error: diagnose failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(render(report))
    return exit_code(report)

