"""Each invariant on captured snapshots, and each healer's plan for what it finds. Pure functions over
plain data: no root, no kernel."""
from __future__ import annotations

import pytest
from snapshots import (
    BLOCKING,
    DISABLED,
    FORWARDING,
    LEARNING,
    LISTENING,
    MAC1,
    MAC2,
    bridge,
    chain,
    fdb,
    link,
    network,
    nic,
    pinned,
    seed_links,
    snapshot,
    sysctls,
    tap,
)

from netmedic import nl
from netmedic.engine import precedence
from netmedic.healers import HEALERS
from netmedic.policies import INVARIANTS, healer_for

# The plugins under test, by name (each module's PLUGIN).
fdb_pin, ip_forward, netfilter_accept, port_state, quarantine, reattach = (
    HEALERS[n] for n in ("fdb_pin", "ip_forward", "netfilter_accept", "port_state", "quarantine", "reattach"))
bridge_netfilter, fdb_ownership, ip_forwarding, port_forwarding, unique_mac = (
    INVARIANTS[n] for n in ("bridge_netfilter", "fdb_ownership", "ip_forwarding", "port_forwarding", "unique_mac"))


def defaults(mod) -> dict:
    return {k: o.default for k, o in mod.OPTIONS.items()}


def check(mod, snap, **options) -> list:
    return mod.check(snap, {**defaults(mod), **options})


def only(violations):
    assert len(violations) == 1, [v.as_dict() for v in violations]
    return violations[0]


def plan_of(healer, violation, snap, options=None):
    plan, why = healer.plan(violation, snap, options or {})
    assert plan is not None, why
    assert plan.healer == healer.NAME and plan.violation is violation
    return plan


def ops(plan) -> list:
    return [(s.op, s.args) for s in plan.steps]


def undos(plan) -> list:
    return [(s.undo.op, s.undo.args) for s in plan.steps]


VM1 = nic("vm1", MAC1, "br0", "vnet0")


def test_registry_order_and_every_remedy_exists():
    # the order is the order a reconcile heals in: attach a tap before pinning its MAC
    core = ["port_forwarding", "unique_mac", "fdb_ownership", "ip_forwarding", "bridge_netfilter"]
    assert [n for n in INVARIANTS if n in core] == core
    for mod in INVARIANTS.values():
        for kind, remedy in mod.REMEDIES.items():
            names = remedy.values() if isinstance(remedy, dict) else [remedy]
            for name in names:
                assert name is None or mod.NAME in HEALERS[name].HANDLES, (mod.NAME, kind, name)


# --- fdb_ownership ------------------------------------------------------------------------------------
def test_fdb_poisoned_on_the_uplink():
    snap = snapshot(seed_links(), [VM1], fdb={("br0", MAC1): fdb(MAC1, port_index=3, bridge_index=2)})
    v = only(check(fdb_ownership, snap))
    assert (v.invariant, v.kind, v.severity) == ("fdb_ownership", "poisoned", "broken")
    assert v.subject.as_dict() == {"bridge": "br0", "port": "vnet0", "domain": "vm1", "mac": MAC1}
    assert v.evidence == {"expected_port": "vnet0",
                          "fdb_entry": {"port": "bond0", "static": False, "sticky": False, "local": False},
                          "mechanism": "pin-sticky"}
    assert "bond0" in v.message and "vnet0" in v.message
    assert v.key == f"fdb_ownership:poisoned:bridge=br0 port=vnet0 domain=vm1 mac={MAC1}"


def test_fdb_poisoned_on_an_unknown_ifindex_names_the_index():
    snap = snapshot(seed_links(), [VM1], fdb={("br0", MAC1): fdb(MAC1, port_index=99, bridge_index=2)})
    v = only(check(fdb_ownership, snap))
    assert v.kind == "poisoned" and v.evidence["fdb_entry"]["port"] == 99 and "ifindex 99" in v.message


def test_fdb_learned_on_own_tap_is_an_unpinned_risk():
    snap = snapshot(seed_links(), [VM1], fdb={("br0", MAC1): fdb(MAC1, port_index=10, bridge_index=2)})
    v = only(check(fdb_ownership, snap))
    assert (v.kind, v.severity) == ("unpinned", "risk")
    assert v.evidence["fdb_entry"] == {"port": "vnet0", "static": False, "sticky": False, "local": False}
    assert "learned but not pinned" in v.message


