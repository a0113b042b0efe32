"""Invariants: small pure functions over an observed Snapshot that return Violations with evidence.

Each module declares NAME, DESCRIPTION, DEFAULT_ENABLED, DEFAULT_MODE, OPTIONS (validated at policy
load), REMEDIES (violation kind -> healer name, or a dict keyed by the `remedy` option) and
check(snapshot, options). They never touch the host.
"""
from __future__ import annotations

from netmedic.policies import (
    bridge_netfilter,
    fdb_ownership,
    host_ip_on_port,
    ip_forwarding,
    mtu_consistency,
    nat_network_health,
    port_forwarding,
    remote_duplicate,
    unique_mac,
    uplink_aggregation,
    vlan_membership,
)

# The one explicit list. Order is the order a reconcile heals in: attach before pinning.
INVARIANTS = {m.NAME: m for m in (port_forwarding, unique_mac, fdb_ownership, ip_forwarding,
                                  bridge_netfilter, mtu_consistency, vlan_membership, uplink_aggregation,
                                  host_ip_on_port, nat_network_health, remote_duplicate)}


def healer_for(violation, options: dict):
    """The healer name the policy binds to this violation, or None (report only)."""
    remedy = INVARIANTS[violation.invariant].REMEDIES.get(violation.kind)
    if isinstance(remedy, dict):
        remedy = remedy.get(options.get("remedy"))
    return remedy
