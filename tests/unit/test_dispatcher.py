"""The dispatcher: which events lead to a reconcile of which bridges, and how bursts are coalesced.
Driven by a fake clock and hand-made nl.Events: no root, no kernel."""
from __future__ import annotations

import pytest
from snapshots import MAC1, MAC2, MAC3, bridge, nic, tap, uplink

from netmedic.dispatcher import ALL, Dispatcher
from netmedic.nl import Event


class Clock:
    def __init__(self, now: float = 1024.0):  # times below are binary fractions: exact arithmetic
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def d(clock):
    """VMs on br0 (vnet0, vnet1) and br1 (vnet5); MAC3 is on both bridges (two NICs)."""
    disp = Dispatcher(clock=clock, debounce=0.25, max_delay=2.0)
    disp.set_inventory([nic("vm1", MAC1, "br0", "vnet0"), nic("vm2", MAC2, "br0", "vnet1"),
                        nic("vm3", MAC3, "br1", "vnet5"), nic("vm4", MAC3, "br0", None),
                        nic("vm5", "52:54:00:00:00:99", None, "vnet9")])
    disp.set_links({lk.name: lk for lk in [bridge("br0", 2), uplink("bond0", 3, master=2), bridge("br1", 4),
                                          bridge("docker0", 6), tap("vnet0", 10, master=2)]})
    return disp


def link_ev(index, name=None, master=None, action="new"):
    return Event("link", action, index, name=name, master=master)


def fdb_ev(mac, port=3, master=2, action="new"):
    return Event("fdb", action, port, master=master, mac=mac)


def taken(d):
    bridges, _reasons = d.take()
    return bridges


# --- which events matter -------------------------------------------------------------------------
def test_nothing_pending_at_start(d):
    assert not d.due() and d.wait_time() is None
    assert d.take() == ([], [])


def test_fdb_event_for_an_unknown_mac_is_ignored(d):
    d.netlink(fdb_ev("02:42:ac:11:00:02", master=6))
    d.netlink(fdb_ev("52:54:00:ff:ff:ff", action="del"))
    assert d.wait_time() is None and taken(d) == []


def test_fdb_event_for_a_vm_mac_requests_its_bridge(d):
    d.netlink(fdb_ev(MAC1, port=3))  # learned on the uplink: the founding case
    bridges, reasons = d.take()
    assert bridges == ["br0"]
    assert reasons == [f"fdb new {MAC1}"]


def test_fdb_event_for_a_mac_on_two_bridges_requests_both(d):
    d.netlink(fdb_ev(MAC3, action="del"))
    assert taken(d) == ["br0", "br1"]


def test_link_event_of_a_vm_tap(d):
    d.netlink(link_ev(10, "vnet0", master=None))  # detached from br0
    bridges, reasons = d.take()
    assert bridges == ["br0"] and reasons == ["link new vnet0"]


def test_link_event_of_a_new_tap_not_yet_indexed(d):
    d.netlink(link_ev(15, "vnet5", master=4))
    assert taken(d) == ["br1"]


def test_link_event_of_a_vm_bridge(d):
    d.netlink(link_ev(2, "br0", action="del"))
    assert taken(d) == ["br0"]
    d.netlink(link_ev(40, "br0"))  # re-created with another ifindex
    assert taken(d) == ["br0"]


def test_link_event_of_a_port_whose_master_is_a_vm_bridge(d):
    d.netlink(link_ev(3, "bond0", master=2))  # the uplink flapped
    assert taken(d) == ["br0"]


def test_master_learned_from_a_link_event(d):
    d.netlink(link_ev(40, "br0"))  # br0 re-created: index 40
    d.take()
    d.netlink(link_ev(41, "eth7", master=40))
    assert taken(d) == ["br0"]


def test_link_event_of_an_unrelated_interface_is_ignored(d):
    d.netlink(link_ev(6, "docker0"))
    d.netlink(link_ev(7, "veth1234", master=6))  # a port of a bridge without VMs
    d.netlink(link_ev(8, "eth1"))
    d.netlink(link_ev(9, "vnet9"))  # a VM tap with no bridge (not bridged): nothing to reconcile
    assert d.wait_time() is None and taken(d) == []


def test_renamed_link_is_known_by_its_old_name(d):
    d.netlink(link_ev(10, "tmp-renamed", master=None))  # vnet0 renamed: ifindex 10 was vnet0
    assert taken(d) == ["br0"]


