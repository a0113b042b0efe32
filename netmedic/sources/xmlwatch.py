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
_IN_Q_OVERFLOW = 0x4000
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
        self.paths: set = set()  # changed since take_changes() last ran
        self.complete = True  # False after an event-queue overflow or a directory re-watched
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

    def take_changes(self) -> Optional[set]:
        """The paths created, written, moved or deleted in the watched directories since the last call
        (reading what is pending first), or None when that cannot be vouched for: not every directory
        is watched, or the kernel's event queue overflowed. The engine re-reads only those files."""
        self._read()
        paths, complete = self.paths, self.complete
        self.paths, self.complete = set(), True
        if self.fd is None or len(self.watched) != len(self.dirs) or not complete:
            return None
        return paths

    def status(self) -> dict:
        return {"state": "watching" if self.watched else "off", "directories": sorted(self.watched.values()),
                "changes": self.changes, "error": self.error}

    def poll(self, daemon, now):
        """Retry directories that did not exist (libvirtd started after netmedic) every 2 s."""
        if self.fd is None or self._add_missing():
            return None
        return now + 2.0

    def _read(self) -> bool:
        """Read the pending events into self.paths; True when there were any."""
        if self.fd is None:
            return False
        got = False
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
            got = True
            off = 0
            while off + _HEADER <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, off)
                name = data[off + _HEADER:off + _HEADER + length].split(b"\0", 1)[0]
                if mask & _IN_Q_OVERFLOW:
                    self.complete = False
                if mask & _IN_IGNORED:  # the directory went away: poll() watches it again once it is back
                    self.watched.pop(wd, None)
                    self.complete = False
                elif wd in self.watched and name:
                    self.paths.add(os.path.join(self.watched[wd], os.fsdecode(name)))
                off += _HEADER + length
        if got:
            self.changes += 1
        return got

    def on_readable(self, daemon) -> None:
        if self._read():
            daemon.xml_changed()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
