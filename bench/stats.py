"""Small statistics helpers: median, spread, percentiles."""
from __future__ import annotations

import statistics
from typing import Optional


def percentile(values, pct: float) -> Optional[float]:
    """Nearest-rank percentile (p99 of fewer than 100 samples is the maximum)."""
    vals = sorted(values)
    if not vals:
        return None
    rank = max(1, min(len(vals), int(-(-pct * len(vals) // 100))))
    return vals[rank - 1]


def summary(values) -> dict:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"n": 0, "median": None, "min": None, "max": None, "p99": None}
    return {"n": len(vals), "median": statistics.median(vals), "min": min(vals), "max": max(vals),
            "p99": percentile(vals, 99)}


def fmt(value, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def fmt_summary(s: dict, unit: str = "", digits: int = 1, scale: float = 1.0) -> str:
    """'123.4 ms (min 120.0 – max 130.2, n=5)'."""
    if not s or not s.get("n"):
        return "n/a"
    return (f"{s['median'] * scale:,.{digits}f}{unit} (min {s['min'] * scale:,.{digits}f} – "
            f"max {s['max'] * scale:,.{digits}f}, n={s['n']})")