def test_deleted_tap_index_is_forgotten(d):
    d.netlink(link_ev(10, "vnet0", action="del"))
    assert taken(d) == ["br0"]
    d.netlink(link_ev(10, "eth9"))  # a new, unrelated link reusing ifindex 10
    assert taken(d) == []


def test_set_inventory_replaces_the_old_one(d):
    d.set_inventory([nic("vm9", MAC2, "br7", "vnet70")])
    d.netlink(fdb_ev(MAC1))
    d.netlink(link_ev(10, "vnet0"))
    assert taken(d) == []
    d.netlink(fdb_ev(MAC2))
    assert taken(d) == ["br7"]


# --- coalescing ------------------------------------------------------------------------------------
def test_a_burst_is_coalesced_into_one_request(d, clock):
    d.netlink(fdb_ev(MAC1))
    clock.now += 0.125
    d.netlink(fdb_ev(MAC3))
    d.netlink(link_ev(3, "bond0", master=2))
    bridges, reasons = d.take()
    assert bridges == ["br0", "br1"]
    assert reasons == [f"fdb new {MAC1}", f"fdb new {MAC3}", "link new bond0"]


def test_debounce_waits_for_quiet(d, clock):
    d.netlink(fdb_ev(MAC1))
    assert not d.due()
    assert d.wait_time() == 0.25
    clock.now += 0.1875
    assert not d.due()
    d.netlink(fdb_ev(MAC1))  # the burst goes on: the quiet period restarts
    clock.now += 0.1875
    assert not d.due()
    assert d.wait_time() == 0.0625
    clock.now += 0.0625
    assert d.due()
    assert d.wait_time() == 0.0


def test_max_delay_bounds_a_never_ending_burst(d, clock):
    start = clock.now
    d.netlink(fdb_ev(MAC1))
    for _ in range(15):
        clock.now += 0.125  # always within the debounce of the previous event
        d.netlink(fdb_ev(MAC1))
        assert not d.due()
    assert clock.now - start == 1.875
    assert d.wait_time() == 0.125  # the max_delay, not the debounce (0.25)
    clock.now += 0.125
    d.netlink(fdb_ev(MAC1))
    assert d.due()  # max_delay after the first event, however busy
    assert d.wait_time() == 0.0


def test_wait_time_is_the_earlier_of_debounce_and_max_delay(clock):
    disp = Dispatcher(clock=clock, debounce=1.0, max_delay=1.5)
    disp.submit(["br0"], "first")
    clock.now += 0.75
    disp.submit(["br0"], "second")  # debounce would fire at +1.75, max_delay at +1.5
    assert disp.wait_time() == 0.75


def test_submit_none_means_all_and_absorbs_later_bridges(d, clock):
    d.submit(["br1"], "resync of br1")
    d.submit(ALL, "timer")
    d.netlink(fdb_ev(MAC1))
    bridges, reasons = d.take()
    assert bridges is None
    assert reasons == ["resync of br1", "timer", f"fdb new {MAC1}"]


def test_submit_all_first_then_bridges_is_still_all(d):
    d.submit(None, "startup")
    d.submit(["br0"], "event")
    assert taken(d) is None


def test_submit_empty_is_no_request(d):
    d.submit([], "nothing")
    assert d.wait_time() is None and not d.due()
    assert d.take() == ([], [])


def test_take_resets(d, clock):
    d.submit(None, "startup")
    clock.now += 1
    assert d.due()
    assert d.take() == (None, ["startup"])
    assert not d.due() and d.wait_time() is None
    assert d.take() == ([], [])
    d.netlink(fdb_ev(MAC2))
    assert d.take() == (["br0"], [f"fdb new {MAC2}"])  # a set again, not 'all'


def test_timing_restarts_after_take(d, clock):
    d.netlink(fdb_ev(MAC1))
    clock.now += 10
    d.take()
    d.netlink(fdb_ev(MAC1))  # the first event of a new burst: not due at once
    assert not d.due()
    assert d.wait_time() == 0.25


def test_reasons_are_bounded(d):
    for _ in range(1000):
        d.netlink(fdb_ev(MAC1))
    bridges, reasons = d.take()
    assert bridges == ["br0"] and len(reasons) == 20
