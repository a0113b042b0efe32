"""netmedic's own memory, in one JSON file under the state directory (default /var/lib/netmedic):

- `records`: everything netmedic created on the host (fdb pins, quarantined ports, firewall rules), so
  that a VM stop removes exactly those and nothing else;
- `guard`: the bounds' counters (rate limits, backoff, circuit breaker), shared by the daemon, the
  libvirt hook and one-shot `netmedic heal` runs;
- `kernel`: what the kernel showed about itself (does it keep a pin's sticky flag?), with its release.

Writers hold an exclusive flock on `state.lock` for the whole read-modify-write, and replace the file
atomically, so a crash never leaves it half-written. While the file is the one this object last read or
wrote (same inode, mtime, size) and nothing changed in memory, a pass reuses what it holds instead of
parsing and serializing it again (1,000 records: ~600 kB, tens of ms each way).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from typing import Callable, Optional

from netmedic.settings import DEFAULT_STATE_DIR


def _valid_record(key, rec) -> bool:
    return isinstance(key, str) and isinstance(rec, dict) and isinstance(rec.get("kind"), str) and \
        all(isinstance(rec.get(f), (str, type(None))) for f in ("bridge", "port", "mac", "domain"))


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _valid_guard(key, entry) -> bool:
    return isinstance(key, str) and isinstance(entry, dict) and \
        all(isinstance(entry.get(f), list) and all(_num(t) for t in entry[f]) for f in ("actions", "fixes")) and \
        all(_num(entry.get(f)) for f in ("failures", "next_try", "open_until"))


class State:
    def __init__(self, directory: str = DEFAULT_STATE_DIR):
        self.directory = directory
        self.path = os.path.join(directory, "state.json")
        # Intents (what a heal is about to create) are appended here, fsync'd, before the host changes: a
        # few hundred bytes instead of the whole state; folded into state.json by the next save.
        self.journal = os.path.join(directory, "intents.jsonl")
        self._intents_upto = 0  # the newest intent (its sequence number) state.json accounts for
        self.records: dict = {}
        self.guard: dict = {}
        self.kernel: dict = {}
        self._sig: Optional[tuple] = None  # the file's identity when this object last read or wrote it ...
        self._pristine: Optional[dict] = None  # ... and its data then (a copy of its own)
        self._loaded: Optional[str] = None  # what _load() read, serialized as _save() would write it
        # Called with (event, **fields) for what the admin must hear of (a malformed file moved aside, the
        # state that cannot be written): the CLI and the daemon route it to the audit.
        self.report: Optional[Callable] = None
        self.save_error: Optional[str] = None  # the last save failed (full disk, read-only): why
        # What could not be written (a save failed): this process's changes to the records since the
        # last load (key -> record, None: removed) and its counters, laid over the file at each load
        # (another writer, a hook, may have saved meanwhile) until a save works.
        self._unsaved: Optional[dict] = None
        self._base: dict = {}  # the records as loaded (to tell this process's changes)

    def _say(self, event: str, **fields) -> None:
        try:
            if self.report is not None:
                self.report(event, **fields)
            else:  # no audit wired (a hook's own engine): at least on stderr (libvirtd's log)
                sys.stderr.write(json.dumps({"event": event, **fields}, default=str) + "\n")
        except Exception:  # noqa: BLE001 - bookkeeping never stops protection
            pass

    def _data(self) -> dict:
        data = {"version": 1, "records": self.records, "guard": self.guard}
        if self.kernel:
            data["kernel"] = self.kernel
        if self._intents_upto:
            data["intents_upto"] = self._intents_upto
        return data

    def _serialize(self) -> str:
        return json.dumps(self._data(), separators=(",", ":"))

    def _copy(self) -> dict:
        """A copy of _data() that later changes in memory do not reach: records are replaced, never changed
        in place (a copy of each is plenty); the bounds' entries have lists that grow in place."""
        data = {"version": 1, "records": {k: dict(r) for k, r in self.records.items()},
                "guard": {k: {f: list(v) if isinstance(v, list) else v for f, v in g.items()}
                          for k, g in self.guard.items()}}
        if self.kernel:
            data["kernel"] = json.loads(json.dumps(self.kernel))
        if self._intents_upto:
            data["intents_upto"] = self._intents_upto
        return data

    def _signature(self) -> Optional[tuple]:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)

    def _unchanged(self) -> bool:
        """Is what this object holds the file as it last read or wrote it (no other writer since, nothing
        changed in memory)?"""
        return self._unsaved is None and self._pristine is not None and self._data() == self._pristine

    def _move_aside(self, why: str) -> None:
        """A state file netmedic cannot use: keep it for the admin, audit it, start from what is valid."""
        aside = f"{self.path}.malformed-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            aside = f"(not moved: {exc.strerror or exc})"
        self._say("state_malformed", path=self.path, moved_to=aside, error=why, level="warning",
                  reason="kept aside for the admin; netmedic goes on with what was valid in it")

    def _load(self) -> None:
        sig = self._signature()
        if sig is not None and sig == self._sig and self._unchanged() and not os.path.exists(self.journal):
            self._base = dict(self.records)
            return
        self._sig = self._pristine = None
        text = None
        try:
            with open(self.path, encoding="utf-8") as fh:
                text = fh.read()
            data = json.loads(text)
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError, RecursionError) as exc:
            # A corrupt file must not stop healing: keep it aside for the admin and start afresh.
            self._move_aside(f"unreadable: {exc}")
            data = {}
        if not isinstance(data, dict):
            self._move_aside(f"not a JSON object but {type(data).__name__}")
            data = {}
        records, guard = data.get("records", {}), data.get("guard", {})
        bad = []
        if not isinstance(records, dict):
            bad.append(f"records is {type(records).__name__}, not an object")
            records = {}
        if not isinstance(guard, dict):
            bad.append(f"guard is {type(guard).__name__}, not an object")
            guard = {}
        wrong = [k for k, r in records.items() if not _valid_record(k, r)]
        wrong_guard = [k for k, g in guard.items() if not _valid_guard(k, g)]
        if wrong:
            bad.append(f"malformed records: {', '.join(map(str, wrong[:5]))}")
        if wrong_guard:
            bad.append(f"malformed guard entries: {', '.join(map(str, wrong_guard[:5]))}")
        self.records = {k: r for k, r in records.items() if k not in wrong}
        self.guard = {k: g for k, g in guard.items() if k not in wrong_guard}
        kernel = data.get("kernel")
        self.kernel = kernel if isinstance(kernel, dict) else {}
        upto = data.get("intents_upto", 0)
        self._intents_upto = upto if _num(upto) else 0
        if bad:
            self._move_aside("; ".join(bad))
            self._loaded = None  # write the valid part back
        elif data:
            self._loaded = self._serialize()
            self._sig, self._pristine = sig, self._copy()
        else:
            self._loaded = None
        if self._unsaved is not None:  # the last save failed: lay this process's changes over the file
            for key, rec in self._unsaved["records"].items():
                if rec is None:
                    self.records.pop(key, None)
                else:
                    self.records[key] = rec
            self.guard = self._unsaved["guard"]
            self._loaded = None
        self._base = dict(self.records)  # (records are replaced, never changed in place)
        self._read_journal()

    def _read_journal(self) -> None:
        """Intents a process wrote and never folded into state.json (it was killed, or could not save):
        their records come back pending, for the next pass to adopt or release (netmedic.engine)."""
        try:
            with open(self.journal, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except OSError:
            return
        for line in lines:
            try:
                entry = json.loads(line)
                seq, rec = entry["seq"], entry["record"]
            except (ValueError, TypeError, KeyError):
                continue  # a line cut short by the crash itself
            if not _num(seq) or seq <= self._intents_upto or not _valid_record(rec.get("key"), rec):
                continue
            if rec["key"] not in self.records:
                self.records[rec["key"]] = dict(rec, pending=True)
            self._intents_upto = max(self._intents_upto, seq)
            self._pristine = None  # to be folded into state.json by the next save

    def intend(self, records: list) -> None:
        """Append intents to the journal and fsync it, inside locked(), before the host changes. A write
        that fails does not stop the caller (protection before bookkeeping): it is reported once."""
        lines = []
        for rec in records:
            self._intents_upto = max(time.time_ns(), self._intents_upto + 1)
            lines.append(json.dumps({"seq": self._intents_upto, "record": rec}, separators=(",", ":")))
        try:
            fd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            try:
                os.write(fd, ("\n".join(lines) + "\n").encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            if self.save_error is None:
                self.save_error = f"{self.journal}: {exc.strerror or exc}"
                self._say("state_degraded", error=self.save_error, level="alert",
                          reason="intents kept in memory; the heal goes on")

    def _fold_journal(self) -> None:
        """state.json now accounts for every intent: the journal can go."""
        with contextlib.suppress(OSError):
            os.unlink(self.journal)

    def _save(self) -> None:
        if self._unchanged():
            return  # nothing changed: no write, no fsync (and no journal: intents change the data)
        text = self._serialize()
        if text == self._loaded:
            return
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            self._sig = self._pristine = None
            # Full disk, read-only file system: the change on the host is made and stays made; its
            # record stays in this process (written at the next save that works); no temp file left.
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            error = f"{self.path}: {exc.strerror or exc}"
            if self.save_error is None:
                self._say("state_degraded", error=error, level="alert",
                          reason="netmedic's records are kept in memory until the state can be written")
            changes = dict(self._unsaved["records"]) if self._unsaved else {}
            changes.update({k: r for k, r in self.records.items() if self._base.get(k) != r})
            changes.update({k: None for k in self._base if k not in self.records})
            self.save_error = error
            self._unsaved = {"records": json.loads(json.dumps(changes)), "guard": json.loads(json.dumps(self.guard))}
            return
        self._loaded = text
        self._sig, self._pristine = self._signature(), self._copy()
        self._fold_journal()
        if self.save_error is not None:
            self._say("state_recovered", was=self.save_error)
        self.save_error = self._unsaved = None
        self._base = dict(self.records)  # (records are replaced, never changed in place)

    @contextlib.contextmanager
    def locked(self, write: bool = True):
        """Load under an exclusive lock; save on a clean exit when write is true. A lock file that
        cannot be created (read-only file system) does not stop the pass: it runs unlocked."""
        lock = None
        try:
            os.makedirs(self.directory, mode=0o750, exist_ok=True)
            lock = open(os.path.join(self.directory, "state.lock"), "a")
        except OSError as exc:
            if self.save_error is None and write:
                self._say("state_degraded", error=f"{self.directory}: {exc.strerror or exc}", level="alert",
                          reason="running without the state lock; records kept in memory")
                self.save_error = f"{self.directory}: {exc.strerror or exc}"
        try:
            if lock is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._load()
                yield self
                if write:
                    self._save()
            finally:
                if lock is not None:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        finally:
            if lock is not None:
                lock.close()

    def read(self) -> State:
        """A consistent read without keeping the lock; creates nothing when there is no state yet."""
        if not os.path.exists(self.path) and not os.path.exists(self.journal) and self._unsaved is None:
            self.records, self.guard, self.kernel = {}, {}, {}
            return self
        with self.locked(write=False):
            pass
        return self