def test_fdb_absent_is_unpinned():
    snap = snapshot(seed_links(), [VM1], fdb={("br0", MAC1): None})
    v = only(check(fdb_ownership, snap))
    assert v.kind == "unpinned" and v.evidence["fdb_entry"] is None and "absent" in v.message


def test_fdb_static_but_not_sticky_is_still_unpinned():
    # learning moves a plain static entry too: only static+sticky holds
    snap = snapshot(seed_links(), [VM1], fdb={("br0", MAC1): fdb(MAC1, 10, 2, static=True)})
    assert only(check(fdb_ownership, snap)).kind == "unpinned"


def test_fdb_sticky_static_on_tap_is_fine():
    snap = snapshot(seed_links(), [VM1], fdb={("br0", MAC1): pinned(MAC1, 10, 2)})
    assert check(fdb_ownership, snap) == []


def test_fdb_require_pin_false_reports_only_poisoning():
    learned = snapshot(seed_links(), [VM1], fdb={("br0", MAC1): fdb(MAC1, 10, 2)})
    absent = snapshot(seed_links(), [VM1], fdb={("br0", MAC1): None})
    poisoned = snapshot(seed_links(), [VM1], fdb={("br0", MAC1): fdb(MAC1, 3, 2)})
    assert check(fdb_ownership, learned, require_pin=False) == []
    assert check(fdb_ownership, absent, require_pin=False) == []
    assert only(check(fdb_ownership, poisoned, require_pin=False)).kind == "poisoned"


def test_fdb_detached_or_missing_tap_is_left_to_port_forwarding():
    detached = snapshot(seed_links(tap_master=None), [VM1], fdb={("br0", MAC1): fdb(MAC1, 3, 2)})
    missing = snapshot(seed_links()[:3], [VM1], fdb={("br0", MAC1): fdb(MAC1, 3, 2)})
    no_bridge = snapshot([tap("vnet0", 10)], [VM1], fdb={})
    assert check(fdb_ownership, detached) == check(fdb_ownership, missing) == check(fdb_ownership, no_bridge) == []


def test_fdb_duplicate_macs_only_the_lowest_ifindex_tap_is_evaluated():
    clone = nic("vm2-clone", MAC1, "br0", "vnet1")
    links = seed_links() + [tap("vnet1", 11, master=2)]
    # The entry on vnet1 (the newer clone's tap) is poisoning from vnet0's point of view ...
    snap = snapshot(links, [clone, VM1], fdb={("br0", MAC1): fdb(MAC1, 11, 2)})
    v = only(check(fdb_ownership, snap))
    assert (v.kind, v.subject.port, v.subject.domain) == ("poisoned", "vnet0", "vm1")
    # ... and an entry pinned on vnet0 is fine: the clone is unique_mac's business, not fdb_ownership's.
    snap = snapshot(links, [clone, VM1], fdb={("br0", MAC1): pinned(MAC1, 10, 2)})
    assert check(fdb_ownership, snap) == []


def test_fdb_unobserved_bridge_is_not_checked():
    snap = snapshot(seed_links(), [VM1], fdb={("br0", MAC1): fdb(MAC1, 3, 2)}, bridges_observed=["br9"])
    assert check(fdb_ownership, snap) == []


# fdb_pin's plans
def test_fdb_pin_plans_a_sticky_pin_with_fdb_delete_as_undo():
    snap = snapshot(seed_links(), [VM1], fdb={("br0", MAC1): fdb(MAC1, 3, 2)})
    v = only(check(fdb_ownership, snap))
    assert healer_for(v, defaults(fdb_ownership)) == "fdb_pin"
    plan = plan_of(fdb_pin, v, snap)
    args = {"port": "vnet0", "port_index": 10, "mac": MAC1}
    assert ops(plan) == [("fdb_pin", args)]
    assert undos(plan) == [("fdb_delete", args)]
    assert plan.records == ({"kind": "fdb_pin", "key": f"fdb_pin:br0:{MAC1}", "bridge": "br0", "port": "vnet0",
                             "mac": MAC1, "domain": "vm1"},)
    assert plan.before == {"fdb_entry": {"port": "bond0", "static": False, "sticky": False, "local": False}}


