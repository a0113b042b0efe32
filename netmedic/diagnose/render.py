"""diagnose's human output (the JSON is the report itself: docs/diagnose.schema.json)."""
from __future__ import annotations

QUIET = ("agent_note", "events")  # in the JSON; too variable (or long) for the text


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v is None:
        return "-"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def render(report: dict) -> str:
    nic = report["nic"]
    if report.get("path") == "direct":
        where = f"{nic.get('kind') or 'direct'} on {nic.get('parent') or nic.get('pci') or '?'}"
    else:
        where = f"network {nic['network']}, bridge {nic['bridge']}" if nic["network"] else f"bridge {nic['bridge']}"
    out = [f"netmedic diagnose {report['domain']}: NIC {nic['mac']} on {nic['tap']} ({where})", ""]
    out.append(report["headline"])
    fb = report["first_broken"]
    if fb and fb.get("fix"):
        out.append(f"Fix: {fb['fix']}")
    out.append("")
    for h in report["hops"]:
        out.append(f"{h['number']}. {h['title']:<17} {h['verdict'].upper():<8} {h['summary']}")
        if h["evidence"] and h["verdict"] != "ok":
            out.append(f"   {'evidence:':<25} " + "; ".join(f"{k}={_fmt(v)}" for k, v in h["evidence"].items()
                                                           if v not in (None, [], {}) and k not in QUIET))
        if h["fix"] and h["verdict"] != "ok":
            out.append(f"   {'fix:':<25} {h['fix']}")
    for e in report["errors"]:
        out.append(f"input error: {e}")
    return "\n".join(out)
