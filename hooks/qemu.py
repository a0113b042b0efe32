"""The libvirt qemu hook's phases (docs/event-sources.md).

  prepare begin     each enabled invariant's admit() judges the new domain against every other running
                    domain (their status XML) and the host's interfaces (the duplicate-MAC check):
                    refuse the start only when the policy says so, else allow and audit.
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


def domain_from_request(event: dict, networks=None):
    """The inventory.Domain a hook sent the daemon: its domain XML as libvirt gave it ("xml", the entry
    script's fast path), or name, uuid and nics (netmedic.hooks.qemu's own requests); validated like
    any XML input."""
    from netmedic import inventory

    name = event.get("domain")
    if isinstance(event.get("xml"), str):
        if not isinstance(name, str) or not name:
            raise ValueError("a hook request needs a domain name")
        return inventory.parse_domain(f"<domain XML of hook {event.get('phase')} {name}>", networks,
                                      data=event["xml"].encode("utf-8"))
    nics = event.get("nics") or []
    if not isinstance(name, str) or not name or not isinstance(nics, list):
        raise ValueError("a hook request needs a domain name and a list of nics")
    out = []
    for nic in nics:
        if not isinstance(nic, dict):
            raise ValueError("each nic must be an object")
        for key in ("bridge", "tap"):
            if nic.get(key) is not None and not (isinstance(nic[key], str) and inventory.valid_ifname(nic[key])):
                raise ValueError(f"nic {key} {nic.get(key)!r} is not an interface name")
        out.append(inventory.VmNic(domain=name, uuid=str(event.get("uuid") or ""),
                                   mac=inventory.canonical_mac(str(nic.get("mac", ""))),
                                   type=str(nic.get("type") or "bridge"), bridge=nic.get("bridge"),
                                   tap=nic.get("tap"), network=nic.get("network"),
                                   source_file="<hook request>"))
    return inventory.Domain(name=name, uuid=str(event.get("uuid") or ""), nics=tuple(out),
                            source_file="<hook request>")


def decide_start(policy, dom, others: dict, host_macs: dict):
    """prepare begin's decision: (result 'allowed'|'refused', reason or None, clashes, audit fields).
    others: name -> Domain of every running domain; host_macs: ifname -> MAC. Each enabled invariant's
    admit() is asked; only an explicit policy decision (an Admission with refuse) refuses the start."""
    from netmedic.policies import INVARIANTS

    verdicts = []
    for name, inv in INVARIANTS.items():
        ipol = policy.invariants.get(name)
        if ipol is None or not ipol.enabled:
            continue
        verdict = inv.admit(dom, others, host_macs, ipol.options, policy.in_scope)
        if verdict is not None:
            verdicts.append(verdict)
    if not verdicts:
        return "allowed", None, [], {"nics": _nics(dom)}
    verdict = next((v for v in verdicts if v.refuse), verdicts[0])
    return ("refused" if verdict.refuse else "allowed"), verdict.reason, verdict.fields.get("clashes", []), \
        dict(verdict.fields)


def _request(hook: base.Hook, request: str, dom=None, **fields):
    """Hand the phase to the running daemon (it audits it); None when no daemon answered."""
    event = {"request": request, "domain": dom.name if dom is not None else hook.name, "phase": hook.phase,
             "hook": hook.kind, **fields}
    if dom is not None:
        event.update(uuid=dom.uuid, nics=_nics(dom))
    answer = hook.ask(**event)
    return answer if answer and answer.get("ok") else None


def prepare(hook: base.Hook) -> None:
    dom = _domain(hook)
    answer = _request(hook, "prepare", dom)
    if answer is not None:
        if answer.get("result") == "refused":
            raise base.Refuse(answer.get("reason") or "refused by netmedic's policy")
        return
    from netmedic import inventory

    policy = hook.policy()
    inv = inventory.load(hook.cfg["domain_dir"], hook.cfg["network_dir"])
    dom = _domain(hook, inv.networks)
    result, reason, _clashes, fields = decide_start(policy, dom, inv.domains, base.sys_macs())
    hook.done(result, **fields)
    if result == "refused":
        raise base.Refuse(reason)


def _reconcile(hook: base.Hook) -> None:
    dom = _domain(hook)
    bridges = sorted({n.bridge for n in dom.nics if n.bridge})
    if bridges and _request(hook, "reconcile", dom, bridges=bridges) is not None:
        return  # the daemon pinned (it audited the `hook` line)
    policy = hook.policy()
    dom = _domain(hook, hook.networks())
    bridges = sorted({n.bridge for n in dom.nics if n.bridge and policy.in_scope(n.bridge, dom.name)})
    if not bridges:
        hook.done("nothing to do", nics=_nics(dom))
        return
    report = hook.engine([dom] + hook.starting_domains(exclude=dom.name)).reconcile(
        trigger=hook.trigger, bridges=bridges)
    results: dict = {}
    for o in report.outcomes:
        results[o.result] = results.get(o.result, 0) + 1
    hook.done("reconciled", nics=_nics(dom), bridges=bridges, results=results, errors=report.errors or None)


def start(hook: base.Hook) -> None:
    _reconcile(hook)


def started(hook: base.Hook) -> None:
    _reconcile(hook)


def reconnect(hook: base.Hook) -> None:
    _reconcile(hook)


def stopped(hook: base.Hook) -> None:
    if _request(hook, "release") is not None:
        return
    released = hook.engine().release_domain(hook.name, trigger=hook.trigger)
    if released or hook.op == "stopped":
        hook.done("released", released=[{k: r.get(k) for k in ("kind", "mac", "port", "bridge", "result")}
                                        for r in released])


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
