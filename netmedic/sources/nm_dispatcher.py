"""The NetworkManager dispatcher script's logic (netmedic/sources/scripts/netmedic, installed as
/usr/lib/NetworkManager/dispatcher.d/90-netmedic).

nm-dispatcher runs it as `90-netmedic IFACE ACTION` with NM_DISPATCHER_ACTION, DEVICE_IFACE,
CONNECTION_ID, ... and NO PATH in the environment, one script at a time: a slow script delays every
later dispatcher event. So this does no work for actions that do not concern bridges, never runs a
command, and never waits on the daemon for more than a fraction of a second:

  * up / down / pre-down / device-add of a bridge or of a bridge port, and connectivity-change: post
    one event to the daemon's socket (netmedic.sources.client), which turns it into a reconcile of that
    bridge (a re-activated bridge has lost the VM taps NetworkManager does not manage);
  * when no daemon takes the event, on `up`/`device-add` (and connectivity-change): run that scoped
    reconcile here (netmedic.client.fallback_heal, bounded by NETMEDIC_DISPATCHER_TIMEOUT, default
    5 s), so that the fix never depends on the daemon. `down`/`pre-down` only notify: the bridge is
    going away, there is nothing to re-attach to yet.

It always exits 0: a netmedic problem must never look like a NetworkManager failure.
"""
from __future__ import annotations

import os

ACTIONS = ("up", "down", "pre-down", "device-add", "connectivity-change")
HEAL_ACTIONS = ("up", "device-add", "connectivity-change")
SYS_NET = "/sys/class/net"


def bridges_of(iface: str, sys_net: str = SYS_NET) -> list:
    """[iface] for a bridge, [its bridge] for a bridge port, [] otherwise (or when it is gone)."""
    if not iface or "/" in iface or iface in (".", ".."):
        return []
    if os.path.isdir(os.path.join(sys_net, iface, "bridge")):
        return [iface]
    master = os.path.join(sys_net, iface, "brport", "bridge")
    if not os.path.exists(master):
        master = os.path.join(sys_net, iface, "master")
    try:
        target = os.readlink(master)
    except OSError:
        return []
    name = os.path.basename(target)
    return [name] if os.path.isdir(os.path.join(sys_net, name, "bridge")) else []


def event_for(argv, environ, sys_net: str = SYS_NET):
    """The event to post for this invocation, or None when it does not concern netmedic."""
    action = environ.get("NM_DISPATCHER_ACTION") or (argv[2] if len(argv) > 2 else "")
    iface = (argv[1] if len(argv) > 1 else "") or environ.get("DEVICE_IFACE", "")
    if iface == "none":  # nm-dispatcher passes "none" when there is no interface
        iface = ""
    if action not in ACTIONS:
        return None
    event = {"source": "nm-dispatcher", "event": action, "action": action}
    if action == "connectivity-change":
        return event  # no interface: everything
    bridges = bridges_of(iface, sys_net)
    if not bridges:
        if action not in ("down", "pre-down") or not iface:
            return None  # neither a bridge nor a port of one: not netmedic's business
        # A bridge that is already gone: the daemon knows whether it was a VM bridge.
    event["interface"] = iface
    if bridges:
        event["bridges"] = bridges
    if environ.get("CONNECTION_ID"):
        event["connection"] = environ["CONNECTION_ID"]
    return event


def main(argv, environ=None) -> int:
    environ = os.environ if environ is None else environ
    try:
        event = event_for(argv, environ)
        if event is None:
            return 0
        from netmedic.sources import client

        if client.post(event, timeout=float(environ.get("NETMEDIC_NOTIFY_TIMEOUT") or 0.2)):
            return 0
        if event["action"] not in HEAL_ACTIONS:
            return 0
        trigger = f"nm-dispatcher {event['action']} {event.get('interface', '')}".strip()
        client.fallback_heal(event.get("bridges"), trigger, environ,
                             timeout=float(environ.get("NETMEDIC_DISPATCHER_TIMEOUT") or 5))
    except Exception:
        pass
    return 0