def test_fdb_pin_for_an_unpinned_mac():
    snap = snapshot(seed_links(), [VM1], fdb={("br0", MAC1): None})
    plan = plan_of(fdb_pin, only(check(fdb_ownership, snap)), snap)
    assert [s.op for s in plan.steps] == ["fdb_pin"]


def test_fdb_pin_refuses_to_override_a_static_entry_it_did_not_make():
    snap = snapshot(seed_links(), [VM1], fdb={("br0", MAC1): fdb(MAC1, 3, 2, static=True)})
    v = only(check(fdb_ownership, snap))
    assert v.kind == "poisoned"
    plan, why = fdb_pin.plan(v, snap, {})
    assert plan is None
    assert why == f"a static entry not made by netmedic holds {MAC1} on bond0: not overriding it"


def test_fdb_pin_moves_its_own_static_pin():
    # netmedic pinned it (recorded) on a port that is not the tap any more: it may move its own pin
    record = {"kind": "fdb_pin", "key": f"fdb_pin:br0:{MAC1}", "bridge": "br0", "port": "vnet0", "mac": MAC1}
    snap = snapshot(seed_links(), [VM1], fdb={("br0", MAC1): pinned(MAC1, 3, 2)},
                    records={record["key"]: record})
    plan = plan_of(fdb_pin, only(check(fdb_ownership, snap)), snap)
    assert ops(plan) == [("fdb_pin", {"port": "vnet0", "port_index": 10, "mac": MAC1})]


def test_fdb_pin_refuses_a_local_address():
    snap = snapshot(seed_links(), [VM1], fdb={("br0", MAC1): fdb(MAC1, 3, 2, local=True)})
    plan, why = fdb_pin.plan(only(check(fdb_ownership, snap)), snap, {})
    assert plan is None and "local (permanent) address" in why


def test_fdb_pin_when_the_tap_vanished():
    snap = snapshot(seed_links(), [VM1], fdb={("br0", MAC1): fdb(MAC1, 3, 2)})
    v = only(check(fdb_ownership, snap))
    gone = snapshot(seed_links()[:3], [VM1], fdb=snap.fdb)
    assert fdb_pin.plan(v, gone, {}) == (None, "tap vnet0 no longer exists")


def test_fdb_pin_after_reports_the_entry():
    v = only(check(fdb_ownership, snapshot(seed_links(), [VM1], fdb={("br0", MAC1): fdb(MAC1, 3, 2)})))
    healed = snapshot(seed_links(), [VM1], fdb={("br0", MAC1): pinned(MAC1, 10, 2)})
    assert fdb_pin.after(healed, v) == {"fdb_entry": {"port": "vnet0", "static": True, "sticky": True}}
    assert fdb_pin.after(snapshot(seed_links(), [VM1]), v) == {"fdb_entry": None}


# --- unique_mac -------------------------------------------------------------------------------------------
def test_two_vms_same_mac_one_violation_for_the_newer_tap():
    links = [bridge("br0", 2), tap("vnet7", 17, master=2), tap("vnet3", 13, master=2)]
    older, newer = nic("original", MAC1, "br0", "vnet3"), nic("clone", MAC1, "br0", "vnet7")
    v = only(check(unique_mac, snapshot(links, [newer, older])))
    assert (v.kind, v.severity) == ("duplicate_vm_mac", "broken")
    assert v.subject.as_dict() == {"bridge": "br0", "port": "vnet7", "domain": "clone", "mac": MAC1}
    assert v.evidence == {"mac": MAC1, "first": {"domain": "original", "tap": "vnet3", "bridge": "br0"},
                          "duplicate": {"domain": "clone", "tap": "vnet7", "bridge": "br0"}}


def test_three_copies_of_a_mac_two_violations():
    links = [bridge("br0", 2), tap("vnet1", 11, master=2), tap("vnet2", 12, master=2), tap("vnet3", 13, master=2)]
    nics = [nic(f"vm{i}", MAC1, "br0", f"vnet{i}") for i in (3, 1, 2)]
    vs = check(unique_mac, snapshot(links, nics))
    assert sorted(v.subject.port for v in vs) == ["vnet2", "vnet3"]
    assert {v.evidence["first"]["tap"] for v in vs} == {"vnet1"}


