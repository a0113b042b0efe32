"""mtu_consistency healed on a real kernel through the real `netmedic` command: a jumbo ping fails, then
passes; the kernel's MTU is checked; observe mode changes nothing."""
from __future__ import annotations

from diagnose_helpers import sized_ping


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
