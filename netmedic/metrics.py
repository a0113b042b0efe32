"""The daemon's Prometheus metrics (docs/monitoring.md).

One object, `Metrics`, fed by the daemon through a few hooks on its own thread (`observe_pass` after each
engine pass with its Report, `event` per notification a source delivered, `overflow`, `audit` for the
daemon's own audit lines, `tick` once a loop turn for what is read rather than pushed: the sources'
states, the breaker, the kill switch). It keeps plain Python figures under one lock; a scrape (another
thread) or the textfile writer copies them under that lock and renders them. The same figures go into
status.json (`summary()`), which `netmedic status` shows.

`prometheus_client` is optional: without it the daemon runs and `netmedic status` still shows the
figures, but nothing is served or written (the daemon audits that once). The policy's `metrics:` section
says where to serve (`listen`, off by default) and where to write node_exporter's textfile collector file
(`textfile`, off by default); both are applied again when the policy is reloaded.

Why one module of ~600 lines: every figure is declared, fed and rendered here (the daemon has only
call sites marked [metrics]), so adding or renaming a metric — which the shipped alert rules and the
dashboard depend on — is one place to read.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Optional

from netmedic import __version__

DEFAULT_PORT = 29110  # docs/monitoring.md: why this one
TEXTFILE_INTERVAL = 10.0  # seconds between two writes of the textfile
UP_STATES = ("listening", "connected", "watching", "polling", "following", "waiting for NetworkManager")
MAX_SOURCES = 32  # a bound on the `source` label's values (a socket event names its own source)
REPEAT_WINDOW = 3600.0  # netmedic_subject_heals_last_hour_max looks back this far

PASS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
HEAL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
HEAL_RESULTS = ("healed", "failed", "rolled_back", "superseded")  # outcomes where a fix was applied


class Histogram:
    """Cumulative buckets + sum + count, the shape of a Prometheus histogram."""

    def __init__(self, buckets):
        self.bounds = tuple(buckets)
        self.counts = [0] * len(self.bounds)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for i, b in enumerate(self.bounds):
            if value <= b:
                self.counts[i] += 1
                break

    def copy(self) -> Histogram:
        h = Histogram(self.bounds)
        h.counts, h.total, h.sum = list(self.counts), self.total, self.sum
        return h

    def cumulative(self) -> list:
        out, acc = [], 0
        for b, c in zip(self.bounds, self.counts):
            acc += c
            out.append((_le(b), acc))
        out.append(("+Inf", self.total))
        return out

    def quantile(self, q: float) -> Optional[float]:
        """The upper bound of the bucket holding quantile q (what status shows; None: no data)."""
        if not self.total:
            return None
        rank, acc = q * self.total, 0
        for b, c in zip(self.bounds, self.counts):
            acc += c
            if acc >= rank:
                return b
        return float("inf")


def _le(b: float) -> str:
    return repr(float(b))


def _covered(key: str, bridge, domain, bridges: set, domains: Optional[dict]) -> bool:
    """Would a pass over `bridges` narrowed by `domains` have seen this violation again? (The engine's
    rule for what a scoped pass speaks for, on the Report's data.)"""
    if bridge not in bridges:
        return False
    if key.startswith("unique_mac:host_mac_clash:"):
        return False  # judged by full passes only
    narrow = domains.get(bridge) if domains else None
    return narrow is None or domain in narrow


def _filled(family, items: dict):
    """A metric family with one sample per item (labels: a tuple of values, or one value)."""
    for labels, n in sorted(items.items()):
        family.add_metric(list(labels) if isinstance(labels, tuple) else [labels], n)
    return family


class Metrics:
    def __init__(self, clock=time.time, monotonic=time.monotonic):
        self.clock, self.monotonic = clock, monotonic
        self.lock = threading.Lock()
        self.started = clock()
        self.pending_since: Optional[float] = None  # monotonic time of the first event behind the next pass
        # what the daemon pushes
        self.violations: dict = {}  # key -> (invariant, kind, bridge, domain)
        self.heals: dict = {}  # (invariant, healer, result) -> count
        self.rollbacks: dict = {}  # (invariant, healer) -> count
        self.passes: dict = {}  # (scope, outcome) -> count
        self.resyncs: dict = {}  # reason -> count
        self.pass_seconds = {"full": Histogram(PASS_BUCKETS), "scoped": Histogram(PASS_BUCKETS)}
        self.event_to_heal = Histogram(HEAL_BUCKETS)
        self.protect = Histogram(HEAL_BUCKETS)
        self.events: dict = {}  # source -> count
        self.last_event: dict = {}  # source -> unix time
        self.overflows = 0
        self.last_error: float = 0.0
        self.last_pass: float = 0.0
        self.last_pass_ok = True
        self.nics: tuple = ()  # (domain, mac, bridge, tap)
        self._inv = None
        self.repeats: dict = {}  # violation key -> [heal times]
        # what the daemon's tick reads
        self.sources: dict = {}  # name -> (up, state)
        self.breaker_open: dict = {}  # invariant -> subjects whose breaker is open
        self.kill_switch = False
        self.dry_run = False
        self.updated: float = 0.0
        # serving
        self.listen = ""
        self.textfile = ""
        self.server = None
        self.error: Optional[str] = None  # why serving/writing is off (shown by status)
        self._policy = None
        self._textfile_due = 0.0
        self._client = None
        self._info_block = None  # (nics, their exposition lines)
        self.prerender_info = False  # collect() leaves netmedic_vm_nic_info to render()
        self._zeros()

    def _zeros(self) -> None:
        """Every (invariant, healer, result) a policy can produce exists from the start at 0: a counter
        that appears at 1 shows no increase() for its first fix, and the alerts look at increases."""
        try:
            from netmedic.policies import INVARIANTS
        except Exception:  # noqa: BLE001 - the figures then appear with their first fix
            return
        for name, mod in INVARIANTS.items():
            healers = set()
            for remedy in getattr(mod, "REMEDIES", {}).values():
                healers |= set(remedy.values()) if isinstance(remedy, dict) else {remedy}
            for healer in sorted(h for h in healers if isinstance(h, str)):
                for result in HEAL_RESULTS:
                    self.heals.setdefault((name, healer, result), 0)
                self.rollbacks.setdefault((name, healer), 0)
        for reason in ("periodic", "overflow"):
            self.resyncs.setdefault(reason, 0)
        for scope in ("full", "scoped"):
            for outcome in ("ok", "failed"):
                self.passes.setdefault((scope, outcome), 0)

    # --- hooks (the daemon's thread) -------------------------------------------------------------
    def event(self, source: str, n: int = 1) -> None:
        now = self.clock()
        with self.lock:
            if source not in self.events and len(self.events) >= MAX_SOURCES:
                source = "other"
            self.events[source] = self.events.get(source, 0) + n
            self.last_event[source] = now

    def overflow(self) -> None:
        with self.lock:
            self.overflows += 1

    def audit(self, event: str, fields: dict) -> None:
        """Every audit line the daemon writes itself: errors set the last error time."""
        if event in ("error", "policy_rejected") or fields.get("level") == "alert":
            with self.lock:
                self.last_error = self.clock()

    def set_inventory(self, inv) -> None:
        if inv is None or inv is self._inv:
            return
        nics = tuple(sorted({(n.domain, n.mac, n.bridge or "", n.tap or "") for n in inv.nics}))
        with self.lock:
            if nics != self.nics:
                self.nics = nics  # a new tuple only when the NICs changed: render() keeps its block till then
            self._inv = inv

    def observe_pass(self, report, seconds: float, bridges=None, domains=None) -> None:
        """One engine pass ended (report None: it failed). `bridges`/`domains`: its scope, as given to
        Engine.reconcile (None: everything)."""
        now, mono = self.clock(), self.monotonic()
        since, self.pending_since = self.pending_since, None
        if report is not None and report.trigger in ("startup", "resync"):
            since = None  # not an event's pass
            if report.trigger == "startup":
                self._textfile_due = 0.0  # the textfile holds the startup pass's figures at once
        scope = "full" if bridges is None else "scoped"
        with self.lock:
            self.last_pass = now
            self.pass_seconds[scope].observe(seconds)
            if report is None:
                self.passes[(scope, "failed")] = self.passes.get((scope, "failed"), 0) + 1
                self.last_pass_ok = False
                self.last_error = now
                return
            self.passes[(scope, "ok")] = self.passes.get((scope, "ok"), 0) + 1
            self.last_pass_ok = not report.errors
            if report.errors:
                self.last_error = now
            trigger = report.trigger or ""
            if "netlink overflow" in trigger:
                self.resyncs["overflow"] = self.resyncs.get("overflow", 0) + 1
            elif trigger == "resync":
                self.resyncs["periodic"] = self.resyncs.get("periodic", 0) + 1
            # violations standing after this pass (a healed one is gone; the rest are still there)
            if bridges is None:
                self.violations = {}
            else:
                bset = set(bridges)
                narrow = {b: set(d) for b, d in domains.items()} if domains else None
                self.violations = {k: v for k, v in self.violations.items()
                                   if not _covered(k, v[2] or None, v[3], bset, narrow)}
            last: dict = {}
            for o in report.outcomes:
                last[o.violation.key] = o
            for v in report.violations:
                if v.key not in last:
                    last[v.key] = None
            for key, o in last.items():
                if o is not None and o.result == "healed":
                    continue
                v = o.violation if o is not None else next(x for x in report.violations if x.key == key)
                self.violations[key] = (v.invariant, v.kind, v.subject.bridge or "", v.subject.domain)
            for o in report.outcomes:
                if o.plan is None or o.result not in HEAL_RESULTS:
                    continue
                v = o.violation
                k = (v.invariant, o.plan.healer, o.result)
                self.heals[k] = self.heals.get(k, 0) + 1
                if o.result in ("rolled_back", "failed"):
                    rk = (v.invariant, o.plan.healer)
                    self.rollbacks[rk] = self.rollbacks.get(rk, 0) + 1
                if o.result == "healed":
                    times = [t for t in self.repeats.get(v.key, ()) if now - t < REPEAT_WINDOW]
                    times.append(now)
                    self.repeats[v.key] = times
                    if since is not None:
                        self.event_to_heal.observe(max(0.0, mono - since))
                        if v.invariant == "fdb_ownership" and v.kind == "unpinned":
                            self.protect.observe(max(0.0, mono - since))
            for key in [k for k, ts in self.repeats.items() if now - ts[-1] >= REPEAT_WINDOW]:
                del self.repeats[key]

    def tick(self, daemon) -> None:
        """Once a loop turn: what is read, not pushed (at most once a second), the textfile, a policy
        reload's new `metrics:` settings."""
        now = self.clock()
        policy = daemon.engine.policy
        if policy is not self._policy:
            self._policy = policy
            self.configure(getattr(policy, "metrics_listen", ""), getattr(policy, "metrics_textfile", ""),
                           audit=daemon._audit)
        if now - self.updated >= 1.0:
            self._read(daemon, policy, now)
        if self.textfile and now >= self._textfile_due:
            self._textfile_due = now + TEXTFILE_INTERVAL
            self.write_textfile()

    def _read(self, daemon, policy, now: float) -> None:
        sources = {}
        for name, st in daemon.source_state.items():
            sources[name] = st.get("state", "?")
        for src in daemon.sources:
            try:
                sources[src.name] = src.status().get("state", "?")
            except Exception:  # noqa: BLE001 - a broken source is a down source
                sources[src.name] = "error"
        breaker: dict = {}
        for key, s in list(getattr(daemon.engine.state, "guard", {}).items()):
            if isinstance(s, dict) and s.get("open_until", 0) > now:
                inv = key.split(":", 1)[0]
                breaker[inv] = breaker.get(inv, 0) + 1
        killed = policy.killed()
        with self.lock:
            self.sources = {n: (s in UP_STATES, s) for n, s in sources.items()}
            for name in sources:
                self.events.setdefault(name, 0)
            self.breaker_open = breaker
            self.kill_switch = killed
            self.dry_run = bool(daemon.engine.dry_run)
            self.updated = now

    # --- views ---------------------------------------------------------------------------------
    def degraded(self) -> bool:
        return (not self.last_pass_ok) or any(not up for up, _s in self.sources.values())

    def summary(self) -> dict:
        """The figures for status.json / `netmedic status --json` (the same as the scrape's)."""
        with self.lock:
            heals: dict = {}
            for (inv, healer, result), n in sorted(self.heals.items()):
                if n:  # the pre-created zeros stay out of the status
                    heals.setdefault(f"{inv}/{healer}", {})[result] = n
            viol: dict = {}
            for inv, kind, bridge, _dom in self.violations.values():
                k = f"{inv}/{kind}" + (f" on {bridge}" if bridge else "")
                viol[k] = viol.get(k, 0) + 1
            return {
                "serving": {"listen": self.listen or None, "textfile": self.textfile or None,
                            "error": self.error},
                "degraded": self.degraded(), "last_error": _iso(self.last_error) if self.last_error else None,
                "vm_nics": len(self.nics), "violations": viol, "heals": heals,
                "rollbacks": sum(self.rollbacks.values()),
                "breaker_open": dict(self.breaker_open), "kill_switch": self.kill_switch, "dry_run": self.dry_run,
                "passes": {f"{s}/{o}": n for (s, o), n in sorted(self.passes.items()) if n},
                "resyncs": dict(self.resyncs), "netlink_overflows": self.overflows,
                "events": dict(self.events),
                "pass_seconds_p50": {s: h.quantile(0.5) for s, h in self.pass_seconds.items() if h.total},
                "event_to_heal_seconds_p99": self.event_to_heal.quantile(0.99),
                "protect_seconds_p99": self.protect.quantile(0.99),
                "heals_of_one_subject_last_hour_max": max((len(t) for t in self.repeats.values()), default=0)}

    def collect(self):
        """prometheus_client's Collector interface: yields metric families (any thread)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        with self.lock:
            nics, violations = self.nics, list(self.violations.values())
            heals, rollbacks, passes = dict(self.heals), dict(self.rollbacks), dict(self.passes)
            resyncs, events, last_event = dict(self.resyncs), dict(self.events), dict(self.last_event)
            hists = {k: h.copy() for k, h in self.pass_seconds.items()}
            e2h, protect = self.event_to_heal.copy(), self.protect.copy()
            sources, breaker = dict(self.sources), dict(self.breaker_open)
            now = self.clock()
            repeats: dict = {}
            for key, ts in self.repeats.items():
                n = sum(1 for t in ts if now - t < REPEAT_WINDOW)
                inv = key.split(":", 1)[0]
                repeats[inv] = max(repeats.get(inv, 0), n)
            scalars = (self.overflows, self.last_error, self.last_pass, self.kill_switch, self.dry_run,
                       self.updated, self.degraded())
        overflows, last_error, last_pass, killed, dry_run, updated, degraded = scalars

        g = GaugeMetricFamily("netmedic_build_info", "netmedic's version (always 1)", labels=["version"])
        g.add_metric([__version__], 1)
        yield g
        if not self.prerender_info:
            g = GaugeMetricFamily("netmedic_vm_nic_info", NIC_INFO_HELP, labels=list(NIC_INFO_LABELS))
            for labels in nics:
                g.add_metric(list(labels), 1)
            yield g
        g = GaugeMetricFamily("netmedic_violations", "Violations standing after the latest passes",
                              labels=["invariant", "kind", "bridge"])
        counts: dict = {}
        for inv, kind, bridge, _dom in violations:
            counts[(inv, kind, bridge)] = counts.get((inv, kind, bridge), 0) + 1
        for labels, n in sorted(counts.items()):
            g.add_metric(list(labels), n)
        yield g
        yield _filled(CounterMetricFamily("netmedic_heals", "Fixes applied, by result (healed, failed, rolled_back, "
                                "superseded)", labels=["invariant", "healer", "result"]), heals)
        yield _filled(CounterMetricFamily("netmedic_rollbacks", "Fixes undone (verification failed, or a step failed)",
                                labels=["invariant", "healer"]), rollbacks)
        yield _filled(GaugeMetricFamily("netmedic_breaker_open", "Subjects whose circuit breaker is open (healing paused)",
                              labels=["invariant"]), breaker)
        yield _filled(GaugeMetricFamily("netmedic_subject_heals_last_hour_max",
                              "The most fixes one subject of this invariant needed within the last hour",
                              labels=["invariant"]), repeats)
        yield GaugeMetricFamily("netmedic_kill_switch_active", "1 while the kill switch file exists",
                                value=int(killed))
        yield GaugeMetricFamily("netmedic_dry_run", "1 when the daemon only plans (dry run)", value=int(dry_run))
        yield _filled(CounterMetricFamily("netmedic_passes", "Engine passes, full or scoped, ok or failed",
                                labels=["scope", "outcome"]), passes)
        h = HistogramMetricFamily("netmedic_pass_duration_seconds", "Duration of one engine pass",
                                  labels=["scope"])
        for scope, hist in sorted(hists.items()):
            h.add_metric([scope], hist.cumulative(), hist.sum)
        yield h
        h = HistogramMetricFamily("netmedic_event_to_heal_seconds",
                                  "From the first event behind a pass to the end of that pass, once per fix "
                                  "it applied")
        h.add_metric([], e2h.cumulative(), e2h.sum)
        yield h
        h = HistogramMetricFamily("netmedic_protect_seconds",
                                  "From the first event about a VM NIC without a pin (a new VM: tap, XML, hook) "
                                  "to the end of the pass that pinned it")
        h.add_metric([], protect.cumulative(), protect.sum)
        yield h
        g = GaugeMetricFamily("netmedic_event_source_up", "1 when the event source is connected/listening",
                              labels=["source", "state"])
        for name, (up, state) in sorted(sources.items()):
            g.add_metric([name, state], int(up))
        yield g
        yield _filled(CounterMetricFamily("netmedic_events", "Notifications received per event source", labels=["source"]), events)
        g = GaugeMetricFamily("netmedic_event_last_timestamp_seconds", "Time of the last notification per source",
                              labels=["source"])
        for name, t in sorted(last_event.items()):
            g.add_metric([name], t)
        yield g
        yield CounterMetricFamily("netmedic_netlink_overflows", "Netlink receive-buffer overflows (ENOBUFS)",
                                  value=overflows)
        c = CounterMetricFamily("netmedic_resyncs", "Full passes: periodic, or after a netlink overflow",
                                labels=["reason"])
        for reason in ("periodic", "overflow"):
            c.add_metric([reason], resyncs.get(reason, 0))
        yield c
        yield GaugeMetricFamily("netmedic_daemon_degraded", "1 when an event source is down or the latest pass "
                                "failed or reported errors", value=int(degraded))
        yield GaugeMetricFamily("netmedic_last_error_timestamp_seconds", "Time of the latest error (0: none)",
                                value=last_error)
        yield GaugeMetricFamily("netmedic_last_pass_timestamp_seconds", "End of the latest engine pass",
                                value=last_pass)
        yield GaugeMetricFamily("netmedic_daemon_start_time_seconds", "When the daemon started",
                                value=self.started)
        yield GaugeMetricFamily("netmedic_metrics_updated_timestamp_seconds",
                                "When the daemon's loop last refreshed these figures (a stuck loop stops it)",
                                value=updated)

    # --- serving -------------------------------------------------------------------------------
    def registry(self):
        if self._client is None:
            from prometheus_client import CollectorRegistry

            reg = CollectorRegistry(auto_describe=False)
            reg.register(self)
            self._client = reg
        return self._client

    def render(self) -> bytes:
        """The exposition: netmedic_vm_nic_info (one series per VM NIC, the bulk of a big host's scrape,
        and changed only when a VM starts or stops) rendered once per inventory and kept; the rest by
        prometheus_client at each scrape."""
        from prometheus_client import generate_latest

        self.prerender_info = True
        with self.lock:
            nics = self.nics
        if self._info_block is None or self._info_block[0] is not nics:
            self._info_block = (nics, _render_info(nics))
        return self._info_block[1] + generate_latest(self.registry())

    def configure(self, listen: str, textfile: str, audit=None) -> None:
        """Serve on `listen` ("" off) and write `textfile` ("" off); a change restarts the server."""
        if listen == self.listen and textfile == self.textfile and (self.server is not None or not listen):
            return
        self.stop()
        self.listen, self.textfile, self.error = listen, textfile, None
        if not listen and not textfile:
            return
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            self.error = "prometheus_client is not installed: metrics are neither served nor written"
            if audit:
                audit("metrics_off", reason=self.error, level="warning")
            return
        if listen:
            try:
                self.server = serve(self, listen)
            except (OSError, ValueError) as exc:
                self.error = f"cannot listen on {listen}: {getattr(exc, 'strerror', None) or exc}"
                if audit:
                    audit("error", error=f"metrics: {self.error}", level="warning")
                return
            if audit:
                audit("metrics_listening", listen=listen, textfile=textfile or None)
        self._textfile_due = 0.0

    def write_textfile(self) -> None:
        """node_exporter's textfile collector reads *.prom: write a temporary name in the same directory
        (not *.prom) and rename it over the file, so the collector never reads half a file."""
        path = self.textfile
        tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{os.getpid()}.tmp")
        try:
            data = self.render()
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except (OSError, ImportError) as exc:
            self.error = f"textfile {path}: {getattr(exc, 'strerror', None) or exc}"
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()


NIC_INFO_HELP = "1 for every VM NIC this host runs (libvirt run-state XML)"
NIC_INFO_LABELS = ("domain", "mac", "bridge", "tap")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _render_info(nics: tuple) -> bytes:
    """netmedic_vm_nic_info in the text exposition format (what prometheus_client writes for it)."""
    lines = [f"# HELP netmedic_vm_nic_info {NIC_INFO_HELP}", "# TYPE netmedic_vm_nic_info gauge"]
    for labels in nics:
        pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(zip(NIC_INFO_LABELS, labels)))
        lines.append(f"netmedic_vm_nic_info{{{pairs}}} 1.0")
    return ("\n".join(lines) + "\n").encode("utf-8")


def parse_listen(text: str) -> tuple:
    """'ADDRESS:PORT' (IPv6 in brackets) -> (address, port); ValueError naming what is wrong."""
    import ipaddress

    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be ADDRESS:PORT, e.g. 127.0.0.1:{DEFAULT_PORT} (got {text!r})")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ipaddress.ip_address(host).version != 6:
            raise ValueError(f"{text!r}: brackets are for IPv6 addresses")
    else:
        try:
            version = ipaddress.ip_address(host).version
        except ValueError:
            raise ValueError(f"{text!r}: the address must be an IP address (got {host!r})") from None
        if version != 4:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets, [ADDRESS]:PORT")
    return host, int(port)


def serve(metrics: Metrics, listen: str):
    """A threading HTTP server for GET /metrics on `listen`, in a daemon thread; returns the server."""
    import http.server
    import socket
    import socketserver

    from prometheus_client import CONTENT_TYPE_LATEST

    host, port = parse_listen(listen)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server interface
            if self.path.split("?", 1)[0] == "/metrics":
                body, ctype, code = metrics.render(), CONTENT_TYPE_LATEST, 200
            elif self.path == "/":
                body, ctype, code = b"netmedic: metrics at /metrics\n", "text/plain", 200
            else:
                body, ctype, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        allow_reuse_address = True

    server = Server((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="netmedic-metrics", daemon=True).start()
    return server


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def render_summary(m: Optional[dict]) -> list:
    """The lines `netmedic status` adds for these figures."""
    if not m:
        return []
    serving = m.get("serving") or {}
    where = ", ".join(x for x in (f"http://{serving['listen']}/metrics" if serving.get("listen") else "",
                                  f"textfile {serving['textfile']}" if serving.get("textfile") else "") if x)
    lines = ["", "metrics: " + (where or "not served (policy metrics.listen / metrics.textfile)")
             + (f"  [{serving['error']}]" if serving.get("error") else "")]
    lines.append(f"  degraded {'yes' if m.get('degraded') else 'no'}; last error {m.get('last_error') or 'none'}; "
                 f"VM NICs {m.get('vm_nics')}; kill switch {'ON' if m.get('kill_switch') else 'off'}; "
                 f"dry run {'yes' if m.get('dry_run') else 'no'}")
    viol = m.get("violations") or {}
    lines.append("  violations standing: " + (", ".join(f"{k} ×{n}" for k, n in sorted(viol.items())) or "none"))
    heals = m.get("heals") or {}
    lines.append("  heals: " + (", ".join(f"{k} " + " ".join(f"{r}={n}" for r, n in v.items())
                                           for k, v in sorted(heals.items())) or "none")
                 + f"; rollbacks {m.get('rollbacks', 0)}; breaker open {sum((m.get('breaker_open') or {}).values())}")
    def words(d):
        return ", ".join(f"{k} {v}" for k, v in sorted((d or {}).items())) or "none"

    lines.append(f"  passes: {words(m.get('passes'))}; resyncs: {words(m.get('resyncs'))}; netlink overflows "
                 f"{m.get('netlink_overflows', 0)}")
    lines.append(f"  events: {words(m.get('events'))}")
    e2h, prot = m.get("event_to_heal_seconds_p99"), m.get("protect_seconds_p99")
    lines.append(f"  event→heal p99 ≤ {e2h if e2h is not None else '-'} s; protect a new VM p99 ≤ "
                 f"{prot if prot is not None else '-'} s (histogram bucket bounds)")
    return lines
