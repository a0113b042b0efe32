"""The libvirt qemu hook's phases (docs/event-sources.md).

  prepare begin     duplicate-MAC check of the new domain against every other running domain (their
                    status XML) and the host's interfaces: refuse the start when the policy says
                    unique_mac.on_start: refuse-start, else allow and audit.
  start begin       the taps exist and are enslaved, the guest has not run: reconcile the domain's
                    bridges with the domain from stdin, so its MACs are pinned static sticky before
                    the guest sends a frame; record its interfaces (audit).
  started begin     verify again (the daemon does it when it runs; else the hook does).
  reconnect begin   libvirtd restarted: re-verify and re-pin this running domain.
  stopped end,      remove exactly the pins (and quarantines) netmedic made for this domain.
  release end
  migrate, restore  filters (the entry script copies stdin to stdout before importing anything).

Never calls the libvirt API (libvirtd waits for the hook: a documented deadlock).
"""
from __future__ import annotations

import sys

from netmedic.hooks import base


def _domain(hook: base.Hook, networks=None):
    from netmedic import inventory

    return inventory.parse_domain(f"<stdin of {hook.trigger} {hook.name}>", networks, data=hook.data)


def _nics(dom) -> list:
    return [{"mac": n.mac, "bridge": n.bridge, "tap": n.tap, "type": n.type,
             **({"network": n.network} if n.network else {})} for n in dom.nics]


def prepare(hook: base.Hook) -> None:
    from netmedic import inventory

    policy = hook.policy()
    ipol = policy.invariants["unique_mac"]
    if not ipol.enabled:
        return
    inv = inventory.load(hook.cfg["domain_dir"], hook.cfg["network_dir"])
    dom = _domain(hook, inv.networks)
    mine = [n for n in dom.nics if policy.in_scope(n.bridge, dom.name)]
    if not mine:
        return
    used: dict = {}  # mac -> [description of the other user]
    for other in inv.domains.values():
        if other.name == dom.name:
            continue
        for n in other.nics:
            used.setdefault(n.mac, []).append(f"VM {other.name}" + (f" ({n.tap} on {n.bridge})" if n.tap
                                                                     else f" (on {n.bridge})"))
    own_taps = {n.tap for n in dom.nics if n.tap}
    for ifname, mac in sorted(base.sys_macs().items()):
        if ifname not in own_taps:
            used.setdefault(mac, []).append(f"host interface {ifname}")
    seen: dict = {}
    clashes = []
    for n in mine:
        users = list(used.get(n.mac, []))
        if n.mac in seen:
            users.append(f"another NIC of VM {dom.name}")
        seen[n.mac] = True
        if users:
            clashes.append({"mac": n.mac, "bridge": n.bridge, "used_by": users})
    if not clashes:
        hook.done("allowed", nics=_nics(dom))
        return
    decision = ipol.options.get("on_start", "allow")
    first = clashes[0]
    reason = (f"VM {dom.name}: MAC {first['mac']} is already used by {', '.join(first['used_by'])}"
              + (f" (and {len(clashes) - 1} more duplicate MAC(s))" if len(clashes) > 1 else ""))
    if decision == "refuse-start":
        hook.done("refused", reason=reason, clashes=clashes, invariant="unique_mac",
                  policy="unique_mac.on_start=refuse-start", level="alert")
        raise base.Refuse(f"refusing to start {reason} (policy unique_mac.on_start: refuse-start)")
    hook.done("allowed", reason=reason, clashes=clashes, invariant="unique_mac",
              policy="unique_mac.on_start=allow", level="warning")


def _reconcile(hook: base.Hook, verify_only_if_no_daemon: bool = False) -> None:
    policy = hook.policy()
    networks = hook.networks()
    dom = _domain(hook, networks)
    bridges = sorted({n.bridge for n in dom.nics if n.bridge and policy.in_scope(n.bridge, dom.name)})
    if not bridges:
        hook.done("nothing to do", nics=_nics(dom))
        return
    posted = hook.post(domain=dom.name, bridges=bridges)
    if verify_only_if_no_daemon and posted:
        hook.done("handed to the daemon", nics=_nics(dom), bridges=bridges)
        return
    report = hook.engine([dom]).reconcile(trigger=hook.trigger, bridges=bridges)
    results: dict = {}
    for o in report.outcomes:
        results[o.result] = results.get(o.result, 0) + 1
    hook.done("reconciled", nics=_nics(dom), bridges=bridges, results=results,
              errors=report.errors or None, daemon_notified=posted)


def start(hook: base.Hook) -> None:
    _reconcile(hook)


def started(hook: base.Hook) -> None:
    _reconcile(hook, verify_only_if_no_daemon=True)


def reconnect(hook: base.Hook) -> None:
    _reconcile(hook)


def stopped(hook: base.Hook) -> None:
    posted = hook.post(domain=hook.name)
    released = hook.engine().release_domain(hook.name, trigger=hook.trigger)
    if released or hook.op == "stopped":
        hook.done("released", released=[{k: r.get(k) for k in ("kind", "mac", "port", "bridge", "result")}
                                        for r in released], daemon_notified=posted)


PHASES = {
    ("prepare", "begin"): prepare,
    ("start", "begin"): start,
    ("started", "begin"): started,
    ("reconnect", "begin"): reconnect,
    ("stopped", "end"): stopped,
    ("release", "end"): stopped,
}


def main(argv=None, stdin=None, environ=None) -> int:
    argv = sys.argv if argv is None else argv
    if len(argv) > 2 and argv[2] in ("migrate", "restore"):  # filters: echo the XML unchanged
        out = sys.stdout.buffer
        out.write((stdin or sys.stdin.buffer).read())
        out.flush()
        return 0
    return base.run("qemu", argv, PHASES, stdin=stdin, environ=environ)
