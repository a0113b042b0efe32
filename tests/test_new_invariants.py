"""The invariants added with `diagnose` (mtu_consistency, vlan_membership, uplink_aggregation,
host_ip_on_port, nat_network_health, remote_duplicate) and their healers, on captured snapshots.

This kernel has no bridge VLAN filtering and no bonding: vlan_membership and uplink_aggregation are
tested here on captured snapshots (the kernel's VLAN table and bond mode filled in by hand). Their
code paths are the real ones: Netlink.port_vlans()/vlan_add() run against this kernel in
test_vlan_netlink_path_on_this_kernel (which reports no VLANs and refuses the add with EOPNOTSUPP)."""
from __future__ import annotations

import os
import subprocess
import sys
import types

from snapshots import MAC1, bridge, nic, snapshot, tap, uplink

from netmedic import hostfacts, nl
from netmedic.healers import HEALERS
from netmedic.inventory import Network
from netmedic.policies import INVARIANTS, healer_for
from netmedic.policies import config as policy_config


def _check(name, snap, **options):
    mod = INVARIANTS[name]
    opts = {k: o.default for k, o in mod.OPTIONS.items()}
    opts.update(options)
    return mod.check(snap, opts)


def _plan(v, snap):
    healer = HEALERS[healer_for(v, {})]
    return healer.plan(v, snap, {})


def _with_mtu(link, mtu):
    import dataclasses
    return dataclasses.replace(link, mtu=mtu)


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


# --- mtu_consistency ------------------------------------------------------------------------------
def test_mtu_mismatch_found_and_planned():
    links = [bridge("br0", 2), uplink("eth0", 3, master=2, kind="veth"), _with_mtu(tap("vnet0", 10, master=2), 1400)]
    snap = snapshot(links=links, nics=[nic("vm1", MAC1, "br0", "vnet0")])
    (v,) = _check("mtu_consistency", snap)
    assert v.kind == "mtu_mismatch" and v.severity == "broken"
    assert v.evidence == {"tap_mtu": 1400, "bridge_mtu": 1500}
    plan, why = _plan(v, snap)
    assert plan.healer == "mtu_set" and [s.args["mtu"] for s in plan.steps] == [1500]
    assert plan.steps[0].undo.args["mtu"] == 1400 and plan.steps[0].args["port_index"] == 10


def test_larger_tap_mtu_is_a_risk_and_equal_is_clean():
    big = snapshot(links=[bridge("br0", 2), _with_mtu(tap("vnet0", 10, master=2), 9000)],
                   nics=[nic("vm1", MAC1, "br0", "vnet0")])
    assert [v.severity for v in _check("mtu_consistency", big)] == ["risk"]
    same = snapshot(links=[bridge("br0", 2), tap("vnet0", 10, master=2)], nics=[nic("vm1", MAC1, "br0", "vnet0")])
    detached = snapshot(links=[bridge("br0", 2), _with_mtu(tap("vnet0", 10), 1400)],
                        nics=[nic("vm1", MAC1, "br0", "vnet0")])
    assert _check("mtu_consistency", same) == [] and _check("mtu_consistency", detached) == []


# --- vlan_membership (captured: no vlan_filtering in this kernel) ---------------------------------
def _vlan_snap(vlans, have):
    snap = snapshot(links=[bridge("br0", 2, vlan_filtering=True), tap("vnet0", 10, master=2)],
                    nics=[nic("vm1", MAC1, "br0", "vnet0", vlans=vlans)])
    snap.port_vlans = {10: tuple(have)}
    return snap


def test_access_vlan_missing_is_added_as_pvid_untagged():
    snap = _vlan_snap((20,), [nl.VlanInfo(1, True, True)])
    (v,) = _check("vlan_membership", snap)
    assert v.evidence["missing"] == [{"vid": 20, "pvid": True, "untagged": True}]
    plan, _ = _plan(v, snap)
    assert [s.op for s in plan.steps] == ["vlan_add"]
    assert plan.steps[0].description == "bridge vlan add vid 20 dev vnet0 pvid untagged"
    assert plan.steps[0].undo.op == "vlan_delete"


def test_trunk_vlans_tagged_and_existing_flags_restored_on_undo():
    snap = _vlan_snap((20, 30), [nl.VlanInfo(20, False, False)])
    (v,) = _check("vlan_membership", snap)
    assert v.evidence["missing"] == [{"vid": 30, "pvid": False, "untagged": False}]
    snap = _vlan_snap((20,), [nl.VlanInfo(20, False, False)])  # member, but not the access VLAN
    (v,) = _check("vlan_membership", snap)
    plan, _ = _plan(v, snap)
    assert plan.steps[0].undo.op == "vlan_add" and plan.steps[0].undo.args["pvid"] is False
    assert _check("vlan_membership", _vlan_snap((20,), [nl.VlanInfo(20, True, True)])) == []


