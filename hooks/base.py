"""What the qemu and network hooks share: argument and stdin handling, lazy audit/policy/engine, the
daemon notification, a watchdog, and the rule that a netmedic problem never fails libvirt's operation.

Exit status: 0, except when a phase raises Refuse (an explicit policy decision): then the one-line
reason goes to stderr (virsh shows it) and the status is 1. Any other exception, a broken policy
file, a missing directory, a hung lock (the watchdog, NETMEDIC_HOOK_TIMEOUT) is audited as
`hook_error` and the hook exits 0 with nothing on stdout.
"""
from __future__ import annotations

import os
import signal
import sys
import time

from netmedic.hooks import settings

MAX_STDIN = 8 * 1024 * 1024
STARTING_GRACE = 120.0  # s between a pin at `start begin` and the domain's run-state XML, at most


class Refuse(Exception):
    """An explicit policy decision to make libvirt's operation fail; str() is the one-line reason."""


class HookTimeout(Exception):
    pass


class Hook:
    def __init__(self, kind: str, argv: list, data: bytes, cfg: dict):
        args = list(argv[1:5]) + [""] * 4
        self.kind = kind
        self.name, self.op, self.sub, self.extra = args[:4]
        self.data = data
        self.cfg = cfg
        self.t0 = time.monotonic()
        self._audit = None
        self._policy = None
        self.engines: list = []

    @property
    def trigger(self) -> str:
        return f"hook:{self.kind} {self.op} {self.sub}".strip()

    @property
    def phase(self) -> str:
        return f"{self.op} {self.sub}".strip()

    # --- lazy parts -----------------------------------------------------------------------------
    def audit(self):
        if self._audit is None:
            from netmedic.audit import Audit

            self._audit = Audit(self.cfg["audit_log"], trigger=self.trigger)
            self._audit.new_correlation(self.trigger)
        return self._audit

    def event(self, event: str, **fields) -> None:
        fields.setdefault("hook", self.kind)
        fields.setdefault("phase", self.phase)
        self.audit().event(event, **fields)

    def done(self, result: str, **fields) -> None:
        """The one `hook` line every run that did something writes: how to see that the hook fired."""
        key = "network" if self.kind == "network" else "domain"
        fields.setdefault(key, self.name)
        self.event("hook", result=result, duration_ms=round((time.monotonic() - self.t0) * 1000, 2),
                   **fields)

    def policy(self):
        if self._policy is None:
            from netmedic.settings import load_policy

            self._policy = load_policy(self.cfg["policy"])
        return self._policy

    def engine(self, extra_domains=()):
        from netmedic.settings import build_engine

        eng = build_engine(self.policy(), self.cfg["state_dir"], self.audit(), self.cfg["domain_dir"],
                           self.cfg["network_dir"])
        eng.extra_domains = list(extra_domains)
        self.engines.append(eng)
        return eng

    def starting_domains(self, exclude: str = "") -> list:
        """Domains between libvirt's `start` and `started` hooks: libvirt writes a domain's run-state
        XML only after `start begin` (where its hook pinned), so a reconcile of the same bridge by
        another VM's hook would take those fresh pins for a stopped VM's. Rebuilt from netmedic's
        records of VM NICs (a pin, ...) younger than STARTING_GRACE on a tap that exists, of a domain
        with no XML yet."""
        import calendar

        from netmedic import inventory
        from netmedic.state import State

        records = State(self.cfg["state_dir"]).read().records
        now = time.time()
        nics: dict = {}
        for rec in records.values():
            name, port = rec.get("domain"), rec.get("port")
            if not name or name == exclude or not port or not rec.get("mac"):
                continue
            if os.path.exists(os.path.join(self.cfg["domain_dir"], f"{name}.xml")):
                continue
            if not inventory.valid_ifname(port) or not os.path.exists(os.path.join("/sys/class/net", port)):
                continue
            try:
                created = calendar.timegm(time.strptime(rec.get("created") or "", "%Y-%m-%dT%H:%M:%SZ"))
            except (TypeError, ValueError):
                continue
            if now - created > STARTING_GRACE:
                continue
            nics.setdefault(name, []).append(inventory.VmNic(
                domain=name, uuid="", mac=rec["mac"], type="bridge", bridge=rec.get("bridge"), tap=port,
                source_file="<netmedic records: starting>"))
        return [inventory.Domain(name=n, uuid="", nics=tuple(v), source_file="<netmedic records: starting>")
                for n, v in sorted(nics.items())]

    def networks(self) -> dict:
        from netmedic import inventory

        return inventory.load(None, self.cfg["network_dir"]).networks

    def post(self, **event) -> bool:
        """Tell the daemon (when it runs) what changed."""
        from netmedic.hooks import notify

        event.setdefault("source", f"libvirt-{self.kind}-hook")
        event.setdefault("event", self.phase)
        return notify.post(event, self.cfg["socket"])

    def ask(self, **event):
        """Ask the running daemon to do this phase's work and wait for its answer (None: no daemon)."""
        from netmedic.hooks import notify

        event.setdefault("source", f"libvirt-{self.kind}-hook")
        event.setdefault("event", self.phase)
        event.setdefault("hook_pid", os.getpid())
        try:
            timeout = float(self.cfg["daemon_timeout"])
        except ValueError:
            timeout = 5.0
        return notify.request(event, self.cfg["socket"], timeout=timeout)

    def close(self) -> None:
        for eng in self.engines:
            try:
                eng.ops.close()
            except Exception:  # noqa: BLE001 - closing must not turn success into failure
                pass
        if self._audit is not None:
            self._audit.close()

    def error(self, exc: BaseException) -> None:
        """Audit a netmedic failure; the operation goes on. Never raises."""
        msg = f"{type(exc).__name__}: {exc}".strip().splitlines()[0] if str(exc) else type(exc).__name__
        try:
            self.done("error", error=msg, level="error",
                      reason="netmedic failed; libvirt's operation is allowed to go on")
        except BaseException as exc2:  # the audit log itself is broken: libvirtd's log is all we have
            try:
                sys.stderr.write(f"netmedic hook {self.phase} {self.name}: {msg} (audit failed: {exc2})\n")
            except BaseException:
                pass


