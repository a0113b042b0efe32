"""`netmedic daemon`: reacts to netlink link and fdb events within milliseconds, coalesces bursts
through the dispatcher, resyncs fully every `resync_interval` seconds, recovers from netlink overflow
(ENOBUFS) with a new socket and a full resync, reloads the policy on SIGHUP or when the file changes
(keeping the last good one when the new one is broken), and stops cleanly on SIGTERM.

Other event sources (docs/event-sources.md):
  - a root-only Unix datagram socket (default /run/netmedic/netmedic.sock) where the libvirt hooks, the
    NetworkManager dispatcher script and the udev rule post one-line JSON events
    (`{"source": "...", "bridges": [...]}` or `{"source": "...", "domain": "NAME"}`;
    netmedic.sources.eventsocket, its clients netmedic.sources.client and netmedic.hooks.notify);
  - libvirt's event API (netmedic.sources.libvirt_api: lifecycle, DEVICE_ADDED/REMOVED; reconnects with
    backoff, the run-state XML directories carry on while libvirtd is away);
  - any object with the source interface (add_source): name, fileno() (or None), on_readable(daemon),
    poll(daemon, now) -> next wanted poll time or None, status() -> dict, close(), and optionally
    extra_domains() -> inventory.Domain list for the engine.
Each only says *what changed*: dispatcher.submit() of the affected bridges. The daemon writes what it
is doing to `status.json` next to its socket, which `netmedic status` shows.

Why one module of ~700 lines: it is the event loop, and every part here (sources, listener,
dispatcher turns, reloads, fault backoff, watchdog pings, status) reads and writes the loop's own state
between two select() calls; the parts without that state live elsewhere (sources/, settings.py for the
policy fallback, status.py for rendering, sdnotify.py, metrics.py).
"""
from __future__ import annotations

import collections
import json
import os
import select
import signal
import time
import traceback
from typing import Optional

from netmedic import inventory, metrics, nl
from netmedic.dispatcher import Dispatcher
from netmedic.errors import NetmedicError
from netmedic.fdbmoves import FdbMoves
from netmedic.policies import config
from netmedic.sdnotify import SdNotify
from netmedic.settings import (
    DEFAULT_SOCKET,  # noqa: F401  (re-exported)
    save_last_good,
)
from netmedic.sources.eventsocket import EventSocket

MAX_EVENTS_PER_TURN = 5000  # read at most this many before giving the reconcile its turn
STATUS_FILE = "status.json"
HISTORY = 20  # last events / last heals kept for `netmedic status`
HOOK_DOMAIN_TTL = 120.0  # seconds the domain a hook sent counts (libvirt's status XML exists by then)


def _ms(t0: float) -> float:
    return round((time.monotonic() - t0) * 1000, 2)


