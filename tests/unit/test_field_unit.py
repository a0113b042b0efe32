"""The field invariants and healers of issue 16 on captured snapshots (pure: no host), for the decisions
the real-namespace tests (test_field.py, test_kmsg.py) cannot reach: the conntrack memory bound (the
table's size is read-only in a child namespace), the lower-delay edge cases, several uplinks, a scoped
observation, healers' refusals."""
from __future__ import annotations

import dataclasses

from snapshots import LISTENING, MAC1, bridge, link, network, nic, snapshot, tap, uplink

from netmedic.facts import KernelEvent
from netmedic.healers import HEALERS
from netmedic.policies import INVARIANTS

STP = INVARIANTS["stp_forward_delay"]
MACINV = INVARIANTS["bridge_mac"]
UPL = INVARIANTS["bridge_uplink"]
CT = INVARIANTS["conntrack_capacity"]
KLOG = INVARIANTS["kernel_log"]


def opts(inv, **over):
    return {**{k: o.default for k, o in inv.OPTIONS.items()}, **over}


def stp_snap(uplinks=1, tap_state=LISTENING, fd=1500):
    br = dataclasses.replace(bridge("br0", 2, stp=1), bridge=dataclasses.replace(bridge("br0", 2, stp=1).bridge,
                                                                                 forward_delay=fd))
    links = [br, tap("vnet0", 10, master=2, state=tap_state)]
    links += [uplink(f"eno{i}", 3 + i, master=2, kind=None) for i in range(uplinks)]
    return snapshot(links=links, nics=[nic("vm1", MAC1, "br0", "vnet0")])


# --- stp_forward_delay / stp_tune -----------------------------------------------------------------------
def test_stp_off_plan_turns_stp_off_then_frees_the_waiting_ports():
    snap = stp_snap()
    [v] = STP.check(snap, opts(STP))
    assert v.severity == "broken" and v.evidence["waiting_ports"] == {"vnet0": "listening"}
    plan, why = HEALERS["stp_tune"].plan(v, snap, opts(STP))
    assert [s.op for s in plan.steps] == ["set_bridge", "set_port"]
    assert plan.steps[0].args == {"bridge": "br0", "bridge_index": 2, "stp_state": 0}
    assert plan.steps[0].undo.args["stp_state"] == 1
    assert plan.steps[1].args == {"port": "vnet0", "port_index": 10, "state": 3}
    assert plan.claims == (("port_state", "vnet0"),)


def test_stp_risk_only_when_no_vm_waits_and_quiet_under_the_limit():
    [v] = STP.check(stp_snap(tap_state=3), opts(STP))
    assert v.severity == "risk" and v.evidence["waiting_ports"] == {}
    assert not STP.check(stp_snap(tap_state=3, fd=200), opts(STP))
    assert STP.check(stp_snap(tap_state=3, fd=200), opts(STP, max_forward_delay=1.0))


def test_stp_tune_refuses_zero_or_several_uplinks():
    for n in (0, 2):
        snap = stp_snap(uplinks=n)
        [v] = STP.check(snap, opts(STP))
        plan, why = HEALERS["stp_tune"].plan(v, snap, opts(STP))
        assert plan is None and f"{n} non-tap ports" in why


def test_lower_delay_plan_and_its_limits():
    snap = stp_snap()
    [v] = STP.check(snap, opts(STP))
    plan, _ = HEALERS["stp_tune"].plan(v, snap, opts(STP, remedy="lower-delay"))
    assert [s.args.get("forward_delay") for s in plan.steps] == [200] and plan.steps[0].undo.args["forward_delay"] == 1500
    plan, why = HEALERS["stp_tune"].plan(v, snap, opts(STP, remedy="lower-delay", max_forward_delay=1.0))
    assert plan is None and "at least 2 s" in why


# --- bridge_mac -------------------------------------------------------------------------------------------
def mac_snap(br_mac, addr_type=1, uplinks=("52:54:00:aa:00:01",)):
    links = [bridge("br0", 2, mac=br_mac), tap("vnet0", 10, master=2, mac="02:00:00:00:00:11")]
    links += [uplink(f"eno{i}", 3 + i, master=2, kind=None, mac=m) for i, m in enumerate(uplinks)]
    snap = snapshot(links=links, nics=[nic("vm1", MAC1, "br0", "vnet0")])
    snap.bridge_addr = {"br0": addr_type}
    return snap


