"""Healers: one per violation class. A healer only plans: it turns a Violation and the Snapshot it was
found in into a Plan of Steps (each with its undo), and says when a record it made may go (release).
The engine applies the plan, verifies it by observing again, rolls it back if verification fails, and
audits every step.

Each module holds one netmedic.plugin.Healer (its PLUGIN), registered in the one explicit list below,
plus the `netmedic.healers` entry-point group for third parties.
"""
from __future__ import annotations

from netmedic import plugin
from netmedic.healers import (
    bridge_mac_set,
    conntrack_raise,
    fdb_pin,
    ip_forward,
    libvirt_reload,
    mtu_set,
    netfilter_accept,
    nft_accept,
    port_state,
    quarantine,
    reattach,
    reflection_guard,
    stp_tune,
    vlan_add,
)

BUILTIN = (fdb_pin, reflection_guard, reattach, port_state, ip_forward, netfilter_accept, nft_accept, quarantine, mtu_set,
           vlan_add, stp_tune, bridge_mac_set, conntrack_raise, libvirt_reload)
HEALERS = {m.PLUGIN.NAME: plugin.validate_healer(m.PLUGIN) for m in BUILTIN}


def load_entry_points() -> None:
    """Add third-party healers registered under the `netmedic.healers` entry-point group."""
    plugin.register_entry_points("netmedic.healers", HEALERS, plugin.validate_healer)


def for_record(record: dict):
    """The healer that created a record (by its kind), or None."""
    kind = record.get("kind") if isinstance(record, dict) else None
    for healer in HEALERS.values():
        if kind in healer.record_kinds():
            return healer
    return None
