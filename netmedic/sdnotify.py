"""systemd's service notifications for the daemon (Type=notify, WatchdogSec in netmedic.service)."""
from __future__ import annotations

import os
import socket
from typing import Optional


class SdNotify:
    """systemd's service notifications (READY=1, WATCHDOG=1, RELOADING=1, STOPPING=1, STATUS=...):
    python3-systemd's notify() where it is installed, else the plain datagram to $NOTIFY_SOCKET (a
    path, or an abstract socket written '@name'). Nothing at all when not run by systemd."""

    def __init__(self, environ=None):
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        self.watchdog: Optional[float] = None  # seconds between pings (half of WatchdogSec)
        usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if usec and (not pid or pid == str(os.getpid())):
            try:
                self.watchdog = max(0.05, int(usec) / 2e6)
            except ValueError:
                pass
        self._lib = None
        if self.address is not None:
            try:
                from systemd import daemon as sd_daemon  # python3-systemd

                self._lib = sd_daemon.notify
            except Exception:  # noqa: BLE001 - absent or broken: the plain datagram does the same
                self._lib = None
        self.error: Optional[str] = None

    def notify(self, text: str) -> bool:
        if self.address is None:
            return False
        try:
            if self._lib is not None:
                return bool(self._lib(text))
            addr = self.address
            if addr.startswith("@"):
                addr = "\0" + addr[1:]
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(text.encode("utf-8"), addr)
            return True
        except Exception as exc:  # noqa: BLE001 - a notification never stops the daemon
            self.error = str(exc)
            return False
