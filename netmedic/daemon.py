"""`netmedic daemon`: reacts to netlink link and fdb events within milliseconds, coalesces bursts
through the dispatcher, resyncs fully every `resync_interval` seconds, recovers from netlink overflow
(ENOBUFS) with a new socket and a full resync, reloads the policy on SIGHUP or when the file changes
(keeping the last good one when the new one is broken), and stops cleanly on SIGTERM.
"""
from __future__ import annotations

import os
import select
import signal
import time
from typing import Optional

from netmedic import nl
from netmedic.dispatcher import Dispatcher
from netmedic.errors import NetmedicError
from netmedic.policies import config

MAX_EVENTS_PER_TURN = 5000  # read at most this many before giving the reconcile its turn


class Daemon:
    def __init__(self, engine, policy_path: Optional[str] = None, mode: Optional[str] = None,
                 resync: Optional[float] = None, listener_factory=nl.Listener):
        self.engine = engine
        self.policy_path = policy_path
        self.mode = mode
        self.resync_override = resync
        self.listener_factory = listener_factory
        self.dispatcher = Dispatcher()
        self.stopping = False
        self.retry_at: Optional[float] = None  # monotonic time of the next backoff retry
        self.reload_requested = False
        self._policy_mtime = self._mtime()
        self._inventory_sig = None
        self.engine.seen = set()  # audit only what is new from one pass to the next

    @property
    def resync_interval(self) -> float:
        return self.resync_override or self.engine.policy.resync_interval

    def _mtime(self):
        path = self.policy_path or (config.DEFAULT_POLICY_PATH if os.path.exists(config.DEFAULT_POLICY_PATH)
                                    else None)
        try:
            return os.stat(path).st_mtime_ns if path else None
        except OSError:
            return None

    def _audit(self, event, **fields):
        self.engine._audit(event, **fields)

    def _reload_policy(self) -> None:
        try:
            policy = config.load(self.policy_path).with_mode(self.mode)
        except NetmedicError as exc:
            self._audit("policy_rejected", error=str(exc), reason="keeping the last good policy", level="alert")
            return
        self.engine.policy = policy
        self._audit("policy_loaded", source=policy.source)
        self.dispatcher.submit(None, "policy reloaded")

    def _inventory_changed(self) -> bool:
        sig = []
        for d in (self.engine.domain_dir, self.engine.network_dir):
            try:
                st = os.stat(d)
                sig.append((st.st_mtime_ns, st.st_ino))
            except (OSError, TypeError):
                sig.append(None)
        if sig != self._inventory_sig:
            self._inventory_sig = sig
            return True
        return False

    def reconcile(self, bridges, trigger: str) -> None:
        try:
            report = self.engine.reconcile(trigger=trigger, bridges=bridges)
        except NetmedicError as exc:
            self._audit("error", error=f"reconcile failed: {exc}")
        else:
            if report.retry_at is not None:  # a failed fix backs off: come back when it may retry
                at = time.monotonic() + max(0.0, report.retry_at - self.engine.clock())
                self.retry_at = at if self.retry_at is None else min(self.retry_at, at)
        inv = self.engine.inventory
        if inv is not None:
            self.dispatcher.set_inventory(inv.nics)
        try:
            self.dispatcher.set_links({link.name: link for link in self.engine.ops.nl.links()})
        except NetmedicError:
            pass

    def _on_signal(self, signum, _frame):
        if signum == signal.SIGHUP:
            self.reload_requested = True
        else:
            self.stopping = True

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        listener = self.listener_factory()
        self._audit("daemon_started", resync_interval=self.resync_interval, dry_run=self.engine.dry_run)
        self._inventory_changed()
        self.reconcile(None, "startup")
        next_resync = time.monotonic() + self.resync_interval
        next_poll = time.monotonic() + 1.0
        try:
            while not self.stopping:
                now = time.monotonic()
                wait = min(next_resync, next_poll, self.retry_at or next_poll) - now
                pending = self.dispatcher.wait_time()
                if pending is not None:
                    wait = min(wait, pending)
                try:
                    readable, _, _ = select.select([listener], [], [], max(0.0, wait))
                except InterruptedError:
                    readable = []
                if readable:
                    self._drain(listener)
                if self.reload_requested:
                    self.reload_requested = False
                    self._reload_policy()
                now = time.monotonic()
                if now >= next_poll:  # cheap polls: policy file and the run-state XML directories
                    next_poll = now + 1.0
                    mtime = self._mtime()
                    if mtime != self._policy_mtime:
                        self._policy_mtime = mtime
                        self._reload_policy()
                    if self._inventory_changed():
                        self.dispatcher.submit(None, "domain/network XML changed")
                if self.retry_at is not None and now >= self.retry_at:
                    self.retry_at = None
                    self.dispatcher.submit(None, "retry after backoff")
                if now >= next_resync:
                    self.dispatcher.take()
                    self.reconcile(None, "resync")
                    next_resync = time.monotonic() + self.resync_interval
                elif self.dispatcher.due():
                    bridges, reasons = self.dispatcher.take()
                    self.reconcile(bridges, "event: " + "; ".join(reasons[:3]))
        finally:
            listener.close()
            self.engine.ops.close()
            self._audit("daemon_stopped")
        return 0

    def _drain(self, listener) -> None:
        count = 0
        while count < MAX_EVENTS_PER_TURN:
            try:
                events = listener.read()
            except nl.Overflow:
                self._audit("netlink_overflow", reason="events were lost: full resync", level="warning")
                self.dispatcher.submit(None, "netlink overflow")
                return
            except BlockingIOError:
                return
            if not events:
                return
            for ev in events:
                self.dispatcher.netlink(ev)
            count += len(events)
            r, _, _ = select.select([listener], [], [], 0)
            if not r:
                return
