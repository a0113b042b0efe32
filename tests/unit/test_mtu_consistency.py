"""mtu_consistency on captured snapshots: a tap whose MTU differs from its bridge's, and its healer mtu_set."""
from __future__ import annotations

from snapshots import MAC1, bridge, check_invariant, nic, plan_remedy, snapshot, tap, uplink


def _with_mtu(link, mtu):
    import dataclasses
    return dataclasses.replace(link, mtu=mtu)


def test_mtu_mismatch_found_and_planned():
    links = [bridge("br0", 2), uplink("eth0", 3, master=2, kind="veth"), _with_mtu(tap("vnet0", 10, master=2), 1400)]
    snap = snapshot(links=links, nics=[nic("vm1", MAC1, "br0", "vnet0")])
    (v,) = check_invariant("mtu_consistency", snap)
    assert v.kind == "mtu_mismatch" and v.severity == "broken"
    assert v.evidence == {"tap_mtu": 1400, "bridge_mtu": 1500}
    plan, why = plan_remedy(v, snap)
    assert plan.healer == "mtu_set" and [s.args["mtu"] for s in plan.steps] == [1500]
    assert plan.steps[0].undo.args["mtu"] == 1400 and plan.steps[0].args["port_index"] == 10


def test_larger_tap_mtu_is_a_risk_and_equal_is_clean():
    big = snapshot(links=[bridge("br0", 2), _with_mtu(tap("vnet0", 10, master=2), 9000)],
                   nics=[nic("vm1", MAC1, "br0", "vnet0")])
    assert [v.severity for v in check_invariant("mtu_consistency", big)] == ["risk"]
    same = snapshot(links=[bridge("br0", 2), tap("vnet0", 10, master=2)], nics=[nic("vm1", MAC1, "br0", "vnet0")])
    detached = snapshot(links=[bridge("br0", 2), _with_mtu(tap("vnet0", 10), 1400)],
                        nics=[nic("vm1", MAC1, "br0", "vnet0")])
    assert check_invariant("mtu_consistency", same) == [] and check_invariant("mtu_consistency", detached) == []