def test_duplicate_with_a_missing_tap_counts_that_one_as_newer():
    links = [bridge("br0", 2), tap("vnet5", 15, master=2)]
    v = only(check(unique_mac, snapshot(links, [nic("a", MAC1, "br0", "vnet9"), nic("b", MAC1, "br0", "vnet5")])))
    assert v.subject.domain == "a"


def test_unique_macs_are_fine():
    links = [bridge("br0", 2), tap("vnet0", 10, master=2), tap("vnet1", 11, master=2)]
    assert check(unique_mac, snapshot(links, [VM1, nic("vm2", MAC2, "br0", "vnet1")])) == []


def test_vm_mac_equal_to_a_host_interface_mac():
    links = [bridge("br0", 2), tap("vnet0", 10, master=2), link("eth1", 4, mac=MAC1)]
    v = only(check(unique_mac, snapshot(links, [VM1])))
    assert v.kind == "host_mac_clash"
    assert v.evidence == {"mac": MAC1, "host_interface": "eth1", "host_interfaces": ["eth1"]}
    assert healer_for(v, defaults(unique_mac)) is None  # report only


def test_vm_mac_on_a_bond_and_its_slave_is_one_violation():
    # a bond and its slaves share one MAC: one problem, one violation (the key must be unique)
    links = [bridge("br0", 2), tap("vnet0", 10, master=2), link("eth2", 7, master=5, mac=MAC1),
             link("bond1", 5, kind="bond", mac=MAC1)]
    v = only(check(unique_mac, snapshot(links, [VM1])))
    assert v.evidence == {"mac": MAC1, "host_interface": "bond1", "host_interfaces": ["bond1", "eth2"]}
    assert "bond1, eth2" in v.message


def test_vm_tap_with_the_vm_mac_is_not_a_host_clash():
    links = [bridge("br0", 2), tap("vnet0", 10, master=2, mac=MAC1)]
    assert check(unique_mac, snapshot(links, [VM1])) == []


def test_quarantine_plans_disabling_the_newer_port():
    links = [bridge("br0", 2), tap("vnet3", 13, master=2), tap("vnet7", 17, master=2)]
    snap = snapshot(links, [nic("original", MAC1, "br0", "vnet3"), nic("clone", MAC1, "br0", "vnet7")])
    v = only(check(unique_mac, snap))
    assert healer_for(v, defaults(unique_mac)) == "quarantine"
    plan = plan_of(quarantine, v, snap)
    ids = {"port": "vnet7", "port_index": 17}
    # listening, not disabled: the kernel re-enables a disabled port on a carrier event
    assert ops(plan) == [("set_port", {**ids, "state": LISTENING})]
    assert undos(plan) == [("set_port", {**ids, "state": FORWARDING})]
    (record,) = plan.records
    assert record["kind"] == "quarantine" and record["key"] == "quarantine:vnet7" and record["prior_state"] == 3
    assert "original" in plan.summary


def test_quarantine_refuses_with_stp_on_and_when_already_quarantined():
    links = [bridge("br0", 2, stp=1), tap("vnet3", 13, master=2), tap("vnet7", 17, master=2)]
    nics = [nic("original", MAC1, "br0", "vnet3"), nic("clone", MAC1, "br0", "vnet7")]
    snap = snapshot(links, nics)
    plan, why = quarantine.plan(only(check(unique_mac, snap)), snap, {})
    assert plan is None and "STP" in why
    links = [bridge("br0", 2), tap("vnet3", 13, master=2), tap("vnet7", 17, master=2, state=LISTENING)]
    snap = snapshot(links, nics, records={"quarantine:vnet7": {"kind": "quarantine", "port": "vnet7"}})
    plan, why = quarantine.plan(only(check(unique_mac, snap)), snap, {})
    assert plan is None and "already quarantined" in why
    assert quarantine.verify(snap, only(check(unique_mac, snap)))


# --- port_forwarding ---------------------------------------------------------------------------------------
def pf(links, nics=(VM1,), records=None, **options) -> list:
    return check(port_forwarding, snapshot(links, list(nics), records=records), **options)


def test_healthy_port_is_fine():
    assert pf(seed_links()) == []


