"""uplink_aggregation on captured snapshots (no bonding in this kernel: the bond mode is filled in by hand)."""
from __future__ import annotations

from snapshots import MAC1, bridge, check_invariant, nic, snapshot, tap, uplink

from netmedic.policies import healer_for


def test_round_robin_bond_under_a_vm_bridge_is_a_risk():
    links = [bridge("br0", 2), uplink("bond0", 3, master=2, bond_mode=0), tap("vnet0", 10, master=2),
             uplink("eth0", 4, master=3, kind=None, port=None), uplink("eth1", 5, master=3, kind=None, port=None)]
    snap = snapshot(links=links, nics=[nic("vm1", MAC1, "br0", "vnet0")])
    (v,) = check_invariant("uplink_aggregation", snap)
    assert v.severity == "risk" and v.subject.port == "bond0"
    assert v.evidence["mode"] == "balance-rr" and v.evidence["members"] == ["eth0", "eth1"]
    assert "active-backup" in v.evidence["remedies"] and "LACP" in v.evidence["remedies"]
    assert healer_for(v, {}) is None


def test_safe_bond_modes_and_bridges_without_vms_are_clean():
    for mode in (1, 2, 4, 5, 6):
        snap = snapshot(links=[bridge("br0", 2), uplink("bond0", 3, master=2, bond_mode=mode),
                               tap("vnet0", 10, master=2)], nics=[nic("vm1", MAC1, "br0", "vnet0")])
        assert check_invariant("uplink_aggregation", snap) == [], mode
    no_vm = snapshot(links=[bridge("br0", 2), uplink("bond0", 3, master=2, bond_mode=0)])
    assert check_invariant("uplink_aggregation", no_vm) == []
