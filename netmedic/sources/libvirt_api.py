"""The daemon's libvirt event source (optional: needs libvirt-python).

Lifecycle events (a domain started, resumed, stopped, crashed) and DEVICE_ADDED / DEVICE_REMOVED (a
hot-plugged NIC fires no qemu hook) become dispatcher.submit(bridges of that domain). The domain's
live XML (fetched here, in the daemon, never in a hook) is handed to the engine as an extra domain, so
a hot-plugged NIC is pinned even before libvirt rewrites its status file.

When libvirtd is absent or restarts, the source says so (status, audit), the daemon goes on with the
run-state XML directories, and the source reconnects with backoff (0.5 s doubling to 30 s); on every
(re)connection it reads all running domains and asks for a full reconcile.

libvirt's default event loop runs in a thread of its own; its callbacks only queue the event and wake
the daemon's select() through a pipe. Everything else runs in the daemon's main thread.
"""
from __future__ import annotations

import collections
import os
import threading
import time
from typing import Optional

BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0
_loop_lock = threading.Lock()
_loop_started = False

# virDomainEventType
STARTED, SUSPENDED, RESUMED, STOPPED, SHUTDOWN, CRASHED = 2, 3, 4, 5, 6, 8
LIFECYCLE_NAMES = {0: "defined", 1: "undefined", 2: "started", 3: "suspended", 4: "resumed", 5: "stopped",
                   6: "shutdown", 7: "pmsuspended", 8: "crashed"}


def available() -> Optional[str]:
    """None when libvirt-python can be imported, else why not."""
    try:
        import libvirt  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None


def _start_event_loop(libvirt) -> None:
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def loop():
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except Exception:  # noqa: BLE001 - keep the loop alive
                    time.sleep(0.1)

        threading.Thread(target=loop, name="libvirt-events", daemon=True).start()
        _loop_started = True