def test_bridge_mac_drift_kinds():
    [v] = MACINV.check(mac_snap("02:00:00:00:00:11"), {})
    assert v.evidence["tap"] == "vnet0" and v.evidence["uplink"] == "eno0"
    assert not MACINV.check(mac_snap("02:00:00:00:00:11", addr_type=3), {}), "a set address is fixed"
    assert not MACINV.check(mac_snap("52:54:00:aa:00:01"), {})
    [v] = MACINV.check(mac_snap("52:54:00:00:00:99"), {})  # neither a tap's nor the uplink's
    assert v.evidence["tap"] is None and "not its uplink eno0's" in v.message
    snap = mac_snap("52:54:00:00:00:99")
    snap.bridge_addr = None  # not observed (a pass narrowed to a VM)
    assert not MACINV.check(snap, {})


def test_bridge_mac_set_needs_exactly_one_uplink():
    snap = mac_snap("02:00:00:00:00:11", uplinks=("52:54:00:aa:00:01", "52:54:00:aa:00:02"))
    [v] = MACINV.check(snap, {})
    plan, why = HEALERS["bridge_mac_set"].plan(v, snap, {})
    assert plan is None and "2 uplink ports" in why
    snap = mac_snap("02:00:00:00:00:11")
    [v] = MACINV.check(snap, {})
    plan, _ = HEALERS["bridge_mac_set"].plan(v, snap, {})
    assert plan.steps[0].args == {"bridge": "br0", "bridge_index": 2, "mac": "52:54:00:aa:00:01"}
    assert plan.steps[0].undo.args["mac"] == "02:00:00:00:00:11"


# --- bridge_uplink ------------------------------------------------------------------------------------------
def test_no_uplink_needs_a_full_observation_and_skips_libvirt_networks():
    links = [bridge("br0", 2), tap("vnet0", 10, master=2), link("enp3s0", 5, kind=None)]
    snap = snapshot(links=links, nics=[nic("vm1", MAC1, "br0", "vnet0")])
    [v] = UPL.check(snap, opts(UPL))
    assert v.kind == "no_uplink" and v.evidence["candidates"][0]["name"] == "enp3s0"
    assert "no_uplink" in UPL.HOST_WIDE_KINDS
    snap.links_complete = False
    assert not UPL.check(snap, opts(UPL))
    snap = snapshot(links=links, nics=[nic("vm1", MAC1, "br0", "vnet0", type="network", network="default")],
                    networks=[network("default", "br0")])
    assert not UPL.check(snap, opts(UPL)), "a NAT network's bridge has no uplink by design"


# --- conntrack_capacity / conntrack_raise ---------------------------------------------------------------------
def ct_snap(count, ctmax=262144, buckets=262144, writable=True, events=()):
    snap = snapshot()
    snap.conntrack = {"count": count, "max": ctmax, "buckets": buckets, "max_writable": writable,
                      "buckets_writable": writable}
    snap.kernel_events = list(events)
    return snap


