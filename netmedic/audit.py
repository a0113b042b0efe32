"""The audit trail: one JSON object per line, through structlog, appended to the audit log
(default /var/log/netmedic/audit.jsonl). docs/audit.md documents every field.

Each line has: ts (UTC, ISO 8601), event, host, pid, correlation_id (one per reconcile pass or hook
run), trigger, and, as they apply, invariant, kind, healer, subject, evidence, action, steps, before,
after, result, reason, duration_ms, mode.
"""
from __future__ import annotations

import os
import socket
import sys
import uuid

import structlog

from netmedic.settings import DEFAULT_AUDIT_LOG


class _LineWriter:
    """structlog's logger: each rendered event becomes one write() of one line (O_APPEND), so lines
    from the daemon, the hook and the CLI never interleave."""

    def __init__(self, path: str):
        self.path = path
        self.fd = None
        if path != "-":
            os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o750, exist_ok=True)
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def msg(self, message: str) -> None:
        data = (message + "\n").encode("utf-8")
        if self.fd is None:
            sys.stdout.write(data.decode())
            sys.stdout.flush()
        else:
            os.write(self.fd, data)

    info = warning = error = critical = debug = msg

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _shape(_logger, _name, event_dict):
    """ts and event first, then the rest; fields that are None are left out."""
    head = {"ts": event_dict.pop("ts", None), "event": event_dict.pop("event", None)}
    head.update((k, v) for k, v in event_dict.items() if v is not None)
    return head


class Audit:
    def __init__(self, path: str = DEFAULT_AUDIT_LOG, trigger: str = "manual", **context):
        self.writer = _LineWriter(path)
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

    def close(self) -> None:
        self.writer.close()
