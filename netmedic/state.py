"""netmedic's own memory, in one JSON file under the state directory (default /var/lib/netmedic):

- `records`: everything netmedic created on the host (fdb pins, quarantined ports, firewall rules), so
  that a VM stop removes exactly those and nothing else;
- `guard`: the bounds' counters (rate limits, backoff, circuit breaker), shared by the daemon, the
  libvirt hook and one-shot `netmedic heal` runs.

Writers hold an exclusive flock on `state.lock` for the whole read-modify-write, and replace the file
atomically, so a crash never leaves it half-written.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from typing import Optional

from netmedic.settings import DEFAULT_STATE_DIR


class State:
    def __init__(self, directory: str = DEFAULT_STATE_DIR):
        self.directory = directory
        self.path = os.path.join(directory, "state.json")
        self.records: dict = {}
        self.guard: dict = {}
        self._loaded: Optional[str] = None  # what _load() read, serialized as _save() would write it

    def _serialize(self) -> str:
        return json.dumps({"version": 1, "records": self.records, "guard": self.guard}, indent=1, sort_keys=True)

    def _load(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError):
            # A corrupt file must not stop healing: keep it aside for the admin and start afresh.
            with contextlib.suppress(OSError):
                os.replace(self.path, self.path + ".corrupt")
            data = {}
        self.records = data.get("records", {}) if isinstance(data, dict) else {}
        self.guard = data.get("guard", {}) if isinstance(data, dict) else {}
        self._loaded = self._serialize() if data else None

    def _save(self) -> None:
        text = self._serialize()
        if text == self._loaded:
            return  # nothing changed: no write, no fsync
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self._loaded = text

    def persist(self) -> None:
        """Write now (fsync'd), inside locked(): what netmedic is about to create is on disk before the
        host changes. A write that fails does not stop the caller (protection before bookkeeping)."""
        try:
            self._save()
        except OSError:
            pass  # the state stays in this process; the save at the end of the pass tries again

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
            self.records, self.guard = {}, {}
            return self
        with self.locked(write=False):
            pass
        return self