def test_conntrack_raise_doubles_within_the_memory_bound():
    snap = ct_snap(250000)
    [v] = CT.check(snap, opts(CT))
    assert v.kind == "table_near_full" and v.severity == "risk"
    plan, _ = HEALERS["conntrack_raise"].plan(v, snap, opts(CT))
    assert [(s.args["key"], s.args["value"]) for s in plan.steps] == [
        ("net/netfilter/nf_conntrack_max", "524288"), ("net/netfilter/nf_conntrack_buckets", "524288")]
    assert plan.steps[0].undo.args["value"] == "262144"
    # a bound of 100 MiB holds 319,680 entries: raised to the bound, not doubled
    plan, _ = HEALERS["conntrack_raise"].plan(v, snap, opts(CT, max_memory_mb=100))
    assert plan.steps[0].args["value"] == str(100 * 2 ** 20 // 328)
    plan, why = HEALERS["conntrack_raise"].plan(v, snap, opts(CT, max_memory_mb=64))
    assert plan is None and "memory bound" in why


def test_conntrack_drops_in_the_kernel_log_are_broken_but_healed_only_under_pressure():
    drop = KernelEvent("conntrack_full", None, "nf_conntrack: nf_conntrack: table full, dropping packet", 1.0)
    [v] = CT.check(ct_snap(1000, events=[drop]), opts(CT))
    assert v.kind == "table_full" and v.severity == "broken"
    plan, why = HEALERS["conntrack_raise"].plan(v, ct_snap(1000, events=[drop]), opts(CT))
    assert plan is None and "room now" in why  # the drops are past: no doubling again and again
    plan, _ = HEALERS["conntrack_raise"].plan(v, ct_snap(262000, events=[drop]), opts(CT))
    assert plan is not None
    plan, why = HEALERS["conntrack_raise"].plan(v, ct_snap(262000, writable=False), opts(CT))
    assert plan is None and "read-only" in why
    assert not CT.check(ct_snap(1000), opts(CT))


# --- kernel_log --------------------------------------------------------------------------------------------
def test_kernel_log_groups_by_device_and_finds_the_bridge():
    snap = snapshot(links=[bridge("br0", 2), uplink("eno1", 3, master=2, kind=None)])
    snap.kernel_events = [KernelEvent("nic_hang", "eno1", "eno1: Detected Hardware Unit Hang:", 1.0),
                          KernelEvent("nic_reset", "eno1", "eno1: Reset adapter unexpectedly", 2.0),
                          KernelEvent("tx_timeout", "eno2", "NETDEV WATCHDOG: eno2 (igb): transmit queue 0 timed out",
                                      3.0)]
    found = {(v.kind, v.subject.port): v for v in KLOG.check(snap, {})}
    assert set(found) == {("nic_hang", "eno1"), ("nic_hang", "eno2")}
    assert found[("nic_hang", "eno1")].subject.bridge == "br0"
    assert found[("nic_hang", "eno1")].evidence["kinds"] == ["nic_hang", "nic_reset"]
    assert found[("nic_hang", "eno2")].subject.bridge is None
    assert KLOG.remedy(found[("nic_hang", "eno1")], {}) is None, "never applied"


def test_own_address_counts_only_for_that_port_of_that_bridge_here():
    line = "br0: received packet on uplink0 with own address as source address (addr:02:00:00:00:00:02, vlan:0)"
    snap = snapshot(links=[bridge("br0", 2), uplink("uplink0", 3, master=2, kind="veth")])
    snap.kernel_events = [KernelEvent("own_address", "uplink0", line, 1.0)]
    assert not KLOG.check(snap, {"own_address": "ignore"}), "off by default"
    [v] = KLOG.check(snap, {"own_address": "report"})
    assert v.kind == "own_address" and v.subject.bridge == "br0" and v.severity == "risk"
    # the kernel log is the host's: the same names in another namespace (another bridge) say nothing here
    snap = snapshot(links=[bridge("br1", 2), uplink("uplink0", 3, master=2, kind="veth")])
    snap.kernel_events = [KernelEvent("own_address", "uplink0", line, 1.0)]
    assert not KLOG.check(snap, {"own_address": "report"})


def test_a_masquerade_rule_nothing_jumps_to_does_not_count():
    """`iptables -F` keeps libvirt's chains; a reload re-adds their rules but not the jumps to them."""
    from netmedic import hostfacts

    text = ("-P POSTROUTING ACCEPT\n-N LIBVIRT_PRT\n"
            "-A LIBVIRT_PRT -s 203.0.113.0/24 ! -d 203.0.113.0/24 -j MASQUERADE\n")
    assert hostfacts.parse_iptables_nat("nft", text) == []
    rules = hostfacts.parse_iptables_nat("nft", text + "-A POSTROUTING -j LIBVIRT_PRT\n")
    assert [r.source for r in rules] == ["203.0.113.0/24"]


def test_bridge_mac_leaves_libvirt_network_bridges_alone():
    links = [bridge("virbr1", 2, mac="fe:54:00:00:00:0a"), tap("vnet0", 10, master=2, mac="fe:54:00:00:00:0a")]
    snap = snapshot(links=links, nics=[nic("vm1", MAC1, "virbr1", "vnet0", type="network", network="nat1")],
                    networks=[network("nat1", "virbr1")])
    snap.bridge_addr = {"virbr1": 1}
    assert not MACINV.check(snap, {}), "libvirt sets its networks' bridge addresses itself"
