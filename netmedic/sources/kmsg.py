"""The kernel log as the daemon's event source: follows /dev/kmsg from its end (records logged after
the daemon started) and turns each line netmedic knows (netmedic.kmsg.PATTERNS: a NIC hang or reset,
a transmit timeout, conntrack dropping packets, a bridge receiving its own address) into an audit event
`kernel_event` and a pass over the bridge the device belongs to (every bridge when it names none), so
the invariants that read the `kernel_events` fact judge it at once. It never acts on a line itself.

The seam for tests (and for replaying a saved log): `path`, or the environment variable NETMEDIC_KMSG,
naming a regular file of kmsg records; a file is polled twice a second for appended records instead of
being selected on.
"""
from __future__ import annotations

import os
import stat
from typing import Optional

from netmedic import kmsg


class KmsgSource:
    name = "kmsg"

    POLL = 0.5  # seconds between reads of a regular file

    def __init__(self, path: Optional[str] = None, from_start: bool = False):
        self.path = path or kmsg.default_path()
        self.is_file = False
        self.fd: Optional[int] = None
        self.error: Optional[str] = None
        self.seen = 0
        self.last: Optional[dict] = None
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            self.is_file = stat.S_ISREG(os.fstat(self.fd).st_mode)
            if not from_start:
                os.lseek(self.fd, 0, os.SEEK_END)  # /dev/kmsg: after the newest record
        except OSError as exc:
            self.error = f"{self.path}: {exc.strerror or exc}"
            self.close()

    def fileno(self):
        return None if self.is_file else self.fd

    def status(self) -> dict:
        return {"state": "following" if self.fd is not None else "off", "path": self.path,
                "events": self.seen, "last": self.last, "error": self.error}

    def poll(self, daemon, now):
        if not self.is_file or self.fd is None:
            return None
        self.on_readable(daemon)
        return now + self.POLL

    def on_readable(self, daemon) -> None:
        if self.fd is None:
            return
        for ev in kmsg.read_available(self.fd):
            self.seen += 1
            self.last = ev.as_dict()
            bridges = _bridges_of(daemon, ev.device)
            daemon._audit("kernel_event", kind=ev.kind, device=ev.device, message=ev.message, kernel_ts=ev.ts,
                          level="warning")
            label = f"kernel {ev.kind}" + (f" {ev.device}" if ev.device else "")
            daemon.note_event(self.name, f"{label}: {ev.message}")
            daemon.dispatcher.submit(bridges, label)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _bridges_of(daemon, device: Optional[str]):
    """The bridge a device is a port of (or the bridge itself), as the dispatcher knows it; None (every
    bridge) when unknown."""
    if not device:
        return None
    links = daemon.engine.last_links or {}
    link = links.get(device)
    if link is None:
        return None
    if link.kind == "bridge":
        return [device]
    for other in links.values():
        if other.index == link.master and other.kind == "bridge":
            return [other.name]
    return None