class LibvirtSource:
    name = "libvirt"

    def __init__(self, uri: str = "qemu:///system", clock=time.monotonic):
        self.uri = uri
        self.clock = clock
        self.conn = None
        self.state = "disconnected"
        self.error: Optional[str] = None
        self.since = time.time()
        self.next_try = 0.0
        self.backoff = BACKOFF_MIN
        self.events = 0
        self.connects = 0
        self.live: dict = {}  # domain name -> inventory.Domain from the live XML
        self._queue: collections.deque = collections.deque()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._callbacks: list = []
        why = available()
        if why is not None:
            self.state, self.error = "unavailable", f"libvirt-python: {why}"
            self.libvirt = None
        else:
            import libvirt

            self.libvirt = libvirt
            _start_event_loop(libvirt)
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # no stderr noise on reconnects

    # --- the daemon's source interface ---------------------------------------------------------
    def fileno(self) -> int:
        return self._rfd

    def status(self) -> dict:
        return {"state": self.state, "uri": self.uri, "since": _iso(self.since), "error": self.error,
                "events": self.events, "connects": self.connects, "domains": sorted(self.live)}

    def extra_domains(self) -> list:
        return list(self.live.values())

    def poll(self, daemon, now: float) -> Optional[float]:
        """Connect when due; returns when it wants to be polled again (None: no need)."""
        if self.libvirt is None:
            return None
        if self.conn is None and now >= self.next_try:
            self._connect(daemon)
        return self.next_try if self.conn is None else None

    def on_readable(self, daemon) -> None:
        try:
            while os.read(self._rfd, 4096):
                pass
        except BlockingIOError:
            pass
        while self._queue:
            kind, name, detail = self._queue.popleft()
            self.events += 1
            if kind == "closed":
                self._lost(daemon, f"connection closed ({detail})")
                continue
            if self.conn is None:
                continue
            daemon.note_event("libvirt", f"{kind} {name}" + (f" {detail}" if detail else ""))
            old = self.live.get(name)
            if kind == "lifecycle" and detail in ("stopped", "crashed", "shutdown"):
                self.live.pop(name, None)
                new = None
            else:
                new = self._fetch(daemon, name)
            bridges = _bridges(old) | _bridges(new)
            daemon.dispatcher.submit(sorted(bridges) if bridges else None, f"libvirt {kind} {name} {detail}")

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            for cb in self._callbacks:
                try:
                    conn.domainEventDeregisterAny(cb)
                except Exception:  # noqa: BLE001
                    pass
            try:
                conn.unregisterCloseCallback()
            except Exception:  # noqa: BLE001
                pass
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass
        self._callbacks = []
        for fd in (self._rfd, self._wfd):
            try:
                os.close(fd)
            except OSError:
                pass

    # --- internals ---------------------------------------------------------------------------------
    def _push(self, kind: str, name: Optional[str], detail: str = "") -> None:
        self._queue.append((kind, name, detail))
        try:
            os.write(self._wfd, b"x")
        except OSError:
            pass

    def _connect(self, daemon) -> None:
        lv = self.libvirt
        try:
            conn = lv.open(self.uri)
            if conn is None:
                raise lv.libvirtError(f"cannot open {self.uri}")
            conn.registerCloseCallback(lambda _c, reason, _o: self._push("closed", None, str(reason)), None)
            cbs = [
                conn.domainEventRegisterAny(None, lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                            lambda _c, dom, ev, _d, _o: self._push(
                                                "lifecycle", dom.name(), LIFECYCLE_NAMES.get(ev, str(ev))), None),
                conn.domainEventRegisterAny(None, lv.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED,
                                            lambda _c, dom, alias, _o: self._push("device-added", dom.name(),
                                                                                  alias), None),
                conn.domainEventRegisterAny(None, lv.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
                                            lambda _c, dom, alias, _o: self._push("device-removed", dom.name(),
                                                                                  alias), None),
            ]
            try:
                conn.setKeepAlive(5, 3)
            except lv.libvirtError:
                pass
        except lv.libvirtError as exc:
            err = " ".join(str(exc).split())
            if self.state != "disconnected" or self.error != err:
                daemon.note_source("libvirt", "disconnected", error=err,
                                   reason=f"using the run-state XML directories; retrying in {self.backoff:g} s")
            self.state, self.error = "disconnected", err
            self.next_try = self.clock() + self.backoff
            self.backoff = min(self.backoff * 2, BACKOFF_MAX)
            return
        self.conn, self._callbacks = conn, cbs
        self.state, self.error, self.since, self.backoff = "connected", None, time.time(), BACKOFF_MIN
        self.connects += 1
        self.live = {}
        try:
            for dom in conn.listAllDomains(lv.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                self._fetch(daemon, dom.name(), dom)
        except lv.libvirtError as exc:
            daemon.note_source("libvirt", "connected", error=f"listing domains: {exc}")
        daemon.note_source("libvirt", "connected", uri=self.uri, domains=sorted(self.live))
        daemon.dispatcher.submit(None, "libvirt connected")

    def _lost(self, daemon, why: str) -> None:
        if self.conn is None:
            return
        conn, self.conn = self.conn, None
        for cb in self._callbacks:
            try:
                conn.domainEventDeregisterAny(cb)
            except Exception:  # noqa: BLE001
                pass
        self._callbacks = []
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass
        self.live = {}
        self.state, self.error, self.since = "disconnected", why, time.time()
        self.backoff = BACKOFF_MIN
        self.next_try = self.clock() + BACKOFF_MIN
        daemon.note_source("libvirt", "disconnected", error=why,
                           reason="using the run-state XML directories; reconnecting")
        daemon.dispatcher.submit(None, "libvirt connection lost")

    def _fetch(self, daemon, name: str, dom=None):
        from netmedic import inventory
        from netmedic.errors import InventoryError

        lv = self.libvirt
        try:
            dom = dom or self.conn.lookupByName(name)
            if not dom.isActive():
                self.live.pop(name, None)
                return None
            xml = dom.XMLDesc(0).encode("utf-8")
            parsed = inventory.parse_domain(f"<libvirt live XML of {name}>", None, data=xml)
        except (lv.libvirtError, InventoryError) as exc:
            self.live.pop(name, None)
            daemon.note_event("libvirt", f"cannot read the live XML of {name}: {exc}")
            return None
        self.live[name] = parsed
        return parsed


def _bridges(dom) -> set:
    return {n.bridge for n in dom.nics if n.bridge} if dom is not None else set()


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