def test_vlans_not_checked_without_vlan_filtering_or_observation():
    snap = _vlan_snap((20,), [])
    snap.port_vlans = None  # not observed (invariant disabled)
    assert _check("vlan_membership", snap) == []
    snap = snapshot(links=[bridge("br0", 2), tap("vnet0", 10, master=2)],
                    nics=[nic("vm1", MAC1, "br0", "vnet0", vlans=(20,))])
    snap.port_vlans = {}
    assert _check("vlan_membership", snap) == []


def test_vlan_netlink_path_on_this_kernel():
    """The real code path against this kernel (no CONFIG_BRIDGE_VLAN_FILTERING): the dump returns the
    bridge ports with no VLANs, and an add is refused (EOPNOTSUPP), as a HostError."""
    from netmedic import labnet
    with labnet.Topology("nmtv") as topo:
        ns = topo.netns("h")
        topo.bridge(ns, "br0")
        topo.veth(ns, "vnet0", ns, "peer0")
        topo.enslave(ns, "vnet0", "br0")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = (f"import sys; sys.path.insert(0, {root!r})\n"
                "from netmedic import nl\nfrom netmedic.errors import HostError\n"
                "n = nl.Netlink(); idx = n.link('vnet0').index\n"
                "v = n.port_vlans(); print(idx in v and v[idx] == ())\n"
                "try:\n    n.vlan_add(idx, 20, pvid=True, untagged=True); print('added')\n"
                "except HostError as e:\n    print('refused', e)\n")
        out = topo.run(ns, sys.executable, "-c", code).stdout.splitlines()
    assert out[0] == "True"
    assert out[1].startswith("refused") and "EOPNOTSUPP" in out[1]


# --- uplink_aggregation (captured: no bonding in this kernel) -----------------------------------
def test_round_robin_bond_under_a_vm_bridge_is_a_risk():
    links = [bridge("br0", 2), uplink("bond0", 3, master=2, bond_mode=0), tap("vnet0", 10, master=2),
             uplink("eth0", 4, master=3, kind=None, port=None), uplink("eth1", 5, master=3, kind=None, port=None)]
    snap = snapshot(links=links, nics=[nic("vm1", MAC1, "br0", "vnet0")])
    (v,) = _check("uplink_aggregation", snap)
    assert v.severity == "risk" and v.subject.port == "bond0"
    assert v.evidence["mode"] == "balance-rr" and v.evidence["members"] == ["eth0", "eth1"]
    assert "active-backup" in v.evidence["remedies"] and "LACP" in v.evidence["remedies"]
    assert healer_for(v, {}) is None


def test_safe_bond_modes_and_bridges_without_vms_are_clean():
    for mode in (1, 2, 4, 5, 6):
        snap = snapshot(links=[bridge("br0", 2), uplink("bond0", 3, master=2, bond_mode=mode),
                               tap("vnet0", 10, master=2)], nics=[nic("vm1", MAC1, "br0", "vnet0")])
        assert _check("uplink_aggregation", snap) == [], mode
    no_vm = snapshot(links=[bridge("br0", 2), uplink("bond0", 3, master=2, bond_mode=0)])
    assert _check("uplink_aggregation", no_vm) == []


# --- host_ip_on_port -------------------------------------------------------------------------------
def test_address_on_an_enslaved_port_ignores_link_local():
    links = [bridge("br0", 2), uplink("eth0", 3, master=2, kind=None), tap("vnet0", 10, master=2)]
    snap = snapshot(links=links, nics=[nic("vm1", MAC1, "br0", "vnet0")])
    snap.addresses = {3: ["198.51.100.5/24", "2001:db8::5/64", "fe80::1/64"], 10: ["fe80::2/64"],
                      2: ["198.51.100.1/24"]}
    (v,) = _check("host_ip_on_port", snap)
    assert v.subject.port == "eth0" and v.evidence["addresses"] == ["198.51.100.5/24", "2001:db8::5/64"]
    assert "ip addr add 198.51.100.5/24 dev br0" in v.evidence["fix"]
    snap.addresses = None
    assert _check("host_ip_on_port", snap) == []


# --- nat_network_health ----------------------------------------------------------------------------
def _nat_snap(rules, dns):
    net = Network(name="default", bridge="virbr0", forward_mode="nat", forward_dev=None, ips=("192.168.122.1/24",))
    snap = snapshot(links=[bridge("virbr0", 2), tap("vnet0", 10, master=2)],
                    nics=[nic("vm1", MAC1, "virbr0", "vnet0", type="network", network="default")], networks=[net])
    snap.nat_rules, snap.dnsmasq = rules, {"default": dns}
    return snap


LIBVIRT_NAT = """-P POSTROUTING ACCEPT
-N LIBVIRT_PRT
-A POSTROUTING -j LIBVIRT_PRT
-A LIBVIRT_PRT -s 192.168.122.0/24 -d 224.0.0.0/24 -j RETURN
-A LIBVIRT_PRT -s 192.168.122.0/24 ! -d 192.168.122.0/24 -p tcp -j MASQUERADE --to-ports 1024-65535
-A LIBVIRT_PRT -s 192.168.122.0/24 ! -d 192.168.122.0/24 -j MASQUERADE
"""
ALIVE = hostfacts.Dnsmasq("default", "/run/libvirt/network/default.pid", 42, True, True)


