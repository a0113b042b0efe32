"""vlan_membership on captured snapshots (this kernel has no bridge VLAN filtering: the kernel's VLAN table is
filled in by hand; tests/integration/test_vlan_netlink.py runs the real netlink path), and its healer vlan_add."""
from __future__ import annotations

from snapshots import MAC1, bridge, check_invariant, nic, plan_remedy, snapshot, tap

from netmedic import nl


def _vlan_snap(vlans, have):
    snap = snapshot(links=[bridge("br0", 2, vlan_filtering=True), tap("vnet0", 10, master=2)],
                    nics=[nic("vm1", MAC1, "br0", "vnet0", vlans=vlans)])
    snap.port_vlans = {10: tuple(have)}
    return snap


def test_access_vlan_missing_is_added_as_pvid_untagged():
    snap = _vlan_snap((20,), [nl.VlanInfo(1, True, True)])
    (v,) = check_invariant("vlan_membership", snap)
    assert v.evidence["missing"] == [{"vid": 20, "pvid": True, "untagged": True}]
    plan, _ = plan_remedy(v, snap)
    assert [s.op for s in plan.steps] == ["vlan_add"]
    assert plan.steps[0].description == "bridge vlan add vid 20 dev vnet0 pvid untagged"
    assert plan.steps[0].undo.op == "vlan_delete"


def test_trunk_vlans_tagged_and_existing_flags_restored_on_undo():
    snap = _vlan_snap((20, 30), [nl.VlanInfo(20, False, False)])
    (v,) = check_invariant("vlan_membership", snap)
    assert v.evidence["missing"] == [{"vid": 30, "pvid": False, "untagged": False}]
    snap = _vlan_snap((20,), [nl.VlanInfo(20, False, False)])  # member, but not the access VLAN
    (v,) = check_invariant("vlan_membership", snap)
    plan, _ = plan_remedy(v, snap)
    assert plan.steps[0].undo.op == "vlan_add" and plan.steps[0].undo.args["pvid"] is False
    assert check_invariant("vlan_membership", _vlan_snap((20,), [nl.VlanInfo(20, True, True)])) == []


def test_vlans_not_checked_without_vlan_filtering_or_observation():
    snap = _vlan_snap((20,), [])
    snap.port_vlans = None  # not observed (invariant disabled)
    assert check_invariant("vlan_membership", snap) == []
    snap = snapshot(links=[bridge("br0", 2), tap("vnet0", 10, master=2)],
                    nics=[nic("vm1", MAC1, "br0", "vnet0", vlans=(20,))])
    snap.port_vlans = {}
    assert check_invariant("vlan_membership", snap) == []
