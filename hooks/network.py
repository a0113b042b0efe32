"""The libvirt network hook's phases (docs/event-sources.md), for VM interfaces of type='network'.

  port-created begin   a VM interface got a port on the network's bridge: tell the daemon, and
                       reconcile that bridge (the qemu hook's `start` pins the MAC once the tap exists).
  port-deleted begin   the port is gone (VM stopped, or the NIC was hot-unplugged): remove exactly
                       netmedic's records for that VM's MAC.
  started begin        a network came up: tell the daemon / reconcile its bridge.

Always exits 0. stdin: `<hookData><network>..</network><networkport>..</networkport></hookData>`.
"""
from __future__ import annotations

import sys

from netmedic.hooks import base


def _port(hook: base.Hook) -> dict:
    from netmedic import inventory

    root = inventory._parse_xml(f"<stdin of {hook.trigger} {hook.name}>", hook.data)
    out = {"network": hook.name, "bridge": None, "owner": None, "mac": None}
    net = root.find("network") if root.tag != "network" else root
    if net is not None and net.find("bridge") is not None:
        out["bridge"] = net.find("bridge").get("name")
    port = root.find("networkport")
    if port is not None:
        out["owner"] = (port.findtext("owner/name") or "").strip() or None
        mac = port.find("mac")
        if mac is not None and mac.get("address"):
            out["mac"] = inventory.canonical_mac(mac.get("address"))
        plug = port.find("plug")
        if plug is not None and plug.get("bridge"):
            out["bridge"] = plug.get("bridge")
    if out["bridge"] is not None and not inventory.valid_ifname(out["bridge"]):
        raise ValueError(f"not a valid interface name: {out['bridge']!r}")
    return out


def port_created(hook: base.Hook) -> None:
    port = _port(hook)
    if not port["bridge"]:
        hook.done("nothing to do", port=port)
        return
    posted = hook.post(bridges=[port["bridge"]], domain=port["owner"])
    if posted:
        hook.done("handed to the daemon", port=port)
        return
    report = hook.engine(hook.starting_domains()).reconcile(trigger=hook.trigger, bridges=[port["bridge"]])
    hook.done("reconciled", port=port, results={o.result: 1 for o in report.outcomes} or None)


def port_deleted(hook: base.Hook) -> None:
    port = _port(hook)
    posted = hook.post(bridges=[port["bridge"]] if port["bridge"] else [], domain=port["owner"])
    released = []
    if port["owner"] and port["mac"]:
        released = hook.engine().release_domain(port["owner"], trigger=hook.trigger, mac=port["mac"])
    hook.done("released", port=port, daemon_notified=posted,
              released=[{k: r.get(k) for k in ("kind", "mac", "port", "bridge", "result")} for r in released])


def network_started(hook: base.Hook) -> None:
    port = _port(hook)
    if port["bridge"] and not hook.post(bridges=[port["bridge"]]):
        hook.engine(hook.starting_domains()).reconcile(trigger=hook.trigger, bridges=[port["bridge"]])
    hook.done("reconciled", bridge=port["bridge"])


PHASES = {
    ("port-created", "begin"): port_created,
    ("port-deleted", "begin"): port_deleted,
    ("started", "begin"): network_started,
}


def main(argv=None, stdin=None, environ=None) -> int:
    argv = sys.argv if argv is None else argv
    return base.run("network", argv, PHASES, stdin=stdin, environ=environ)
