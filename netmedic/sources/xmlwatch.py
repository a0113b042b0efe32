"""The daemon's watch on libvirt's run-state XML directories (inotify, through libc with ctypes: the
standard library has no binding). libvirt writes a domain's status XML when it starts, changes and
stops it; the watch tells the daemon at once, which then reconciles the VMs whose NICs changed. The
daemon's 1 s poll of the directories' mtime stays as the fallback (no inotify, a directory that does
not exist yet: it is watched once it appears)."""
from __future__ import annotations

import ctypes
import errno
import os
import struct
from typing import Optional

_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
# IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
_MASK = 0x8 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800
_IN_IGNORED = 0x8000
_EVENT = struct.Struct("=iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
_HEADER = _EVENT.size


class XmlWatch:
    name = "xmlwatch"

    def __init__(self, directories):
        self.dirs = [d for d in dict.fromkeys(directories) if d]
        self.fd: Optional[int] = None
        self.watched: dict = {}  # wd -> directory
        self.error: Optional[str] = None
        self.changes = 0
        try:
            self._libc = ctypes.CDLL(None, use_errno=True)
            fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            self.fd = fd
        except (OSError, AttributeError) as exc:
            self.error = f"inotify unavailable ({exc}): polling the directories every second"
        self._add_missing()

    def _add_missing(self) -> bool:
        """Watch the directories not watched yet; True when all are."""
        if self.fd is None:
            return False
        have = set(self.watched.values())
        for d in self.dirs:
            if d in have or not os.path.isdir(d):
                continue
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(d), _MASK)
            if wd >= 0:
                self.watched[wd] = d
        return len(self.watched) == len(self.dirs)

    def fileno(self):
        return self.fd

    def generation(self):
        """A token that stays the same while no run-state XML changed (nothing happened in the watched
        directories since the last read), None when that cannot be vouched for: not every directory is
        watched, or changes are waiting to be read. The engine reuses its inventory while it holds."""
        import select

        if self.fd is None or len(self.watched) != len(self.dirs):
            return None
        if select.select([self.fd], [], [], 0)[0]:
            return None
        return self.changes

    def status(self) -> dict:
        return {"state": "watching" if self.watched else "off", "directories": sorted(self.watched.values()),
                "changes": self.changes, "error": self.error}

    def poll(self, daemon, now):
        """Retry directories that did not exist (libvirtd started after netmedic) every 2 s."""
        if self.fd is None or self._add_missing():
            return None
        return now + 2.0

    def on_readable(self, daemon) -> None:
        changed = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                break
            if not data:
                break
            changed = True
            off = 0
            while off + _HEADER <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, off)
                if mask & _IN_IGNORED:  # the directory went away: poll() watches it again once it is back
                    self.watched.pop(wd, None)
                off += _HEADER + length
        if changed:
            self.changes += 1
            daemon.xml_changed()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
