"""Invariants: small pure checks over an observed Snapshot that return Violations with evidence.

Each module holds one netmedic.plugin.Invariant (its PLUGIN): name, options (validated at policy load),
the facts it needs, check(), the healer each violation kind binds to, the manual hints, and the VM-start
decision. They never touch the host (tests/test_plugins.py checks what they import).

The one explicit list below, plus the `netmedic.invariants` entry-point group for third parties.
"""
from __future__ import annotations

from netmedic import plugin
from netmedic.policies import (
    bridge_mac,
    bridge_netfilter,
    bridge_uplink,
    conntrack_capacity,
    evpn_bridge,
    fdb_ownership,
    guest_silent,
    host_ip_on_port,
    ip_forwarding,
    ipv6_accept_ra,
    kernel_log,
    macvtap_isolation,
    mtu_consistency,
    nat_network_health,
    port_delivery,
    port_forwarding,
    remote_duplicate,
    route_conflict,
    stp_forward_delay,
    unique_mac,
    uplink_aggregation,
    vlan_membership,
)

# Order is the order a reconcile heals in: attach before pinning.
BUILTIN = (port_forwarding, unique_mac, fdb_ownership, ip_forwarding, bridge_netfilter, mtu_consistency,
           vlan_membership, uplink_aggregation, host_ip_on_port, nat_network_health, remote_duplicate,
           port_delivery, guest_silent, route_conflict, macvtap_isolation,
           stp_forward_delay, bridge_uplink, bridge_mac, conntrack_capacity, kernel_log, evpn_bridge,
           ipv6_accept_ra)
INVARIANTS = {m.PLUGIN.NAME: plugin.validate_invariant(m.PLUGIN) for m in BUILTIN}


def load_entry_points() -> None:
    """Add third-party invariants registered under the `netmedic.invariants` entry-point group."""
    plugin.register_entry_points("netmedic.invariants", INVARIANTS, plugin.validate_invariant)


def healer_for(violation, options: dict):
    """The healer name the policy binds to this violation, or None (report only)."""
    return INVARIANTS[violation.invariant].remedy(violation, options)
