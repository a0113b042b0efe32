"""`netmedic status` in plain words: the daemon's status file (written beside its socket) rendered."""
from __future__ import annotations

from netmedic import metrics


def render_status(status: dict, path: str) -> str:
    """`netmedic status` in plain words."""
    state = "running" if status.get("running") else ("stopped " + status.get("stopped", "")).strip()
    lines = [f"netmedic daemon: {state} (pid {status.get('pid')}, since {status.get('started')}; "
             f"status {path}, updated {status.get('updated')})",
             f"policy: {status.get('policy')}" + ("  [dry-run]" if status.get("dry_run") else "")]
    health = status.get("health") if isinstance(status.get("health"), dict) else {}
    if health:
        lines.append(f"health: {health.get('state', '?')}")
        lines += [f"  {w}" for w in (health.get("why") or [])[:10]]
    lines += ["", "sources:"]
    for name, src in sorted((status.get("sources") or {}).items()):
        detail = ", ".join(f"{k}={v}" for k, v in src.items() if k != "state" and v not in (None, [], ""))
        lines.append(f"  {name:<10} {src.get('state', '?'):<13} {detail}")
    remedies = status.get("remedies") if isinstance(status.get("remedies"), dict) else {}
    if remedies:
        lines += ["", "remedies:"]
        lines += [f"  {name:<22} {r.get('remedy')}" + (f" -> {r.get('chosen')}" if r.get("chosen") != r.get("remedy")
                                                       else "") + f"  ({r.get('why')})"
                  for name, r in sorted(remedies.items()) if isinstance(r, dict)]
    lines += ["", "last events:"]
    lines += [f"  {e['ts']}  {e['source']:<22} {e['detail']}" for e in status.get("last_events", [])[-10:]] \
        or ["  (none)"]
    lines += ["", "last heals:"]
    heals = status.get("last_heals", [])[-10:]
    for h in heals:
        lines.append(f"  {h['ts']}  {h['trigger']}  [{h.get('correlation_id')}]")
        lines += [f"      {r}" for r in h.get("results", []) + [f"released {x}" for x in h.get("released", [])]]
    if not heals:
        lines.append("  (none)")
    lines += metrics.render_summary(status.get("metrics"))  # [metrics]
    return "\n".join(lines)
