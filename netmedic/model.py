"""The plain data that flows between observation, invariants, healers and the engine.

An invariant returns Violations; a healer turns one into a Plan of Steps (each with its undo); the
engine applies, verifies and rolls back. None of these types talks to the host.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional


@dataclasses.dataclass(frozen=True)
class Subject:
    """What a violation is about. Every field is optional; the key identifies it for the bounds."""

    bridge: Optional[str] = None
    port: Optional[str] = None
    domain: Optional[str] = None
    mac: Optional[str] = None
    network: Optional[str] = None

    def as_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.as_dict().items())


@dataclasses.dataclass(frozen=True)
class Violation:
    invariant: str
    kind: str  # e.g. 'poisoned', 'unpinned', 'detached', 'not_forwarding'
    subject: Subject
    message: str  # plain words for the admin
    evidence: dict  # observed facts that prove it
    severity: str = "broken"  # 'broken' (traffic is lost now) or 'risk' (it will be)

    @property
    def key(self) -> str:
        """Stable identity of the problem, for the bounds (rate limit, backoff, breaker)."""
        return f"{self.invariant}:{self.kind}:{self.subject}"

    def as_dict(self) -> dict:
        return {"invariant": self.invariant, "kind": self.kind, "subject": self.subject.as_dict(),
                "message": self.message, "evidence": self.evidence, "severity": self.severity}


@dataclasses.dataclass(frozen=True)
class Step:
    """One host mutation, executed by netmedic.ops.HostOps.execute(). `undo` restores the prior value."""

    op: str
    args: dict
    description: str
    undo: Optional[Step] = None

    def as_dict(self) -> dict:
        return {"op": self.op, "args": self.args, "description": self.description}


@dataclasses.dataclass(frozen=True)
class Plan:
    healer: str
    violation: Violation
    steps: tuple  # of Step
    summary: str  # the fix in plain words
    before: dict = dataclasses.field(default_factory=dict)
    # What netmedic creates and must remember (so it only ever removes what it made), recorded on success.
    records: tuple = ()  # of dict, each with a 'kind' and a 'key'
    forgets: tuple = ()  # keys of records this plan removes
    # What the plan takes hold of, for the engine's precedence rule (netmedic.engine.precedence):
    # ("mac", bridge, mac, port) = this MAC is held on that port; ("port_state", port) = that port's STP state.
    claims: tuple = ()

    def as_dict(self) -> dict:
        return {"healer": self.healer, "summary": self.summary,
                "steps": [s.as_dict() for s in self.steps], "before": self.before}


@dataclasses.dataclass
class Outcome:
    """What happened to one violation in a reconcile pass."""

    violation: Violation
    result: str  # 'healed', 'planned' (dry-run), 'observed', 'skipped', 'failed', 'rolled_back', 'no_remedy'
    reason: str = ""
    plan: Optional[Plan] = None
    after: Any = None
    duration_ms: float = 0.0

    def as_dict(self) -> dict:
        d = {"violation": self.violation.as_dict(), "result": self.result, "reason": self.reason}
        if self.plan is not None:
            d["plan"] = self.plan.as_dict()
        if self.after is not None:
            d["after"] = self.after
        return d
