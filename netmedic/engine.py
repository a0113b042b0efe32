"""The reconcile loop: observe afresh → check invariants → for each violation, plan → apply → verify →
roll back on failure, within the bounds; audit every step. Level-triggered and idempotent: whatever
triggered it, a pass looks at the whole relevant state, and a second pass over a healed host changes
nothing.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import Callable, Iterable, Optional

from netmedic import inventory as inventory_mod
from netmedic.audit import Audit
from netmedic.bounds import Guard
from netmedic.errors import NetmedicError
from netmedic.healers import HEALERS, for_record
from netmedic.model import Outcome, Plan, Subject, Violation
from netmedic.observe import Snapshot, observe
from netmedic.ops import HostOps
from netmedic.policies import INVARIANTS, healer_for
from netmedic.policies.config import Policy
from netmedic.state import State

MAX_ROUNDS = 4  # a heal can reveal the next step (re-attached tap -> pin it): converge in one pass


@dataclasses.dataclass
class Report:
    correlation_id: str
    trigger: str
    violations: list  # every Violation found in the first observation
    outcomes: list  # Outcome per violation handled (in order)
    released: list  # records netmedic removed because their subject is gone
    errors: list  # one-line strings: bad input files, host errors
    dry_run: bool = False
    retry_at: Optional[float] = None  # clock time when a subject's backoff ends: reconcile again then

    @property
    def changed(self) -> bool:
        return any(o.result in ("healed", "rolled_back") for o in self.outcomes) or bool(self.released)

    def as_dict(self) -> dict:
        return {"correlation_id": self.correlation_id, "trigger": self.trigger, "dry_run": self.dry_run,
                "violations": [v.as_dict() for v in self.violations],
                "outcomes": [o.as_dict() for o in self.outcomes],
                "released": self.released, "errors": self.errors}


class Engine:
    def __init__(self, policy: Policy, state: State, audit: Optional[Audit], domain_dir: Optional[str],
                 network_dir: Optional[str], ops: Optional[HostOps] = None, dry_run: bool = False,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep):
        self.policy = policy
        self.state = state
        self.audit = audit
        self.domain_dir = domain_dir
        self.network_dir = network_dir
        self.dry_run = dry_run or policy.dry_run
        self.ops = ops or HostOps(dry_run=self.dry_run)
        self.clock = clock
        self.sleep = sleep
        self.seen: Optional[set] = None  # violation keys seen by the previous pass (daemon: audit news only)
        self._seen_bridge: dict = {}
        self.last_links: Optional[dict] = None  # the links of the latest observation (name -> LinkInfo)
        self.last_links_complete = False  # ... and whether that was every link of the host
        self.inventory = None
        self.extra_domains: list = []  # inventory.Domain objects not (yet) in the run-state directory
        self.inventory_changes: Optional[Callable] = None  # () -> paths changed since last asked, or None
        self._extras: tuple = ()
        self.choices: dict = {}  # invariant -> what its host-dependent option resolved to (Invariant.choice)
        self._choices_for = None  # the policy self.choices were computed for

    # --- the parts --------------------------------------------------------------------------
    def _audit(self, event: str, **fields) -> None:
        if self.audit is not None:
            self.audit.event(event, **fields)

    def load_inventory(self):
        """The run-state XML (plus extra domains). With `inventory_changes` (the daemon's inotify watch:
        the paths changed since it was last asked, None when it cannot tell) only those files are read
        again, and the previous inventory is reused as it is when none changed."""
        changed = self.inventory_changes() if self.inventory_changes is not None else None
        extras = tuple(self.extra_domains)
        if changed is not None and not changed and self.inventory is not None and extras == self._extras:
            return self.inventory
        self.inventory = inventory_mod.load(self.domain_dir, self.network_dir, self.extra_domains,
                                            changed=changed if self.inventory is not None else None)
        self._extras = extras
        return self.inventory

    def needs(self) -> set:
        """The optional facts the enabled invariants read."""
        return {n for name, inv in INVARIANTS.items() if self.policy.invariants[name].enabled for n in inv.NEEDS}

    def observe(self, bridges: Optional[Iterable[str]] = None, firewall: bool = True,
                domains: Optional[dict] = None, needs: Optional[set] = None) -> Snapshot:
        inv = self.inventory if self.inventory is not None else self.load_inventory()
        needs = self.needs() if needs is None else needs
        only = set(bridges) if bridges is not None else None
        # The records' healers may need facts to release them (netmedic's own firewall rules).
        release_needs = set()
        for kind in {rec.get("kind") for rec in self.state.records.values()
                     if only is None or rec.get("bridge") in only}:
            healer = for_record({"kind": kind})
            if healer is not None:
                release_needs |= set(healer.NEEDS)
        snap = observe(self.ops.nl, inv, self.state.records, bridges=bridges, in_scope=self.policy.in_scope,
                       firewall=firewall and "firewall" in needs, needs=needs | (release_needs - {"firewall"}),
                       domains=domains, firewall_always=firewall and "firewall" in release_needs and not domains,
                       kernel=self.state.kernel)
        self._learned(snap)
        return snap

    def _learned(self, snap: Snapshot) -> None:
        """Keep what the kernel showed about itself (the state's `kernel`) and audit, once, what a
        host-dependent option (a remedy `auto`) resolves to when the kernel's answer settles it."""
        changed = snap.kernel != self.state.kernel
        if not changed and self.choices and self._choices_for is self.policy:
            return
        self.state.kernel = dict(snap.kernel)
        self._choices_for = self.policy
        for name, inv in INVARIANTS.items():
            ipol = self.policy.invariants[name]
            choice = inv.choice(snap, ipol.options) if ipol.enabled else None
            if choice is None:
                self.choices.pop(name, None)
                continue
            if changed and choice.get("detected") and choice != self.choices.get(name):
                self._audit("remedy_chosen", invariant=name, **choice, kernel=snap.kernel)
            self.choices[name] = choice

    def check(self, snapshot: Snapshot) -> list:
        """Every violation the enabled invariants find, within the policy's scope."""
        out = []
        for name, inv in INVARIANTS.items():
            ipol = self.policy.invariants[name]
            if not ipol.enabled:
                continue
            for v in inv.check(snapshot, ipol.options):
                if not self.policy.in_scope(v.subject.bridge, v.subject.domain):
                    continue
                if ipol.mode_for(v.subject.bridge) == "off":
                    continue
                out.append(v)
        return out

    def plan_for(self, v: Violation, snapshot: Snapshot):
        """(healer module or None, Plan or None, reason)."""
        ipol = self.policy.invariants[v.invariant]
        name = healer_for(v, ipol.options)
        if name is None:
            return None, None, "no automatic remedy: " + INVARIANTS[v.invariant].hint(v)
        healer = HEALERS[name]
        plan, why = healer.plan(v, snapshot, ipol.options)
        return healer, plan, why

    # --- one reconcile pass -----------------------------------------------------------------
    def reconcile(self, trigger: str = "manual", bridges: Optional[Iterable[str]] = None,
                  domains: Optional[dict] = None) -> Report:
        """One pass over `bridges` (None: everything). `domains` (bridge -> domain names) narrows some of
        those bridges to some VMs: the daemon's pass for a tap that appeared or a VM MAC that moved looks
        at that VM only, not at the 250 others on its bridge."""
        cid = self.audit.new_correlation(trigger) if self.audit else "-"
        t0 = time.monotonic()
        inv = self.load_inventory()
        report = Report(cid, trigger, [], [], [], [str(e) for e in inv.errors], dry_run=self.dry_run)
        for err in inv.errors:
            self._audit("input_error", error=str(err), source=err.source, line=err.line, field=err.field)
        bridges = set(bridges) if bridges is not None else None
        domains = ({b: set(d) for b, d in domains.items() if b in bridges} or None) \
            if domains and bridges is not None else None
        with self.state.locked(write=not self.dry_run):
            guard = Guard(self.state.guard, self.clock)
            handled: dict = {}
            keys_now = set()
            for rnd in range(MAX_ROUNDS):
                try:
                    snap = self.observe(bridges, domains=domains)
                    self.last_links = snap.links
                    self.last_links_complete = snap.links_complete
                except NetmedicError as exc:
                    report.errors.append(f"observation failed: {exc}")
                    self._audit("error", error=f"observation failed: {exc}")
                    break
                if rnd == 0:
                    report.released = self._release_stale(snap)
                violations = self.check(snap)
                if rnd == 0:
                    report.violations = violations
                # A fix that taught netmedic something about the kernel (a pin read back without its
                # sticky flag) changes what the invariants ask: check again in this pass.
                kernel = dict(self.state.kernel)
                acted = False
                for v in violations:
                    keys_now.add(v.key)
                    if v.key in handled:
                        continue
                    outcome = self._handle(v, snap, guard)
                    handled[v.key] = outcome
                    report.outcomes.append(outcome)
                    acted = acted or outcome.result in ("healed", "superseded")
                acted = acted or self.state.kernel != kernel
                if not acted:
                    break
            guard.prune(keys_now)
            report.retry_at = guard.next_retry(keys_now)
        _fault("after_save")
        current = {o.violation.key: o.violation.subject for o in report.outcomes}
        if self.seen is not None and bridges is not None:
            # A scoped pass only speaks for what it looked at: keep what was seen elsewhere (other
            # bridges, other VMs of a narrowed bridge, host-wide facts only a full pass judges).
            current.update({k: subj for k, subj in self._seen_bridge.items()
                            if k not in current and not _covered(k, subj, bridges, domains)})
        self._seen_bridge = current
        self.seen = set(current)
        self._audit("reconciled", duration_ms=round((time.monotonic() - t0) * 1000, 2),
                    violations=len(report.violations),
                    results=_count(o.result for o in report.outcomes), released=len(report.released),
                    scope=sorted(bridges) if bridges is not None else "all",
                    **({"domains": {b: sorted(d) for b, d in sorted(domains.items())}} if domains else {}))
        return report

    def _handle(self, v: Violation, snap: Snapshot, guard: Guard) -> Outcome:
        ipol = self.policy.invariants[v.invariant]
        mode = ipol.mode_for(v.subject.bridge)
        base = {"invariant": v.invariant, "kind": v.kind, "subject": v.subject.as_dict(), "mode": mode}
        if self.seen is None or v.key not in self.seen:
            self._audit("detected", **base, severity=v.severity, message=v.message, evidence=v.evidence)
        healer, plan, why = self.plan_for(v, snap)
        if plan is None:
            return Outcome(v, "no_remedy" if healer is None else "skipped", why)
        fields = {**base, "healer": plan.healer, "action": plan.summary,
                  "steps": [s.description for s in plan.steps], "before": plan.before}
        refused = precedence(plan, snap)
        if refused:
            return self._not_applied(v, plan, "skipped", refused, {**fields, "precedence": refused})
        if mode == "observe":
            return self._not_applied(v, plan, "observed", "observe mode: not applied", fields)
        if self.dry_run:
            return self._not_applied(v, plan, "planned", "dry-run: not applied", fields)
        if self.policy.killed():
            return self._not_applied(v, plan, "skipped", f"kill switch {self.policy.kill_switch_file} "
                                     "is present: not applied", fields)
        ok, why = guard.admit(v.key, ipol.limits)
        if guard.took_close(v.key):
            self._audit("breaker_closed", **fields, reason="the trial fix held: the fight is over")
        if not ok:
            if guard.took_trip(v.key):
                self._audit("breaker_open", **fields, reason=why, level="alert")
            return self._not_applied(v, plan, "skipped", why, fields)
        guard.acted(v.key, v.subject.domain)
        t0 = time.monotonic()
        prior = self._intend(plan)
        _fault("after_intent")
        applied: list = []
        try:
            for step in plan.steps:
                self.ops.execute(step)
                applied.append(step)
        except NetmedicError as exc:
            self._rollback(applied, fields)
            self._abandon(prior)
            ms = _ms(t0)
            if self._still_violated(v, ipol):
                guard.failed(v.key, ipol.limits)
                self._audit("failed", **fields, result="failed", reason=str(exc), duration_ms=ms)
                return Outcome(v, "failed", str(exc), plan, duration_ms=ms)
            # The host changed under the fix (e.g. NetworkManager detached the tap while it was being
            # pinned): not a failure of the fix, so no backoff; the next round sees the new state.
            why = f"{exc} — the host changed meanwhile: observing again"
            self._audit("failed", **fields, result="superseded", reason=why, duration_ms=ms)
            return Outcome(v, "superseded", why, plan, duration_ms=ms)
        _fault("after_apply")
        verified, after = self._verify(healer, v, ipol)
        _fault("after_verify")
        ms = _ms(t0)
        if verified:
            for rec in plan.records:  # the intent confirmed
                self.state.records[rec["key"]] = self._record(rec)
            for key in plan.forgets:
                self.state.records.pop(key, None)
            guard.succeeded(v.key)
            self._audit("healed", **fields, after=after, result="healed", duration_ms=ms)
            return Outcome(v, "healed", "", plan, after, ms)
        self._rollback(applied, fields)
        self._abandon(prior)
        guard.failed(v.key, ipol.limits)
        self._audit("rolled_back", **fields, after=after, result="rolled_back",
                    reason="verification failed: the violation was still observed after the change",
                    duration_ms=ms)
        return Outcome(v, "rolled_back", "verification failed", plan, after, ms)

    def _record(self, rec: dict, pending: bool = False) -> dict:
        out = {**rec, "created": _iso(self.clock()),
               "correlation_id": self.audit.correlation_id if self.audit else None}
        if pending:
            out["pending"] = True
        return out

    def _intend(self, plan: Plan) -> dict:
        """Ownership survives any crash: what the plan will create is on disk (the state's intent journal,
        fsync'd), marked pending, before a step touches the host. After a crash the record is there whatever happened: a pin that
        was made is netmedic's (a later pass keeps it or releases it through its healer), one that was
        not is planned again under the same key, and a quarantine keeps the port's state from before the
        first change. Protection comes before bookkeeping: a state that cannot be written (full disk)
        does not stop the heal (State reports it). Returns the records the intents replaced."""
        prior = {rec["key"]: self.state.records.get(rec["key"]) for rec in plan.records}
        if plan.records:
            for rec in plan.records:
                self.state.records[rec["key"]] = self._record(rec, pending=True)
            self.state.intend([self.state.records[rec["key"]] for rec in plan.records])
        return prior

    def _abandon(self, prior: dict) -> None:
        """The plan was rolled back: its intents go (what they replaced comes back)."""
        for key, old in prior.items():
            if old is None:
                self.state.records.pop(key, None)
            else:
                self.state.records[key] = old

    def _not_applied(self, v, plan: Plan, result: str, reason: str, fields: dict) -> Outcome:
        if self.seen is None or v.key not in self.seen:
            self._audit("planned", **fields, result=result, reason=reason)
        return Outcome(v, result, reason, plan)

    def _still_violated(self, v: Violation, ipol) -> bool:
        """Is this exact violation still observed (after a step failed)?"""
        try:
            snap = self.observe([v.subject.bridge] if v.subject.bridge else None, domains=_narrow_to(v),
                                needs=set(INVARIANTS[v.invariant].NEEDS))
        except NetmedicError:
            return True
        return v.key in {x.key for x in INVARIANTS[v.invariant].check(snap, ipol.options)}

    def _verify(self, healer, v: Violation, ipol):
        """Observe again (only the subject's bridge), with bounded retries."""
        bridges = [v.subject.bridge] if v.subject.bridge else None
        after: dict = {}
        for attempt in range(max(1, ipol.limits.verify_retries)):
            if attempt:
                self.sleep(ipol.limits.verify_interval)
            try:
                snap = self.observe(bridges, domains=_narrow_to(v), needs=set(INVARIANTS[v.invariant].NEEDS))
            except NetmedicError:
                continue
            after = healer.after(snap, v)
            ok = healer.verify(snap, v)
            if ok is None:
                ok = v.key not in {x.key for x in INVARIANTS[v.invariant].check(snap, ipol.options)}
            if ok:
                return True, after
        return False, after

    def _rollback(self, applied: list, fields: dict) -> None:
        """Undo applied steps in reverse. A failed undo is audited, never raised over the cause."""
        for step in reversed(applied):
            if step.undo is None:
                continue
            try:
                self.ops.execute(step.undo)
                self._audit("rollback_step", **fields, step=step.undo.description, result="ok")
            except NetmedicError as exc:
                self._audit("rollback_step", **fields, step=step.undo.description, result="failed",
                            reason=str(exc), level="alert")

    # --- netmedic's own records ---------------------------------------------------------------
    def _release_stale(self, snap: Snapshot) -> list:
        """Remove what netmedic created for subjects that are gone (VM stopped, duplicate gone), and
        nothing else: each record's healer decides (Healer.release). Only within the observed bridges."""
        # A domain whose run-state XML could not be read may well be running: keep what netmedic made
        # for it (releasing its pin would re-expose it to the poisoning netmedic prevents).
        unreadable = {os.path.basename(e.source)[:-4] for e in snap.inventory.errors
                      if e.source and e.source.endswith(".xml")}
        released = []
        for key, rec in sorted(self.state.records.items()):
            if not snap.covers(rec.get("bridge"), rec.get("domain")) or rec.get("domain") in unreadable:
                continue
            if not self.policy.in_scope(rec.get("bridge"), rec.get("domain")):
                continue
            healer = for_record(rec)
            rel = healer.release(rec, snap) if healer is not None else None
            if rel is None:
                if rec.get("pending") and not self.dry_run:
                    # An intent left by a crash whose subject still needs it: netmedic's from now on (if
                    # the change itself never happened, this pass finds the violation and makes it).
                    self.state.records[key] = {k: v for k, v in rec.items() if k != "pending"}
                    self._audit("adopted", record=rec, reason="an intent left by an interrupted heal: kept")
                continue
            out = self._release(key, rec, rel, snap)
            if out is not None:
                released.append(out)
        return released

    def _release(self, key: str, rec: dict, rel, snap: Snapshot, killable: bool = True) -> Optional[dict]:
        """Apply one Release: its steps, then forget the record (kept when a step fails: retried later).
        The kill switch holds releases back too, except a stopped VM's (killable=False)."""
        if self.dry_run or (killable and self.policy.killed()):
            return {**rec, "result": "planned", "reason": rel.reason}
        for step in rel.steps:
            try:
                self.ops.execute(step)
            except NetmedicError as exc:
                self._audit("error", error=f"releasing {key}: {exc}", record=rec)
                return None
        del self.state.records[key]
        if rec.get("domain") and rec["domain"] not in snap.inventory.domains:
            Guard(self.state.guard, self.clock).forget_domain(rec["domain"])  # the VM stopped
        self._audit("released", record=rec, reason=rel.reason, steps=[s.description for s in rel.steps],
                    subject=Subject(bridge=rec.get("bridge"), port=rec.get("port"),
                                    domain=rec.get("domain"), mac=rec.get("mac")).as_dict())
        return {**rec, "result": "released", "reason": rel.reason}

    def release_domain(self, domain: str, trigger: str = "manual", mac: Optional[str] = None) -> list:
        """Remove every record (and its host state) netmedic made for one domain: the libvirt hook's
        `stopped`/`release` path, which must not depend on the domain's XML still being there.
        With `mac`: only that NIC's records (the network hook's `port-deleted`, e.g. a hot-unplug)."""
        if self.audit:
            self.audit.new_correlation(trigger)
        released = []
        with self.state.locked(write=not self.dry_run):
            if mac is None and not self.dry_run:
                Guard(self.state.guard, self.clock).forget_domain(domain)
            mine = {k: r for k, r in self.state.records.items() if r.get("domain") == domain
                    and (mac is None or r.get("mac") == mac)}
            if not mine:
                return []
            snap = observe(self.ops.nl, inventory_mod.Inventory({}, {}, []), self.state.records,
                           bridges={r.get("bridge") for r in mine.values()}, firewall=False)
            for key, rec in sorted(mine.items()):
                healer = for_record(rec)
                rel = healer.release(rec, snap, force=True) if healer is not None else None
                if rel is None:
                    continue
                rel = dataclasses.replace(rel, reason=f"domain {domain} stopped")
                out = self._release(key, rec, rel, snap, killable=False)
                if out is not None:
                    released.append(out)
        return released


def _fault(point: str) -> None:
    """Fault injection for the crash tests (tests/test_crash_safety.py): with NETMEDIC_TEST_KILL_AT=POINT
    in the environment the process SIGKILLs itself at that step boundary of a heal. Nothing else."""
    if os.environ.get("NETMEDIC_TEST_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _narrow_to(v: Violation) -> Optional[dict]:
    """The observation that verifies a fix of one VM's violation looks at that VM only."""
    if v.subject.bridge and v.subject.domain:
        return {v.subject.bridge: {v.subject.domain}}
    return None


def _covered(key, subject: Subject, bridges: set, domains: Optional[dict]) -> bool:
    """Would a pass over `bridges` narrowed by `domains` have seen this violation again if it still held?"""
    if subject.bridge not in bridges:
        return False
    invariant, kind = key.split(":", 2)[:2]
    inv = INVARIANTS.get(invariant)
    if inv is not None and kind in inv.HOST_WIDE_KINDS:
        return False  # judged by full passes only (they see every host interface)
    narrow = domains.get(subject.bridge) if domains else None
    return narrow is None or subject.domain in narrow


def precedence(plan: Plan, snap: Snapshot) -> Optional[str]:
    """The one rule that decides when two remedies claim one subject (plugins never undo each other):
    - a MAC several VM NICs share is held only on its owner's tap (the oldest NIC: Snapshot.mac_owner),
      never on a duplicate's;
    - a port aspect a record of netmedic holds (a quarantine holds the port's STP state) is changed by
      no other healer while the record exists.
    Returns why the plan must not be applied, or None."""
    for claim in plan.claims:
        if claim[0] == "mac":
            _, bridge, mac, port = claim
            owner = snap.mac_owner(bridge, mac)
            if owner is not None and owner.tap != port:
                return (f"precedence: {mac} belongs to VM {owner.domain}'s {owner.tap} (the older NIC on "
                        f"{bridge}): it is never held on {port}")
            continue
        aspect, port = claim[0], claim[-1]
        for rec in snap.records.values():
            holder = for_record(rec)
            if holder is None or holder.NAME == plan.healer or rec.get("port") != port:
                continue
            if aspect in holder.HOLDS:
                return f"precedence: {port}'s {aspect.replace('_', ' ')} is held by netmedic's {holder.NAME}"
    return None


def _count(items) -> dict:
    out: dict = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def _ms(t0: float) -> float:
    return round((time.monotonic() - t0) * 1000, 2)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