def test_detached_tap():
    v = only(pf(seed_links(tap_master=None)))
    assert (v.kind, v.severity) == ("detached", "broken")
    assert v.evidence == {"tap": "vnet0", "master": None, "expected_master": "br0"}


def test_tap_on_the_wrong_bridge():
    links = seed_links(tap_master=5) + [bridge("br1", 5)]
    v = only(pf(links))
    assert v.kind == "wrong_bridge" and v.evidence == {"master": "br1", "expected_master": "br0"}
    assert healer_for(v, {}) is None


def test_bridge_missing():
    links = [tap("vnet0", 10)]
    v = only(pf(links))
    assert v.kind == "bridge_missing" and v.evidence == {"bridge": "br0"}


def test_bridge_name_that_is_not_a_bridge_counts_as_missing():
    links = [link("br0", 2, kind="veth"), tap("vnet0", 10, master=2)]
    assert only(pf(links)).kind == "bridge_missing"


def test_tap_missing():
    v = only(pf([bridge("br0", 2)]))
    assert (v.kind, v.severity) == ("tap_missing", "risk")


def test_nic_without_a_target_dev_is_skipped():
    assert pf([bridge("br0", 2)], [nic("vm1", MAC1, "br0", None)]) == []


def test_link_down():
    v = only(pf(seed_links(up=False)))
    assert v.kind == "link_down"
    assert v.evidence == {"tap": "vnet0", "up": False, "domain_link_state": "up"}


def test_link_down_is_fine_when_the_domain_wants_it_down():
    assert pf(seed_links(up=False), [nic("vm1", MAC1, "br0", "vnet0", link_up=False)]) == []


@pytest.mark.parametrize("state", [BLOCKING, LISTENING, LEARNING, DISABLED])
def test_not_forwarding_with_stp_off(state):
    v = only(pf(seed_links(state=state)))
    assert (v.kind, v.severity) == ("not_forwarding", "broken")
    assert v.evidence == {"port_state": nl.PORT_STATE_NAMES[state], "bridge_stp": 0}


@pytest.mark.parametrize("state", [BLOCKING, DISABLED])
def test_stp_blocking_with_stp_on(state):
    links = [bridge("br0", 2, stp=1), tap("vnet0", 10, master=2, state=state)]
    v = only(pf(links))
    assert (v.kind, v.severity) == ("stp_blocking", "risk")
    assert v.evidence == {"port_state": nl.PORT_STATE_NAMES[state], "bridge_stp": 1}
    assert healer_for(v, {}) is None  # STP's decision


@pytest.mark.parametrize("state", [LISTENING, LEARNING])
def test_stp_transitional_states_are_not_violations(state):
    assert pf([bridge("br0", 2, stp=1), tap("vnet0", 10, master=2, state=state)]) == []


@pytest.mark.parametrize("options,learning,flood,want", [
    ({"learning": "off"}, True, True, {"learning": False}),
    ({"learning": "on"}, False, True, {"learning": True}),
    ({"flood": "off"}, True, True, {"flood": False}),
    ({"learning": "off", "flood": "off"}, True, True, {"learning": False, "flood": False}),
])
def test_port_flags_per_options(options, learning, flood, want):
    v = only(pf(seed_links(learning=learning, flood=flood), **options))
    assert (v.kind, v.severity) == ("port_flags", "risk")
    assert v.evidence == {"want": want, "learning": learning, "flood": flood}


@pytest.mark.parametrize("options,learning,flood", [
    ({}, False, False),  # 'any': not checked
    ({"learning": "off"}, False, True),
    ({"learning": "on", "flood": "on"}, True, True),
])
def test_port_flags_as_wanted_are_fine(options, learning, flood):
    assert pf(seed_links(learning=learning, flood=flood), **options) == []


def test_a_quarantined_port_is_held_by_the_engine_not_hidden_by_the_invariant():
    """port_forwarding is pure (it knows no quarantine); the engine's precedence rule keeps port_state off
    a port whose state netmedic's quarantine holds, and only that."""
    links = seed_links(state=LISTENING)
    record = {"kind": "quarantine", "key": "quarantine:vnet0", "port": "vnet0", "bridge": "br0", "mac": MAC1}
    assert only(pf(links)).kind == "not_forwarding"
    snap = snapshot(links, [VM1], records={record["key"]: record})
    v = only(check(port_forwarding, snap))
    plan = plan_of(port_state, v, snap)
    assert "held by netmedic's quarantine" in precedence(plan, snap)
    # a pin record for the same port does not hold its state
    pin = {"kind": "fdb_pin", "key": f"fdb_pin:br0:{MAC1}", "port": "vnet0", "bridge": "br0", "mac": MAC1}
    snap = snapshot(links, [VM1], records={pin["key"]: pin})
    assert precedence(plan_of(port_state, only(check(port_forwarding, snap)), snap), snap) is None