def test_libvirt_nat_rules_parsed_and_healthy_network_is_clean():
    rules = hostfacts.parse_iptables_nat("nft", LIBVIRT_NAT)
    assert len(rules) == 2 and rules[1].source == "192.168.122.0/24" and rules[1].negated_dest == "192.168.122.0/24"
    assert _check("nat_network_health", _nat_snap(rules, ALIVE)) == []
    nft = hostfacts.parse_nft_nat("    ip saddr 192.168.122.0/24 ip daddr != 192.168.122.0/24 counter masquerade\n")
    assert _check("nat_network_health", _nat_snap(nft, ALIVE)) == []


def test_missing_masquerade_and_dead_dnsmasq_give_the_exact_fix():
    dead = hostfacts.Dnsmasq("default", "/run/libvirt/network/default.pid", 42, False, False)
    found = {v.kind: v for v in _check("nat_network_health", _nat_snap([], dead))}
    assert set(found) == {"masquerade_missing", "dnsmasq_down"}
    assert "iptables -t nat -A POSTROUTING -s 192.168.122.0/24 ! -d 192.168.122.0/24 -j MASQUERADE" \
        in found["masquerade_missing"].evidence["fix"]
    assert "virtnetworkd" in found["dnsmasq_down"].evidence["fix"]
    other = hostfacts.parse_iptables_nat("nft", "-A POSTROUTING -s 10.0.0.0/24 -j MASQUERADE\n")
    assert [v.kind for v in _check("nat_network_health", _nat_snap(other, ALIVE))] == ["masquerade_missing"]


def test_dnsmasq_reader_on_a_real_process(tmp_path):
    """A live process that is not dnsmasq does not count; a missing pid file neither."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "n1.pid").write_text(f"{proc.pid}\n")
        d = hostfacts.read_dnsmasq("n1", str(tmp_path))
        assert d.pid == proc.pid and d.alive is False
        assert hostfacts.read_dnsmasq("n2", str(tmp_path)).pid is None
    finally:
        proc.kill()
        proc.wait()


# --- remote_duplicate ------------------------------------------------------------------------------
def test_remote_duplicate_only_from_capture_evidence():
    snap = snapshot(links=[bridge("br0", 2), uplink("eth0", 3, master=2), tap("vnet0", 10, master=2)],
                    nics=[nic("vm1", MAC1, "br0", "vnet0")])
    assert _check("remote_duplicate", snap) == []  # no capture: no evidence, no finding
    snap.sightings = {("br0", MAC1): {"ports": ["eth0"], "incoming": 5, "reflected": 5, "remote": 0}}
    assert _check("remote_duplicate", snap) == []  # reflections only
    snap.sightings = {("br0", MAC1): {"ports": ["eth0"], "incoming": 7, "reflected": 2, "remote": 5}}
    (v,) = _check("remote_duplicate", snap)
    assert v.severity == "broken" and healer_for(v, {}) is None and "cannot fix" in v.evidence["fix"]


# --- hostfacts: leases and neighbours -------------------------------------------------------------
def test_leases_and_neighbours_from_captured_files(tmp_path):
    (tmp_path / "virbr0.status").write_text(
        '[{"ip-address": "192.168.122.50", "mac-address": "52:54:00:00:00:01", "hostname": "vm1", '
        '"expiry-time": 4102444800}, {"ip-address": "192.168.122.9", "mac-address": "52:54:00:00:00:01", '
        '"expiry-time": 5}]')
    (tmp_path / "broken.status").write_text("{not json")
    assert hostfacts.leases(MAC1, str(tmp_path)) == [("192.168.122.50", str(tmp_path / "virbr0.status"), "vm1")]
    arp = tmp_path / "arp"
    arp.write_text("IP address       HW type     Flags       HW address            Mask     Device\n"
                   "192.168.122.50   0x1         0x2         52:54:00:00:00:01     *        virbr0\n"
                   "192.168.122.51   0x1         0x0         52:54:00:00:00:01     *        virbr0\n")
    assert hostfacts.neighbours(MAC1, str(arp)) == [("192.168.122.50", "virbr0")]


def test_the_schema_validator_rejects_what_the_schema_forbids():
    import pytest
    from diagnose_helpers import load_schema, validate

    schema = load_schema()
    hop = {"number": 1, "name": "nic", "title": "t", "verdict": "ok", "summary": "", "evidence": {}, "fix": None}
    good = {"schema_version": 1, "domain": "d", "nic": {"mac": MAC1, "tap": "vnet0", "bridge": "br0", "network": None},
            "verdict": "healthy", "headline": "h", "first_broken": None, "vm_ip": None, "probe": False,
            "hops": [dict(hop, number=i + 1) for i in range(9)], "errors": []}
    validate(good, schema)
    for bad in (dict(good, verdict="fine"), dict(good, hops=good["hops"][:8]), dict(good, extra=1),
                dict(good, hops=[dict(hop, verdict="maybe")] * 9), {k: v for k, v in good.items() if k != "nic"}):
        with pytest.raises(AssertionError):
            validate(bad, schema)
