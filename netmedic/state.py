"""netmedic's own memory, in one JSON file under the state directory (default /var/lib/netmedic):

- `records`: everything netmedic created on the host (fdb pins, quarantined ports, firewall rules), so
  that a VM stop removes exactly those and nothing else;
- `guard`: the bounds' counters (rate limits, backoff, circuit breaker), shared by the daemon, the
  libvirt hook and one-shot `netmedic heal` runs;
- `kernel`: what the kernel showed about itself (does it keep a pin's sticky flag?), with its release.

Writers hold an exclusive flock on `state.lock` for the whole read-modify-write, and replace the file
atomically, so a crash never leaves it half-written.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from typing import Optional

DEFAULT_STATE_DIR = "/var/lib/netmedic"


class State:
    def __init__(self, directory: str = DEFAULT_STATE_DIR):
        self.directory = directory
        self.path = os.path.join(directory, "state.json")
        self.records: dict = {}
        self.guard: dict = {}
        self.kernel: dict = {}
        # The file as last read or written by this object: its text, its data (a separate copy, to tell
        # whether anything changed), and its identity (inode, mtime, size): while the file is the one this
        # object last saw, a pass reuses what it holds instead of parsing it again (1,000 records: ~600 kB).
        self._text: Optional[str] = None
        self._pristine: Optional[dict] = None
        self._sig: Optional[tuple] = None

    def _data(self) -> dict:
        data = {"version": 1, "records": self.records, "guard": self.guard}
        if self.kernel:
            data["kernel"] = self.kernel
        return data

    def _serialize(self) -> str:
        return json.dumps(self._data(), sort_keys=True, separators=(",", ":"))

    def _signature(self) -> Optional[tuple]:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)

    def _set(self, data) -> None:
        data = data if isinstance(data, dict) else {}
        records, guard, kernel = data.get("records"), data.get("guard"), data.get("kernel")
        self.records = records if isinstance(records, dict) else {}
        self.guard = guard if isinstance(guard, dict) else {}
        self.kernel = kernel if isinstance(kernel, dict) else {}

    def _load(self) -> None:
        sig = self._signature()
        if sig is not None and sig == self._sig and self._pristine is not None:
            if self._data() != self._pristine:  # changed in memory and not saved (read-only use, an error)
                self._set(json.loads(self._text))
            return
        text = None
        try:
            with open(self.path, encoding="utf-8") as fh:
                text = fh.read()
            data = json.loads(text)
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError):
            # A corrupt file must not stop healing: keep it aside for the admin and start afresh.
            with contextlib.suppress(OSError):
                os.replace(self.path, self.path + ".corrupt")
            data, sig = {}, None
        self._set(data)
        good = bool(data) and isinstance(data, dict)
        self._text = text if good else None
        self._pristine = json.loads(text) if good else None
        self._sig = sig if good else None

    def _save(self) -> None:
        if self._pristine is not None and self._data() == self._pristine:
            return  # nothing changed: no write, no fsync
        text = self._serialize()
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self._text, self._pristine, self._sig = text, json.loads(text), self._signature()

    @contextlib.contextmanager
    def locked(self, write: bool = True):
        """Load under an exclusive lock; save on a clean exit when write is true."""
        os.makedirs(self.directory, mode=0o750, exist_ok=True)
        with open(os.path.join(self.directory, "state.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._load()
                yield self
                if write:
                    self._save()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self) -> State:
        """A consistent read without keeping the lock; creates nothing when there is no state yet."""
        if not os.path.exists(self.path):
            self._set({})
            return self
        with self.locked(write=False):
            pass
        return self