def test_port_forwarding_checks_only_observed_bridges():
    snap = snapshot(seed_links(tap_master=None), [VM1], bridges_observed=["br1"])
    assert check(port_forwarding, snap) == []


# reattach / port_state plans
def test_reattach_plans_enslave_and_up_with_undo():
    snap = snapshot(seed_links(tap_master=None, up=False), [VM1])
    v = only(check(port_forwarding, snap))
    assert v.kind == "detached" and healer_for(v, {}) == "reattach"
    plan = plan_of(reattach, v, snap)
    ids = {"port": "vnet0", "port_index": 10}
    assert ops(plan) == [("set_master", {**ids, "bridge": "br0", "bridge_index": 2}), ("set_up", {**ids, "up": True})]
    assert undos(plan) == [("set_master", {**ids, "bridge": None}), ("set_up", {**ids, "up": False})]
    assert plan.before == {"master": None, "up": False}


def test_reattach_of_an_up_tap_only_enslaves():
    snap = snapshot(seed_links(tap_master=None), [VM1])
    plan = plan_of(reattach, only(check(port_forwarding, snap)), snap)
    assert [s.op for s in plan.steps] == ["set_master"]


def test_reattach_brings_a_down_tap_up():
    snap = snapshot(seed_links(up=False), [VM1])
    v = only(check(port_forwarding, snap))
    plan = plan_of(reattach, v, snap)
    assert ops(plan) == [("set_up", {"port": "vnet0", "port_index": 10, "up": True})]
    assert undos(plan) == [("set_up", {"port": "vnet0", "port_index": 10, "up": False})]


def test_port_state_plans_forwarding_with_the_old_state_as_undo():
    snap = snapshot(seed_links(state=BLOCKING), [VM1])
    v = only(check(port_forwarding, snap))
    assert healer_for(v, {}) == "port_state"
    plan = plan_of(port_state, v, snap)
    assert ops(plan) == [("set_port", {"port": "vnet0", "port_index": 10, "state": FORWARDING})]
    assert undos(plan) == [("set_port", {"port": "vnet0", "port_index": 10, "state": BLOCKING})]
    assert plan.before == {"port_state": "blocking"}


def test_port_state_never_overrides_stp():
    v = only(check(port_forwarding, snapshot(seed_links(state=BLOCKING), [VM1])))
    stp_on = snapshot([bridge("br0", 2, stp=2)] + seed_links(state=BLOCKING)[1:], [VM1])
    plan, why = port_state.plan(v, stp_on, {})
    assert plan is None and "STP" in why


def test_port_state_plans_flags():
    snap = snapshot(seed_links(learning=True, flood=True), [VM1])
    v = only(check(port_forwarding, snap, learning="off", flood="off"))
    plan = plan_of(port_state, v, snap)
    ids = {"port": "vnet0", "port_index": 10}
    assert ops(plan) == [("set_port", {**ids, "learning": False, "flood": False})]
    assert undos(plan) == [("set_port", {**ids, "learning": True, "flood": True})]


# --- ip_forwarding ----------------------------------------------------------------------------------------
NAT = network("default", "virbr0", "nat", forward_dev="eth0")
VIRBR = [bridge("virbr0", 20), link("eth0", 4)]


def ipf(sysctl, networks=(NAT,), links=VIRBR) -> list:
    return check(ip_forwarding, snapshot(links, networks=networks, sysctl=sysctl))


def test_ip_forwarding_all_on_is_fine():
    assert ipf(sysctls(ip_forward="1", virbr0="1", eth0="1")) == []


