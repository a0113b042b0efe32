"""The audit trail: one JSON object per line, through structlog, appended to the audit log
(default /var/log/netmedic/audit.jsonl). docs/audit.md documents every field.

Each line has: ts (UTC, ISO 8601), event, host, pid, correlation_id (one per reconcile pass or hook
run), trigger, and, as they apply, invariant, kind, healer, subject, evidence, action, steps, before,
after, result, reason, duration_ms, mode.
"""
from __future__ import annotations

import collections
import errno
import json
import os
import socket
import sys
import time
import uuid
from typing import Optional

import structlog

from netmedic.settings import DEFAULT_AUDIT_LOG

BACKLOG_MAX = 10000  # lines kept in memory while the audit log cannot be written
RETRY_INTERVAL = 5.0  # seconds between attempts to write the backlog


class _LineWriter:
    """structlog's logger: each rendered event becomes one write() of one line (O_APPEND), so lines
    from the daemon, the hook and the CLI never interleave.

    Writing the audit log never stops a heal: when the log cannot be opened or written (full disk,
    read-only file system, permissions) each line goes to stderr (the journal under systemd) and into
    a bounded backlog, with one `audit_degraded` event; once the log takes writes again the backlog is
    written first, then an `audit_recovered` event with how many lines were caught up (and lost)."""

    def __init__(self, path: str):
        self.path = path
        self.fd = None
        self.error: Optional[str] = None  # why the log cannot be written now (None: it can)
        self.backlog: collections.deque = collections.deque(maxlen=BACKLOG_MAX)
        self.lost = 0
        self._retry_at = 0.0
        self.context: dict = {}
        if path != "-":
            self._open()
            if self.fd is None:
                self._degrade(self.error)

    def _open(self) -> bool:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), mode=0o750, exist_ok=True)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            return True
        except OSError as exc:
            self.error = f"{self.path}: {exc.strerror or exc}"
            return False

    def _write(self, data: bytes) -> None:
        """One line, whole; raises OSError when it cannot be written."""
        n = os.write(self.fd, data)
        if n != len(data):  # a short write (the disk filled up mid-line): end the torn line
            try:
                os.write(self.fd, b"\n")
            except OSError:
                pass
            raise OSError(errno.ENOSPC, "short write")

    def _side_line(self, event: str, **fields) -> str:
        rec = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z", "event": event,
               **self.context, "path": self.path, **fields}
        return json.dumps(rec, default=str)

    def _stderr(self, line: str) -> None:
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    def _degrade(self, error: str) -> None:
        self.error = error
        self._retry_at = time.monotonic() + RETRY_INTERVAL
        line = self._side_line("audit_degraded", error=error, level="alert",
                               reason="the audit log cannot be written: lines go to stderr (the journal) "
                                      "and are written to the log when it takes writes again")
        self._stderr(line)
        self._keep(line)

    def _keep(self, line: str) -> None:
        if len(self.backlog) == self.backlog.maxlen:
            self.lost += 1
        self.backlog.append(line)

    def _catch_up(self) -> bool:
        """Write the backlog; True when the log is healthy again."""
        if self.fd is None and not self._open():
            return False
        caught = 0
        try:
            while self.backlog:
                self._write((self.backlog[0] + "\n").encode("utf-8"))
                self.backlog.popleft()
                caught += 1
            self._write((self._side_line("audit_recovered", caught_up=caught + 1, lost=self.lost,
                                         was=self.error) + "\n").encode("utf-8"))
        except OSError as exc:
            self.error = f"{self.path}: {exc.strerror or exc}"
            return False
        self.error, self.lost = None, 0
        return True

    def msg(self, message: str) -> None:
        data = (message + "\n").encode("utf-8")
        if self.path == "-":
            try:
                sys.stdout.write(data.decode())
                sys.stdout.flush()
            except (OSError, ValueError):
                pass
            return
        if self.error is not None:
            now = time.monotonic()
            if now < self._retry_at or not self._catch_up():
                if now >= self._retry_at:
                    self._retry_at = now + RETRY_INTERVAL
                self._stderr(message)
                self._keep(message)
                return
        try:
            self._write(data)
        except OSError as exc:
            self._degrade(f"{self.path}: {exc.strerror or exc}")
            self._stderr(message)
            self._keep(message)

    info = warning = error = critical = debug = msg

    def flush(self) -> None:
        """Try the backlog now (the daemon calls it from its loop, so it catches up with no new event)."""
        if self.error is not None and time.monotonic() >= self._retry_at:
            if not self._catch_up():
                self._retry_at = time.monotonic() + RETRY_INTERVAL

    def close(self) -> None:
        if self.error is not None:
            self._retry_at = 0.0
            self.flush()
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


def _shape(_logger, _name, event_dict):
    """ts and event first, then the rest; fields that are None are left out."""
    head = {"ts": event_dict.pop("ts", None), "event": event_dict.pop("event", None)}
    head.update((k, v) for k, v in event_dict.items() if v is not None)
    return head


class Audit:
    def __init__(self, path: str = DEFAULT_AUDIT_LOG, trigger: str = "manual", **context):
        self.writer = _LineWriter(path)
        self.writer.context = {"host": socket.gethostname(), "pid": os.getpid()}
        self.path = path
        self.correlation_id = None
        self.log = structlog.wrap_logger(
            self.writer,
            processors=[
                structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
                _shape,
                structlog.processors.JSONRenderer(sort_keys=False, default=str),
            ],
        ).bind(host=socket.gethostname(), pid=os.getpid(), trigger=trigger, **context)

    def new_correlation(self, trigger: str = None) -> str:
        cid = self.correlation_id = uuid.uuid4().hex[:16]
        binds = {"correlation_id": cid}
        if trigger:
            binds["trigger"] = trigger
        self.log = self.log.bind(**binds)
        return cid

    def event(self, event: str, **fields) -> None:
        self.log.info(event, **fields)

    @property
    def degraded(self) -> Optional[str]:
        """Why the audit log cannot be written now (lines go to stderr and a backlog), or None."""
        return self.writer.error

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
