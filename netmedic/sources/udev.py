"""The udev RUN program's logic (netmedic/sources/scripts/netmedic-udev, run by netmedic/sources/scripts/90-netmedic.rules
for `net` add/remove). udev kills long RUN programs and gives them only ACTION, INTERFACE, IFINDEX,
DEVPATH, ... and no PATH: this posts one event to the daemon's socket and returns at once. It does
no work itself (udevd would kill it, and with systemd even a detached child): without a running
daemon the event is dropped, and the other sources (the libvirt hook, the dispatcher, the periodic
resync) cover it.
"""
from __future__ import annotations

import os


def event_for(environ):
    action = environ.get("ACTION", "")
    iface = environ.get("INTERFACE", "")
    if action not in ("add", "remove") or not iface:
        return None
    event = {"source": "udev", "event": action, "action": action, "interface": iface}
    if environ.get("IFINDEX", "").isdigit():
        event["ifindex"] = int(environ["IFINDEX"])
    if action == "add" and os.path.isdir(f"/sys/class/net/{iface}/bridge") and "/" not in iface:
        event["bridges"] = [iface]
    return event


def main(argv, environ=None) -> int:
    environ = os.environ if environ is None else environ
    try:
        event = event_for(environ)
        if event is not None:
            from netmedic.sources import client

            client.post(event, timeout=float(environ.get("NETMEDIC_NOTIFY_TIMEOUT") or 0.2))
    except Exception:
        pass
    return 0