def test_nat_network_with_ip_forward_off():
    v = only(ipf(sysctls(ip_forward="0", virbr0="1", eth0="1")))
    assert (v.kind, v.severity) == ("forwarding_off", "broken")
    assert v.subject.as_dict() == {"bridge": "virbr0", "network": "default"}
    assert v.evidence == {"sysctls": {"net/ipv4/ip_forward": "0"}, "forward_mode": "nat", "forward_dev": "eth0"}
    assert "net.ipv4.ip_forward" in v.message


def test_per_interface_forwarding_off():
    v = only(ipf(sysctls(ip_forward="1", virbr0="0", eth0="0")))
    assert v.evidence["sysctls"] == {"net/ipv4/conf/virbr0/forwarding": "0",
                                     "net/ipv4/conf/eth0/forwarding": "0"}


def test_routed_network_is_checked_too():
    routed = network("lab", "virbr0", "route")
    assert only(ipf(sysctls(ip_forward="0"), networks=[routed])).subject.network == "lab"


@pytest.mark.parametrize("net", [network("isolated", "virbr0", None), network("open", "virbr0", "open"),
                                 network("host-bridge", "br0", "bridge"), network("nobridge", None, "nat"),
                                 network("gone", "virbr9", "nat")],
                         ids=["isolated", "open", "bridge", "no-bridge", "bridge-missing"])
def test_networks_that_need_no_forwarding_are_ignored(net):
    assert ipf(sysctls(ip_forward="0", virbr0="0"), networks=[net], links=VIRBR + [bridge("br0", 2)]) == []


def test_unknown_sysctl_is_not_a_violation():
    # None = not readable (e.g. another netns): only an observed '0' is evidence
    assert ipf({"net/ipv4/ip_forward": None}) == []


def test_ip_forward_plan_sets_the_global_switch_last_so_a_rollback_restores_each_value():
    """Writing ip_forward sets every interface's value: applied last, its undo runs first on a rollback
    (engine undoes in reverse) and the per-interface undos then restore their own prior values."""
    snap = snapshot(VIRBR, networks=[NAT], sysctl=sysctls(ip_forward="0", virbr0="0", eth0="1"))
    v = only(check(ip_forwarding, snap))
    assert healer_for(v, {}) == "ip_forward"
    plan = plan_of(ip_forward, v, snap)
    assert ops(plan) == [("sysctl", {"key": "net/ipv4/conf/virbr0/forwarding", "value": "1"}),
                         ("sysctl", {"key": "net/ipv4/ip_forward", "value": "1"})]
    assert list(reversed(undos(plan))) == [("sysctl", {"key": "net/ipv4/ip_forward", "value": "0"}),
                                           ("sysctl", {"key": "net/ipv4/conf/virbr0/forwarding", "value": "0"})]
    healed = snapshot(VIRBR, networks=[NAT], sysctl=sysctls(ip_forward="1", virbr0="1", eth0="1"))
    assert ip_forward.after(healed, v) == {"net/ipv4/ip_forward": "1", "net/ipv4/conf/virbr0/forwarding": "1"}


# --- bridge_netfilter ---------------------------------------------------------------------------------------
BR_LINKS = seed_links()


def bnf(chains, bridge_nf="1", links=BR_LINKS, nics=(VM1,)) -> list:
    return check(bridge_netfilter, snapshot(links, list(nics), sysctl=sysctls(bridge_nf=bridge_nf), chains=chains))


def test_bridge_nf_sysctl_with_forward_drop_is_a_violation():
    v = only(bnf([chain("DROP", ["-A FORWARD -j DOCKER-USER"])]))
    assert (v.kind, v.severity, v.subject.as_dict()) == ("bridged_traffic_dropped", "broken", {"bridge": "br0"})
    assert v.evidence == {"backend": "nft", "forward_policy": "DROP",
                          "bridge_nf_call_iptables": {"sysctl": True, "bridge": False}, "forward_rules": 1}


def test_per_bridge_nf_call_iptables_with_sysctl_off_is_a_violation():
    links = [bridge("br0", 2, nf_call_iptables=True)] + BR_LINKS[1:]
    v = only(bnf([chain("DROP")], bridge_nf="0", links=links))
    assert v.evidence["bridge_nf_call_iptables"] == {"sysctl": False, "bridge": True}


def test_no_bridge_netfilter_no_violation():
    assert bnf([chain("DROP")], bridge_nf="0") == []
    assert bnf([chain("DROP")], bridge_nf=None) == []  # br_netfilter not loaded