def _where(exc: BaseException) -> str:
    """file:line of the innermost frame of an unexpected exception (for the audit line)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


MAX_DATAGRAM = 256 * 1024  # a hook's request carries the domain XML
FAULT_BACKOFF_MAX = 60.0  # seconds: the longest wait before retrying what raised


class Daemon:
    def __init__(self, engine, policy_path: Optional[str] = None, mode: Optional[str] = None,
                 resync: Optional[float] = None, listener_factory=nl.Listener,
                 socket_path: Optional[str] = None, libvirt_uri: Optional[str] = None):
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
        self.socket_path = socket_path  # None: no event socket (and no status file)
        self.libvirt_uri = libvirt_uri  # None: no libvirt event source
        self.sources: list = []
        self.source_state: dict = {"netlink": {"state": "starting"}}
        self.last_events: collections.deque = collections.deque(maxlen=HISTORY)
        self.last_heals: collections.deque = collections.deque(maxlen=HISTORY)
        self.fdb_moves = FdbMoves()  # recent fdb moves per MAC, for `netmedic diagnose`
        self.started = time.time()
        self._status_dirty = True
        self._status_written = 0.0
        self._source_due: dict = {}  # id(source) -> monotonic time of its next poll (None: none wanted)
        self.hook_domains: dict = {}  # name -> (Domain a hook sent, monotonic expiry)
        self._known_nics: Optional[dict] = None  # domain -> its NICs, as of the latest pass
        self._known_networks: Optional[dict] = None  # and the networks
        self.listener = None
        self.dispatcher.refresh_inventory = self._refresh_inventory
        self._links_complete = False  # the dispatcher's ifindex maps hold every link (a full pass ran)
        self.metrics = metrics.Metrics()  # [metrics] Prometheus figures (netmedic/metrics.py)
        # Anything that raised where nothing should (a bug, a malformed input no check caught): component
        # -> {count, active, error, where, first, last}; audited with its traceback once per kind.
        self.faults: dict = {}
        self._fault_seen: set = set()
        self.policy_problem: Optional[str] = None  # the policy file was refused: what runs instead
        self.dir_problems: list = []  # run-state XML directories missing or not directories
        self.notifier = SdNotify()
        self._next_ping = 0.0
        self._listener_retry: Optional[float] = None
        state = getattr(engine, "state", None)
        if state is not None and getattr(state, "report", None) is None:
            state.report = self._audit  # a malformed state file moved aside, the state unwritable

    # --- sources and status ----------------------------------------------------------------------
    def add_source(self, source) -> None:
        self.sources.append(source)
        self._status_dirty = True

    def note_event(self, source: str, detail: str, count: bool = True) -> None:
        self.last_events.append({"ts": _iso(time.time()), "source": source, "detail": detail[:300]})
        self._status_dirty = True
        if count:
            self.metrics.event(source)  # [metrics]

    def note_source(self, name: str, state: str, **fields) -> None:
        """A source connected, disconnected, degraded: audit it and show it in the status."""
        self._audit("source_state", source=name, state=state, **fields)
        self.note_event(name, state + (f": {fields['error']}" if fields.get("error") else ""), count=False)

    def fault(self, component: str, exc: BaseException) -> float:
        """Something raised that should not have: audit it with its traceback (once per kind), count it,
        show the daemon degraded; returns how long to wait before retrying it (doubling, capped)."""
        where = _where(exc)
        f = self.faults.setdefault(component, {"count": 0, "active": 0, "first": _iso(time.time())})
        f["count"] += 1
        f["active"] += 1
        f.update(error=f"{type(exc).__name__}: {str(exc)[:300]}", where=where, last=_iso(time.time()))
        sig = (component, type(exc).__name__, where)
        try:
            if sig not in self._fault_seen:
                self._fault_seen.add(sig)
                tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                self._audit("internal_error", component=component, error=f["error"], where=where,
                            traceback=tb[-8000:], level="alert",
                            reason="caught: the daemon goes on and retries with backoff")
        except Exception:  # noqa: BLE001 - reporting must not raise in turn
            pass
        self._status_dirty = True
        return min(FAULT_BACKOFF_MAX, 2.0 ** (f["active"] - 1))

    def recovered(self, component: str) -> None:
        f = self.faults.get(component)
        if f and f["active"]:
            self._audit("recovered", component=component, failures=f["active"], error=f.get("error"))
            f["active"] = 0
            self._status_dirty = True

    def health(self) -> dict:
        """`ok`, or `degraded` with why: faults not yet recovered, the audit log or the state that cannot
        be written, a refused policy, missing run-state directories."""
        why = [f"{c}: {f['error']} ({f['active']}x)" for c, f in sorted(self.faults.items()) if f["active"]]
        audit = getattr(self.engine, "audit", None)
        if audit is not None and getattr(audit, "degraded", None):
            why.append(f"audit log: {audit.degraded} (writing to stderr)")
        state_error = getattr(getattr(self.engine, "state", None), "save_error", None)
        if state_error:
            why.append(f"state: {state_error} (records kept in memory)")
        if self.policy_problem:
            why.append(f"policy: {self.policy_problem}")
        why += [f"xml dir: {p}" for p in self.dir_problems]
        return {"state": "degraded" if why else "ok", "why": why,
                "faults": {c: dict(f) for c, f in self.faults.items()}}

    def handle_request(self, event: dict) -> dict:
        """Do a libvirt hook's phase in the daemon (the hook waits): `prepare` (the duplicate-MAC
        decision), `reconcile` (start/started/reconnect: pin now) or `release` (stopped/release)."""
        from netmedic.hooks import base as hook_base
        from netmedic.hooks import qemu as hook_qemu

        kind = event.get("request")
        if kind == "fdb_moves":  # netmedic diagnose asks what the daemon saw of one MAC
            return self.fdb_moves.answer(event.get("mac", ""))
        name = event.get("domain")
        phase = str(event.get("phase", ""))[:40]
        trigger = f"hook:{event.get('hook', 'qemu')} {phase} (daemon)"
        t0 = time.monotonic()
        self.note_event(str(event.get("source", "hook"))[:64], f"{phase} {name}: {kind}")
        common = {"hook": event.get("hook", "qemu"), "phase": phase, "domain": name,
                  "hook_pid": event.get("hook_pid"), "handled_by": "daemon"}
        if kind == "release":
            if not isinstance(name, str):
                raise ValueError("release needs a domain name")
            self.hook_domains.pop(name, None)
            released = self.engine.release_domain(name, trigger=trigger, mac=event.get("mac"))
            self._audit("hook", **common, result="released", duration_ms=_ms(t0),
                        released=[{k: r.get(k) for k in ("kind", "mac", "port", "bridge", "result")}
                                  for r in released])
            bridges = sorted({r.get("bridge") for r in released if r.get("bridge")})
            if bridges:  # look at that VM once more on the bridges it left (nothing else changed)
                self.dispatcher.submit(bridges, f"{phase} {name}", domains={b: [name] for b in bridges})
            return {"ok": True, "released": len(released)}
        networks = self.engine.inventory.networks if self.engine.inventory is not None else None
        dom = hook_qemu.domain_from_request(event, networks)
        if kind == "prepare":
            inv = inventory.load(self.engine.domain_dir, self.engine.network_dir, self._extra_domains())
            host_macs = self.host_macs()
            result, reason, _clashes, fields = hook_qemu.decide_start(
                self.engine.policy, dom, inv.domains, host_macs if host_macs is not None else hook_base.sys_macs())
            self._audit("hook", **common, result=result, duration_ms=_ms(t0), **fields)
            return {"ok": True, "result": result, "reason": reason}
        if kind == "reconcile":
            self.hook_domains[dom.name] = (dom, time.monotonic() + HOOK_DOMAIN_TTL)
            self.metrics.pending_since = t0  # [metrics] event-to-heal of this pass starts at the request
            bridges = sorted({n.bridge for n in dom.nics if n.bridge
                              and self.engine.policy.in_scope(n.bridge, dom.name)})
            report = (self.reconcile(bridges, trigger, domains={b: [dom.name] for b in bridges})
                      if bridges else None)
            results: dict = {}
            for o in (report.outcomes if report else []):
                results[o.result] = results.get(o.result, 0) + 1
            self._audit("hook", **common, result="reconciled" if bridges else "nothing to do",
                        duration_ms=_ms(t0), nics=[{"mac": n.mac, "bridge": n.bridge, "tap": n.tap}
                                                   for n in dom.nics], bridges=bridges, results=results,
                        correlation_id=report.correlation_id if report else None)
            if bridges and report is None:
                return {"ok": False, "error": "reconcile failed"}
            return {"ok": True, "results": results, "correlation_id": report.correlation_id if report else None}
        raise ValueError(f"unknown request {kind!r}")

    def _refresh_inventory(self, name: str) -> bool:
        """The dispatcher met a port it does not know as a VM tap: if the run-state XML changed since the
        last pass (the inventory is reused while the inotify watch vouches for it), reload it."""
        before = self.engine.inventory
        try:
            self.engine.extra_domains = self._extra_domains()
            inv = self.engine.load_inventory()
        except NetmedicError:
            return False
        if inv is before:
            return False
        self.dispatcher.set_inventory(inv.nics)
        return name in self.dispatcher.tap_bridge

    def host_macs(self):
        """Every host interface's MAC as of now, from the link events and observations (no read of
        the host): the pending notifications are drained first, so every change the kernel made before
        this call is in. None when that cannot be vouched for (no full pass yet, an overflow)."""
        if not self._links_complete or not isinstance(self.listener, nl.Listener):
            return None  # (--no-netlink: no link events keep the map current)
        try:
            if not self._drain(self.listener, limit=1_000_000):
                return None
        except Exception:  # noqa: BLE001 - the caller reads the host instead
            return None
        if not self._links_complete:  # the drain hit an overflow: the resync will rebuild the map
            return None
        return self.dispatcher.host_macs()

    def _extra_domains(self) -> list:
        """Domains the engine sees beyond the run-state XML: what hooks just sent (until libvirt's
        own files/events catch up) and libvirt's live XML (the latter wins)."""
        now = time.monotonic()
        for name in [n for n, (_d, until) in self.hook_domains.items() if until < now]:
            del self.hook_domains[name]
        extra = [d for d, _until in self.hook_domains.values()]
        for src in self.sources:
            extra.extend(getattr(src, "extra_domains", lambda: [])())
        return extra

    def bridges_of(self, domain: str):
        """The bridges of a domain the daemon knows (run-state XML or libvirt), None when unknown."""
        found = set()
        for src in self.sources:
            for dom in getattr(src, "extra_domains", lambda: [])():
                if dom.name == domain:
                    found |= {n.bridge for n in dom.nics if n.bridge}
        inv = self.engine.inventory
        if inv is not None and domain in inv.domains:
            found |= {n.bridge for n in inv.domains[domain].nics if n.bridge}
        return sorted(found) or None

    def status(self) -> dict:
        sources = dict(self.source_state)
        for src in self.sources:
            try:
                sources[src.name] = src.status()
            except Exception as exc:  # noqa: BLE001 - the status must not take the daemon down
                sources[src.name] = {"state": "error", "error": str(exc)}
        sources["xml_dirs"] = {"state": "polling", "domain_dir": self.engine.domain_dir,
                               "network_dir": self.engine.network_dir}
        return {"pid": os.getpid(), "started": _iso(self.started), "updated": _iso(time.time()),
                "dry_run": self.engine.dry_run, "policy": getattr(self.engine.policy, "source", None),
                "resync_interval": self.resync_interval, "sources": sources, "health": self.health(),
                "remedies": {name: {k: c.get(k) for k in ("remedy", "chosen", "why")}
                             for name, c in sorted((getattr(self.engine, "choices", None) or {}).items())},
                "last_events": list(self.last_events), "last_heals": list(self.last_heals),
                "metrics": self.metrics.summary()}  # [metrics]

    def write_status(self, force: bool = False, final: bool = False) -> None:
        if self.socket_path is None or not any(isinstance(s, EventSocket) and s.sock is not None
                                               for s in self.sources):
            return  # the status file belongs to the daemon that owns the socket
        now = time.monotonic()
        if not force and (not self._status_dirty or now - self._status_written < 0.5):
            return
        path = os.path.join(os.path.dirname(os.path.abspath(self.socket_path)), STATUS_FILE)
        data = self.status()
        if final:
            data["stopped"] = _iso(time.time())
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, default=str)
            os.replace(tmp, path)
        except (OSError, ValueError, TypeError):
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return
        self._status_dirty, self._status_written = False, now

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
        self.metrics.audit(event, fields)  # [metrics]

    def _reload_policy(self) -> None:
        self.notifier.notify("RELOADING=1")
        try:
            try:
                policy = config.load(self.policy_path).with_mode(self.mode)
            except (NetmedicError, RecursionError, MemoryError, ValueError) as exc:
                error = str(exc) if isinstance(exc, NetmedicError) else f"{type(exc).__name__}: {exc}"
                self.policy_problem = f"{error[:300]} (running: {getattr(self.engine.policy, 'source', None)})"
                self._audit("policy_rejected", error=error[:2000], reason="keeping the last good policy",
                            running=getattr(self.engine.policy, "source", None), level="alert")
                self._status_dirty = True
                return
            self.engine.policy = policy
            self.policy_problem = None
            save_last_good(policy, getattr(self.engine.state, "directory", None))
            self._audit("policy_loaded", source=policy.source)
            self.dispatcher.submit(None, "policy reloaded")
            self._status_dirty = True
        finally:
            self.notifier.notify("READY=1")

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

    def reconcile(self, bridges, trigger: str, domains=None):
        """One engine pass (bridges None: everything; domains: bridge -> VMs it is narrowed to); returns
        its Report (None when it failed)."""
        report = None
        t0 = time.monotonic()
        try:
            self.engine.extra_domains = self._extra_domains()
            report = self.engine.reconcile(trigger=trigger, bridges=bridges, domains=domains)
        except NetmedicError as exc:
            self._audit("error", error=f"reconcile failed: {exc}")
            self.metrics.observe_pass(None, time.monotonic() - t0, bridges, domains)  # [metrics]
        except Exception as exc:  # noqa: BLE001 - a bug in a pass must not stop the daemon
            self.metrics.observe_pass(None, time.monotonic() - t0, bridges, domains)  # [metrics]
            delay = self.fault("reconcile", exc)
            at = time.monotonic() + delay
            self.retry_at = at if self.retry_at is None else min(self.retry_at, at)
            return None
        else:
            self.recovered("reconcile")
            self.metrics.observe_pass(report, time.monotonic() - t0, bridges, domains)  # [metrics]
            self._status_dirty = True
            acted = [o for o in report.outcomes if o.result in ("healed", "rolled_back", "failed")]
            if acted or report.released:
                self.last_heals.append({
                    "ts": _iso(time.time()), "trigger": trigger[:200], "correlation_id": report.correlation_id,
                    "results": [f"{o.result}: {o.plan.summary if o.plan else o.violation.kind} "
                                f"({o.violation.subject})" for o in acted][:10],
                    "released": [f"{r.get('kind')} {r.get('mac')} on {r.get('port')}" for r in report.released][:10]})
            if report.retry_at is not None:  # a failed fix backs off: come back when it may retry
                at = time.monotonic() + max(0.0, report.retry_at - self.engine.clock())
                self.retry_at = at if self.retry_at is None else min(self.retry_at, at)
        inv = self.engine.inventory
        if inv is not None:
            self.metrics.set_inventory(inv)  # [metrics]
            self.dispatcher.set_inventory(inv.nics)
            self._known_nics = _nics_by_domain(inv)
            self._known_networks = inv.networks
        if self.engine.last_links is not None:  # no second link dump: the pass's own observation
            self.dispatcher.set_links(self.engine.last_links, complete=self.engine.last_links_complete)
            self._links_complete = self._links_complete or self.engine.last_links_complete
        return report

    def _submit_inventory_changes(self) -> None:
        """The run-state XML changed (a VM started, stopped, was edited): reconcile the VMs whose NICs
        changed, on their old and new bridges, not the whole host."""
        try:
            self.engine.extra_domains = self._extra_domains()
            inv = self.engine.load_inventory()
        except NetmedicError:
            self.dispatcher.submit(None, "domain/network XML changed")
            return
        self.dispatcher.set_inventory(inv.nics)
        now = _nics_by_domain(inv)
        before = self._known_nics
        if before is None or inv.networks != self._known_networks:
            self.dispatcher.submit(None, "domain/network XML changed")
            return
        narrow: dict = {}
        for name in set(before) | set(now):
            if before.get(name) != now.get(name):
                for nic in before.get(name, frozenset()) | now.get(name, frozenset()):
                    if nic.bridge:
                        narrow.setdefault(nic.bridge, set()).add(name)
        if narrow:
            names = sorted({d for ds in narrow.values() for d in ds})
            self.dispatcher.submit(sorted(narrow), f"domain XML changed: {', '.join(names[:5])}", domains=narrow)

    def _on_signal(self, signum, _frame):
        if signum == signal.SIGHUP:
            self.reload_requested = True
        else:
            self.stopping = True

    def _guarded(self, component: str, fn, *args, **kw):
        """Run one piece of the loop's work; what it raises is a fault of that component (audited once,
        counted, degraded), never the daemon's end: the rest of the loop goes on."""
        try:
            result = fn(*args, **kw)
        except Exception as exc:  # noqa: BLE001
            self.fault(component, exc)
            return None
        self.recovered(component)
        return result

    def _open_listener(self):
        """The netlink listener; when it cannot be opened (or broke), a stand-in that is never readable,
        and another try after a backoff."""
        try:
            listener = self.listener_factory()
        except Exception as exc:  # noqa: BLE001
            delay = self.fault("netlink", exc)
            from netmedic.sources import NullListener

            listener = NullListener()
            self._listener_retry = time.monotonic() + delay
            self.source_state["netlink"] = {"state": "error", "error": str(exc)[:300]}
        else:
            self._listener_retry = None
            self.source_state["netlink"] = {"state": "listening", "since": _iso(time.time()),
                                            "overflows": self.source_state.get("netlink", {}).get("overflows", 0)}
        self.listener = listener
        return listener

    def _reopen_listener(self, old, delay: float = 0.0):
        """A new listener for a broken one: at once the first time, after `delay` when it keeps
        breaking (a stand-in that is never readable until then)."""
        try:
            old.close()
        except Exception:  # noqa: BLE001
            pass
        self._links_complete = False
        if delay > 1.0:
            from netmedic.sources import NullListener

            self.listener = listener = NullListener()
            self._listener_retry = time.monotonic() + delay
            self.source_state["netlink"]["state"] = "error"
            return listener
        listener = self._open_listener()
        self.dispatcher.submit(None, "netlink listener reopened")
        return listener

    def _ping(self, now: float) -> float:
        """WATCHDOG=1 from the main loop (a hung loop stops pinging: systemd restarts the daemon), and
        the backlog of an audit log that was full (it catches up with no new event); returns the
        seconds until this is due again."""
        audit = getattr(self.engine, "audit", None)
        wait = 3600.0
        if audit is not None and getattr(audit, "degraded", None):
            audit.flush()
            wait = 1.0
        if self.notifier.watchdog is None:
            return wait
        if now >= self._next_ping:
            self.notifier.notify("WATCHDOG=1")
            self._next_ping = now + self.notifier.watchdog
        return min(wait, self._next_ping - now)

    def _check_dirs(self) -> None:
        problems = inventory.dir_problems(self.engine.domain_dir, self.engine.network_dir)
        if problems != self.dir_problems:
            if problems:
                self._audit("input_warning", errors=problems, level="warning",
                            reason="run-state XML directory missing or not a directory: looking again every second")
            self.dir_problems = problems
            self._status_dirty = True

    def _warm_netlink(self) -> None:
        """Open the write socket now (pyroute2's import and IPRoute's setup, ~0.2 s): a one-shot command
        opens it only when it writes, the daemon must not pay it in its first VM's time to protect."""
        if not self.engine.dry_run:
            self.engine.ops.nl.ipr  # noqa: B018 - opened for its side effect

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        listener = self._open_listener()
        self._guarded("sources", self._start_sources)
        self._check_dirs()
        self._audit("daemon_started", resync_interval=self.resync_interval, dry_run=self.engine.dry_run,
                    sources={s.name: s.status().get("state") for s in self.sources})
        self._inventory_changed()
        self._guarded("netlink", self._warm_netlink)
        for src in self.sources:  # connect first: the startup pass then sees libvirt's live domains
            self._poll_source(src, time.monotonic())
        self.metrics.tick(self)  # [metrics] serve from the start
        self.reconcile(None, "startup")
        self.write_status(force=True)
        self.notifier.notify(f"READY=1\nSTATUS=watching; health {self.health()['state']}\nMAINPID={os.getpid()}")
        self._ping(time.monotonic())
        next_resync = time.monotonic() + self.resync_interval
        next_poll = time.monotonic() + 1.0
        try:
            while not self.stopping:
                now = time.monotonic()
                wait = min(next_resync, next_poll, self.retry_at or next_poll) - now
                pending = self.dispatcher.wait_time()
                if pending is not None:
                    wait = min(wait, pending)
                if self._status_dirty and self.socket_path:  # keep `netmedic status` within ~0.5 s
                    wait = min(wait, self._status_written + 0.5 - time.monotonic())
                wait = min(wait, self._ping(now))
                if self._listener_retry is not None:
                    if now >= self._listener_retry:
                        listener = self._reopen_listener(listener)
                    else:
                        wait = min(wait, self._listener_retry - now)
                watched = [listener]
                for src in self.sources:
                    due = self._source_due.get(id(src))
                    if due is not None:
                        wait = min(wait, due - now)
                    if src.fileno() is not None:
                        watched.append(src)
                try:
                    readable, _, _ = select.select(watched, [], [], max(0.0, wait))
                except InterruptedError:
                    readable = []
                for src in readable:
                    if src is listener:
                        try:
                            self._drain(listener)
                        except Exception as exc:  # noqa: BLE001 - a broken socket: a new one, a full resync
                            delay = self.fault("netlink", exc)
                            listener = self._reopen_listener(listener, delay)
                        else:
                            self.recovered("netlink")
                    else:
                        try:
                            src.on_readable(self)
                        except Exception as exc:  # noqa: BLE001 - a broken source must not stop healing
                            self.fault(f"source {src.name}", exc)
                        self._poll_source(src, time.monotonic())  # an event can change what it wants next
                now = time.monotonic()
                for src in self.sources:
                    due = self._source_due.get(id(src))
                    if due is not None and now >= due:
                        self._poll_source(src, now)
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
                    self._check_dirs()
                    if self._inventory_changed():
                        self._guarded("inventory", self._submit_inventory_changes)
                if self.retry_at is not None and now >= self.retry_at:
                    self.retry_at = None
                    self.dispatcher.submit(None, "retry after backoff")
                if now >= next_resync:
                    self._guarded("dispatcher", self.dispatcher.take)
                    self.reconcile(None, "resync")
                    next_resync = time.monotonic() + self.resync_interval
                elif self._guarded("dispatcher", self.dispatcher.due):
                    self.metrics.pending_since = getattr(self.dispatcher, "_first", None)  # [metrics]
                    taken = self._guarded("dispatcher", self.dispatcher.take_scoped)
                    if taken is not None:
                        bridges, domains, reasons = taken
                        self.reconcile(bridges, "event: " + "; ".join(reasons[:3]), domains=domains)
                self._guarded("metrics", lambda: self.metrics.tick(self))  # [metrics]
                self.write_status()
        finally:
            self.notifier.notify("STOPPING=1")
            self.metrics.stop()  # [metrics]
            listener = self.listener or listener
            try:
                listener.close()
            except Exception:  # noqa: BLE001
                pass
            self.write_status(force=True, final=True)
            for src in self.sources:
                try:
                    src.close()
                except Exception:  # noqa: BLE001
                    pass
            self.engine.ops.close()
            self._audit("daemon_stopped")
        return 0

    def xml_changed(self) -> None:
        """The run-state XML directories changed (the inotify watch): reconcile the VMs that changed."""
        self._inventory_changed()  # keep the poll's signature current: no second pass for this change
        self.metrics.event("xmlwatch")  # [metrics]
        self._submit_inventory_changes()

    def _start_sources(self) -> None:
        from netmedic.sources.xmlwatch import XmlWatch

        watch = XmlWatch([self.engine.domain_dir, self.engine.network_dir])
        self.add_source(watch)
        self.engine.inventory_changes = watch.take_changes
        if watch.error:
            self.note_source("xmlwatch", "off", error=watch.error)
        if self.socket_path:
            sock = EventSocket(self.socket_path)
            self.add_source(sock)
            self.note_source("socket", "listening" if sock.sock is not None else "off", path=self.socket_path,
                             error=sock.error)
        from netmedic.sources.kernel import NetconfSource, NftablesSource

        for kernel_src in (NetconfSource(), NftablesSource()):  # forwarding and firewall changes
            self.add_source(kernel_src)
            if kernel_src.error:
                self.note_source(kernel_src.name, "off", error=kernel_src.error)
        if self.libvirt_uri:
            from netmedic.sources import libvirt_api as events

            src = events.LibvirtSource(self.libvirt_uri)
            self.add_source(src)
            if src.state == "unavailable":
                self.note_source("libvirt", "unavailable", error=src.error,
                                 reason="using the run-state XML directories only")
        if "kernel_events" in self.engine.needs():  # an enabled invariant reads the kernel log
            from netmedic.sources.kmsg import KmsgSource

            src = KmsgSource()
            self.add_source(src)
            if src.error:
                self.note_source("kmsg", "off", error=src.error)
        for src in self.sources:
            self._source_due[id(src)] = time.monotonic()

    def _poll_source(self, src, now: float) -> None:
        try:
            self._source_due[id(src)] = src.poll(self, now)
        except Exception as exc:  # noqa: BLE001 - audited once, counted, retried with backoff
            self._source_due[id(src)] = now + self.fault(f"source {src.name}", exc)
        else:
            self.recovered(f"source {src.name}")
        self._status_dirty = True

    def _drain(self, listener, limit: int = MAX_EVENTS_PER_TURN) -> bool:
        """Read and dispatch pending notifications, at most about `limit`; True when none is left."""
        count = 0
        while count < limit:
            try:
                events = listener.read()
            except nl.Overflow:
                self.metrics.overflow()  # [metrics]
                self._links_complete = False
                self._audit("netlink_overflow", reason="events were lost: full resync", level="warning")
                self.source_state["netlink"]["overflows"] = self.source_state["netlink"].get("overflows", 0) + 1
                self.note_event("netlink", "overflow: full resync")
                self.dispatcher.submit(None, "netlink overflow")
                return False
            except BlockingIOError:
                return True
            if not events:
                return True
            for ev in events:
                self.fdb_moves.note(ev, self.dispatcher.index_name)
                self.dispatcher.netlink(ev)
            count += len(events)
            self.metrics.event("netlink", len(events))  # [metrics]
            r, _, _ = select.select([listener], [], [], 0)
            if not r:
                return True
        return False


def _nics_by_domain(inv) -> dict:
    """domain name -> the set of its NICs (mac, bridge, tap, vlans, ...), as of one inventory."""
    return {name: frozenset(dom.nics) for name, dom in inv.domains.items()}
