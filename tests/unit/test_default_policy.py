"""The shipped policy (policies/default.yaml): the modes of the invariants added with diagnose; the
observe-only ones have no remedy."""
from __future__ import annotations

import types

from netmedic.policies import INVARIANTS
from netmedic.policies import config as policy_config


def test_shipped_policy_enables_the_new_invariants_with_documented_modes():
    pol = policy_config.load(policy_config.SHIPPED_DEFAULT)
    modes = {n: (p.enabled, p.mode) for n, p in pol.invariants.items()}
    assert modes["mtu_consistency"] == (True, "enforce")
    assert modes["vlan_membership"] == (True, "enforce")
    for name in ("uplink_aggregation", "host_ip_on_port", "nat_network_health", "remote_duplicate"):
        assert modes[name] == (True, "observe"), name
        # never heals by default (nat_network_health's libvirt reload is opt-in: `remedy: reload-libvirt`)
        assert all(INVARIANTS[name].remedy(types.SimpleNamespace(kind=k), pol.invariants[name].options) is None
                   for k in INVARIANTS[name].REMEDIES), f"{name} must never heal by default"