@pytest.mark.parametrize("rule", ["-A FORWARD -i br0 -o br0 -j ACCEPT",
                                  "-A FORWARD -m physdev --physdev-is-bridged -j ACCEPT"])
def test_an_accept_rule_for_the_bridge_means_no_violation(rule):
    assert bnf([chain("DROP", ["-A FORWARD -j DOCKER-USER", rule])]) == []


@pytest.mark.parametrize("rule", ["-A FORWARD -i br1 -o br1 -j ACCEPT", "-A FORWARD -i br0 -o br0 -j DROP",
                                  "-A FORWARD -i br0 -j ACCEPT",
                                  "-A FORWARD -m physdev ! --physdev-is-bridged -j ACCEPT",
                                  "-A FORWARD -m physdev --physdev-is-bridged -j DROP",
                                  "-A FORWARD -o br0 -m physdev --physdev-is-bridged -j ACCEPT"])
def test_other_rules_do_not_count(rule):
    assert only(bnf([chain("DROP", [rule])])).kind == "bridged_traffic_dropped"


def test_policy_accept_means_no_violation():
    assert bnf([chain("ACCEPT")]) == []


def test_one_violation_per_dropping_backend():
    vs = bnf([chain("DROP", backend="nft"), chain("ACCEPT", backend="legacy")])
    assert [v.evidence["backend"] for v in vs] == ["nft"]
    vs = bnf([chain("DROP", backend="nft"), chain("DROP", backend="legacy")])
    assert sorted(v.evidence["backend"] for v in vs) == ["legacy", "nft"]


def test_bridges_without_vms_are_not_checked():
    assert bnf([chain("DROP")], nics=()) == []


def test_netfilter_accept_plans_an_insert_and_its_delete():
    snap = snapshot(BR_LINKS, [VM1], sysctl=sysctls(bridge_nf="1"), chains=[chain("DROP", backend="legacy")])
    v = only(check(bridge_netfilter, snap))
    assert healer_for(v, defaults(bridge_netfilter)) == "netfilter_accept"
    plan = plan_of(netfilter_accept, v, snap)
    rule = ["-i", "br0", "-o", "br0", "-j", "ACCEPT"]
    assert ops(plan) == [("iptables", {"backend": "legacy", "args": ["-I", "FORWARD", "1", *rule]})]
    assert undos(plan) == [("iptables", {"backend": "legacy", "args": ["-D", "FORWARD", *rule]})]
    assert plan.records == ({"kind": "iptables_rule", "key": "iptables_rule:legacy:br0", "backend": "legacy",
                             "bridge": "br0", "rule": rule},)
    # the rule it inserts is one the invariant accepts
    fixed = snapshot(BR_LINKS, [VM1], sysctl=sysctls(bridge_nf="1"),
                     chains=[chain("DROP", ["-A FORWARD " + " ".join(rule)], backend="legacy")])
    assert check(bridge_netfilter, fixed) == []


def test_every_healer_step_has_an_undo():
    snaps = [
        (fdb_pin, fdb_ownership, snapshot(seed_links(), [VM1], fdb={("br0", MAC1): None})),
        (reattach, port_forwarding, snapshot(seed_links(tap_master=None, up=False), [VM1])),
        (port_state, port_forwarding, snapshot(seed_links(state=BLOCKING), [VM1])),
        (ip_forward, ip_forwarding, snapshot(VIRBR, networks=[NAT], sysctl=sysctls(ip_forward="0", virbr0="0"))),
        (netfilter_accept, bridge_netfilter, snapshot(BR_LINKS, [VM1], sysctl=sysctls(bridge_nf="1"),
                                                      chains=[chain("DROP")])),
        (quarantine, unique_mac, snapshot([bridge("br0", 2), tap("vnet0", 10, master=2), tap("vnet1", 11, master=2)],
                                          [VM1, nic("clone", MAC1, "br0", "vnet1")])),
    ]
    for healer, inv, snap in snaps:
        plan = plan_of(healer, only(check(inv, snap)), snap)
        assert plan.steps
        for step in plan.steps:
            assert step.undo is not None and step.undo.undo is None, (healer.NAME, step)
            assert step.description and step.undo.description

