"""Plain-words rendering of check and heal results for the admin's terminal."""
from __future__ import annotations


def _evidence(ev: dict) -> str:
    parts = []
    for k, v in ev.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items())
            parts.append(f"{k}: {{{v}}}")
        else:
            parts.append(f"{k}: {v}")
    return "; ".join(parts)


def _block(v, mode: str, plan, note: str, result: str = "") -> list:
    head = f"{v.severity.upper():6} {v.invariant}/{v.kind}  {v.subject}"
    lines = [head, f"       {v.message}", f"       evidence: {_evidence(v.evidence)}"]
    if plan is not None:
        lines.append(f"       fix ({mode}): {plan.summary}")
        for s in plan.steps:
            lines.append(f"         - {s.description}")
    elif note:
        lines.append(f"       fix: {note}")
    if result:
        lines.append(f"       result: {result}")
    return lines


def render_check(planned: list, policy, errors: list) -> str:
    if not planned:
        return "netmedic check: no violations" + (f" ({len(errors)} input errors)" if errors else "")
    broken = sum(1 for v, _, _ in planned if v.severity == "broken")
    out = [f"netmedic check: {len(planned)} violation(s): {broken} broken, {len(planned) - broken} at risk"]
    for v, plan, why in planned:
        mode = policy.invariants[v.invariant].mode_for(v.subject.bridge)
        out.extend(_block(v, mode, plan, why))
    return "\n".join(out)


def render_heal(report) -> str:
    head = "netmedic heal" + (" (dry-run: nothing changed)" if report.dry_run else "")
    if not report.outcomes and not report.released:
        return f"{head}: no violations [{report.correlation_id}]"
    out = [f"{head}: {len(report.outcomes)} violation(s) handled [{report.correlation_id}]"]
    for o in report.outcomes:
        mode = "dry-run" if report.dry_run else o.result
        result = o.result + (f": {o.reason}" if o.reason else "")
        out.extend(_block(o.violation, mode, o.plan, "" if o.plan else o.reason, result))
    for r in report.released:
        out.append(f"RELEASED {r.get('kind')} {r.get('mac', '')} on {r.get('port', '')}: {r.get('reason', '')}")
    return "\n".join(out)
