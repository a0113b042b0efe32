"""unique_mac + quarantine on a real kernel bridge: a cloned guest with the same MAC (and IP)."""
from __future__ import annotations

import os

from netmedic.lab import write_domain_xml


def _clone(lab):
    topo = lab.topo
    vm2 = topo.netns("vm2")
    topo.veth(lab.host, "vnet1", vm2, "eth0", mac_a="fe:54:00:12:34:57", mac_b=lab.vm_mac)
    topo.enslave(lab.host, "vnet1", lab.bridge)
    topo.addr(vm2, "eth0", lab.vm_ip + "/24")
    write_domain_xml(lab.domain_xml_dir, "clonevm",
                            [{"mac": lab.vm_mac, "bridge": lab.bridge, "tap": "vnet1"}])
    return vm2


def _state(topo, ns, dev):
    return topo.link(ns, dev)["linkinfo"]["info_slave_data"]["state"]


def test_duplicate_is_reported_then_quarantined_then_released(quiet):
    lab, topo = quiet, quiet.topo
    vm2 = _clone(lab)
    report = lab.nm.heal_json()  # default: observe
    dup = [o for o in report["outcomes"] if o["violation"]["kind"] == "duplicate_vm_mac"]
    assert len(dup) == 1 and dup[0]["result"] == "observed"
    assert dup[0]["violation"]["subject"]["port"] == "vnet1"  # the newer tap
    assert _state(topo, lab.host, "vnet1") == "forwarding"

    lab.nm.set_policy({"invariants": {"unique_mac": {"mode": "enforce"}}})
    report = lab.nm.heal_json()
    dup = [o for o in report["outcomes"] if o["violation"]["kind"] == "duplicate_vm_mac"]
    assert dup[0]["result"] == "healed"
    rec = [r for r in lab.nm.audit("healed") if r["invariant"] == "unique_mac"][0]
    assert rec["subject"]["port"] == "vnet1" and rec["subject"]["domain"] == "clonevm"
    assert rec["before"] == {"port_state": "forwarding"} and rec["after"] == {"port_state": "listening"}
    assert _state(topo, lab.host, "vnet1") == "listening"
    assert "UP" in topo.link(lab.host, "vnet1")["flags"], "quarantine must not take the link down"
    # The clone's traffic is dropped; the original VM keeps its own (its MAC stays pinned on vnet0).
    assert not topo.ping(vm2, lab.gw_ip, count=2, timeout=0.3)
    lab.forget_gateway()
    assert lab.vm_reaches_gateway(count=5, interval=0.05)
    # Second reconcile: nothing new (port_forwarding leaves the quarantined port alone).
    again = lab.nm.heal_json()
    assert all(o["result"] != "healed" for o in again["outcomes"])
    assert _state(topo, lab.host, "vnet1") == "listening"

    # The clone stops: netmedic ends its quarantine, and only that.
    os.unlink(os.path.join(lab.domain_xml_dir, "clonevm.xml"))
    report = lab.nm.heal_json()
    assert [r["kind"] for r in report["released"]] == ["quarantine"]
    assert _state(topo, lab.host, "vnet1") == "forwarding"
    assert list(lab.nm.records()) == ["fdb_pin:br0:" + lab.vm_mac]