def _on_alarm(_signum, _frame):
    raise HookTimeout("watchdog: the hook took too long (NETMEDIC_HOOK_TIMEOUT)")


def _read_stdin(stdin) -> bytes:
    try:
        if stdin.isatty():
            return b""
    except (AttributeError, ValueError, OSError):
        pass
    return stdin.read(MAX_STDIN + 1)


def run(kind: str, argv: list, phases: dict, stdin=None, environ=None) -> int:
    """Dispatch argv's (operation, sub-operation) to phases[(op, sub)](hook)."""
    stdin = stdin if stdin is not None else sys.stdin.buffer
    op, sub = (list(argv[2:4]) + ["", ""])[:2]
    handler = phases.get((op, sub))
    try:
        data = _read_stdin(stdin)  # libvirt writes XML to every hook: always take it
    except BaseException:
        data = b""
    if handler is None:
        return 0
    hook = None
    try:
        cfg = settings(environ)
        hook = Hook(kind, argv, data, cfg)
        try:
            timeout = float(cfg["timeout"])
        except ValueError:
            timeout = 15.0
        if timeout > 0:
            signal.signal(signal.SIGALRM, _on_alarm)
            signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            handler(hook)
        finally:
            if timeout > 0:
                signal.setitimer(signal.ITIMER_REAL, 0)
        return 0
    except Refuse as refusal:
        reason = " ".join(str(refusal).split())
        try:
            sys.stderr.write(f"netmedic: {reason}\n")
            sys.stderr.flush()
        except BaseException:
            pass
        return 1
    except BaseException as exc:  # noqa: BLE001 - the whole point: never fail libvirt's operation
        if hook is None:
            hook = Hook(kind, argv, b"", settings(environ if environ is not None else {}))
        hook.error(exc)
        return 0
    finally:
        if hook is not None:
            try:
                hook.close()
            except BaseException:
                pass


def sys_macs(sys_class_net: str = "/sys/class/net") -> dict:
    """Host interface name -> MAC (lower case), from sysfs (cheap: no netlink, no pyroute2)."""
    out = {}
    try:
        names = os.listdir(sys_class_net)
    except OSError:
        return out
    for name in names:
        try:
            with open(os.path.join(sys_class_net, name, "address")) as fh:
                mac = fh.read().strip().lower()
        except OSError:
            continue
        if mac and mac != "00:00:00:00:00:00":
            out[name] = mac
    return out
