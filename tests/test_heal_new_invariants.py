"""The new invariants on real kernels, through the real `netmedic` command in the test's own
namespaces: mtu_consistency healed (a jumbo ping fails, then passes; the kernel's MTU is checked),
and the observe-only findings of host_ip_on_port, nat_network_health and uplink_aggregation.
(No bonding in this kernel: uplink_aggregation's bond finding is tested on captured snapshots in
test_new_invariants.py; here the real path runs over a veth uplink and finds nothing.)"""
from __future__ import annotations

import pytest
from diagnose_helpers import MASQ, build_natnet, sized_ping


def _mtu(topo, ns, dev):
    return topo.link(ns, dev)["mtu"]


def test_tap_mtu_mismatch_is_healed(quiet):
    lab, topo = quiet, quiet.topo
    # A jumbo path: gateway, switch, uplink and bridge at 9000; the VM's tap left at 1500.
    for ns, dev in ((lab.gw, "eth0"), (lab.switch, "swgw"), (lab.switch, "sw0"), (lab.switch, "swbr"),
                    (lab.host, lab.uplink), (lab.vm, "eth0")):
        topo.run(ns, "ip", "link", "set", "dev", dev, "mtu", "9000")
    topo.run(lab.host, "ip", "link", "set", "dev", lab.bridge, "mtu", "9000")
    assert _mtu(topo, lab.host, lab.tap) == 1500 and _mtu(topo, lab.host, lab.bridge) == 9000
    assert lab.vm_reaches_gateway(count=2), "small packets still pass"
    assert sized_ping(topo, lab.gw, lab.vm_ip, 8000) == 0, "large frames to the VM are dropped at the tap"

    report = lab.nm.heal_json()
    mtu = [o for o in report["outcomes"] if o["violation"]["invariant"] == "mtu_consistency"]
    assert len(mtu) == 1 and mtu[0]["result"] == "healed"
    assert mtu[0]["violation"]["evidence"] == {"tap_mtu": 1500, "bridge_mtu": 9000}
    assert _mtu(topo, lab.host, lab.tap) == 9000
    assert sized_ping(topo, lab.gw, lab.vm_ip, 8000) == 2
    rec = [r for r in lab.nm.audit("healed") if r["invariant"] == "mtu_consistency"][0]
    assert rec["healer"] == "mtu_set" and rec["steps"] == ["set mtu of vnet0 to 9000"]
    assert rec["before"] == {"tap_mtu": 1500, "bridge_mtu": 9000} and rec["after"] == {"tap_mtu": 9000,
                                                                                        "bridge_mtu": 9000}
    again = lab.nm.heal_json()
    assert all(o["violation"]["invariant"] != "mtu_consistency" for o in again["outcomes"])


def test_mtu_observe_mode_changes_nothing(quiet):
    lab, topo = quiet, quiet.topo
    topo.run(lab.host, "ip", "link", "set", "dev", lab.tap, "mtu", "1400")
    topo.run(lab.host, "ip", "link", "set", "dev", lab.bridge, "mtu", "1500")
    lab.nm.set_policy({"invariants": {"mtu_consistency": {"mode": "observe"}}})
    report = lab.nm.heal_json()
    mtu = [o for o in report["outcomes"] if o["violation"]["invariant"] == "mtu_consistency"]
    assert mtu[0]["result"] == "observed" and _mtu(topo, lab.host, lab.tap) == 1400


def test_host_ip_on_port_is_reported_never_moved(quiet):
    lab, topo = quiet, quiet.topo
    topo.addr(lab.host, lab.uplink, "198.51.100.5/24")
    report = lab.nm.check_json()
    found = [v for v in report["violations"] if v["invariant"] == "host_ip_on_port"]
    assert len(found) == 1 and found[0]["subject"] == {"bridge": "br0", "port": "uplink0"}
    assert found[0]["evidence"]["addresses"] == ["198.51.100.5/24"] and found[0]["fix"] is None
    lab.nm.heal_json()
    addrs = [a["local"] for a in topo.link(lab.host, lab.uplink).get("addr_info", [])] or \
        topo.run(lab.host, "ip", "-br", "addr", "show", "dev", lab.uplink).stdout
    assert "198.51.100.5" in str(addrs), "netmedic must not move the address"
    # the uplink is a veth: no bond, no aggregation finding on the real path
    assert not [v for v in report["violations"] if v["invariant"] == "uplink_aggregation"]


@pytest.fixture
def natnet(topo, tmp_path):
    return build_natnet(topo, tmp_path)


def test_nat_network_health_findings(natnet):
    nm, topo = natnet.nm, natnet.topo
    assert not [v for v in nm.check_json()["violations"] if v["invariant"] == "nat_network_health"]
    topo.run(natnet.host, "iptables-nft", *["-D" if a == "-A" else a for a in MASQ])
    natnet.dnsmasq.terminate()
    natnet.dnsmasq.wait(10)
    found = {v["kind"]: v for v in nm.check_json()["violations"] if v["invariant"] == "nat_network_health"}
    assert set(found) == {"masquerade_missing", "dnsmasq_down"}
    assert found["masquerade_missing"]["subject"] == {"bridge": "virbr1", "network": "nat1"}
    assert found["masquerade_missing"]["evidence"]["subnet"] == "203.0.113.0/24"
    assert found["dnsmasq_down"]["evidence"]["pid"] == natnet.dnsmasq.pid
    report = nm.heal_json()
    results = {o["violation"]["kind"]: o["result"] for o in report["outcomes"]
               if o["violation"]["invariant"] == "nat_network_health"}
    assert results == {"masquerade_missing": "no_remedy", "dnsmasq_down": "no_remedy"}


def test_masquerade_in_legacy_iptables_counts(topo, tmp_path):
    n = build_natnet(topo, tmp_path, masquerade=False)
    topo.run(n.host, "iptables-legacy", *MASQ)
    assert not [v for v in n.nm.check_json()["violations"] if v["invariant"] == "nat_network_health"]
