"""Healers: one per violation class. A healer only plans: it turns a Violation and the Snapshot it was
found in into a Plan of Steps (each with its undo). The engine applies the plan, verifies it by
observing again, rolls it back if verification fails, and audits every step.

Registered in one explicit list, plus the `netmedic.healers` entry-point group for third parties.
"""
from __future__ import annotations

from netmedic.healers import (
    fdb_pin,
    ip_forward,
    mtu_set,
    netfilter_accept,
    port_state,
    quarantine,
    reattach,
    vlan_add,
)

HEALERS = {m.NAME: m for m in (fdb_pin, reattach, port_state, ip_forward, netfilter_accept, quarantine, mtu_set,
                               vlan_add)}


def load_entry_points() -> None:
    """Add third-party healers registered under the `netmedic.healers` entry-point group."""
    try:
        from importlib.metadata import entry_points
    except ImportError:  # pragma: no cover
        return
    try:
        eps = entry_points(group="netmedic.healers")  # 3.10+
    except TypeError:  # 3.9
        eps = entry_points().get("netmedic.healers", [])
    for ep in eps:
        mod = ep.load()
        HEALERS.setdefault(getattr(mod, "NAME", ep.name), mod)
