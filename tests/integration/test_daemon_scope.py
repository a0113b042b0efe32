"""The daemon's scoped passes on a real kernel (the seed topology without reflection, plus a second VM
on the same bridge): an event about one VM leads to a pass over that VM only, the run-state XML watch
(inotify) reacts at once, and a pass over the whole bridge still sees everything."""
from __future__ import annotations

import os
import time

from conftest import fdb_entry, is_sticky_pin

from netmedic.lab import tap_mac_for, write_domain_xml

VM2_MAC = "52:54:00:5c:0e:02"


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _pinned(lab, mac, tap):
    return is_sticky_pin(fdb_entry(lab.topo, lab.host, lab.bridge, mac), tap)


def test_vm_start_is_a_pass_over_that_vm_only(quiet, tmp_path):
    lab, topo = quiet, quiet.topo
    daemon = lab.nm.daemon("--resync", "3600")
    try:
        assert _wait(lambda: _pinned(lab, lab.vm_mac, lab.tap)), "startup pass did not pin the seed VM"
        assert _wait(lambda: any(r.get("trigger") == "startup" for r in lab.nm.audit("reconciled")))
        # A second VM starts the way libvirt starts it: tap enslaved first, status XML written after.
        guest2 = topo.netns("g2", ipv6=False)
        topo.veth(lab.host, "vnet9", guest2, "eth0", mac_a=tap_mac_for(VM2_MAC), mac_b=VM2_MAC)
        topo.enslave(lab.host, "vnet9", lab.bridge)
        time.sleep(0.3)
        n_before = len(lab.nm.audit("reconciled"))
        t0 = time.monotonic()
        write_domain_xml(lab.domain_xml_dir, "vm2", [{"mac": VM2_MAC, "bridge": lab.bridge, "tap": "vnet9"}])
        assert _wait(lambda: _pinned(lab, VM2_MAC, "vnet9"), 5), "vm2 was not pinned after its XML appeared"
        took = time.monotonic() - t0
        # The XML watch reacts at once (the fallback poll runs once a second).
        assert took < 0.9, took
        # the pass's own "reconciled" line follows its heal by a few ms
        assert _wait(lambda: any(p.get("domains") for p in lab.nm.audit("reconciled")[n_before:]), 2)
        passes = lab.nm.audit("reconciled")[n_before:]
        narrowed = [p for p in passes if p.get("domains")]
        assert narrowed and narrowed[0]["domains"] == {lab.bridge: ["vm2"]}, passes
        assert narrowed[0]["scope"] == [lab.bridge]
        # vm1's pin is not what that pass looked at, and nothing about it changed
        assert _pinned(lab, lab.vm_mac, lab.tap)
        healed = [r for r in lab.nm.audit("healed") if r["subject"].get("domain") == "vm2"]
        assert healed and healed[0]["healer"] == "fdb_pin"

        # A VM stops: its XML goes away and its tap with it; a pass over that VM releases its record.
        os.unlink(os.path.join(lab.domain_xml_dir, "vm2.xml"))
        topo.run(lab.host, "ip", "link", "del", "vnet9")
        assert _wait(lambda: not any(r.get("domain") == "vm2" for r in lab.nm.records().values()), 5)
        assert _pinned(lab, lab.vm_mac, lab.tap) and any(r.get("domain") == lab.domain
                                                          for r in lab.nm.records().values())

        # A tap detached (an event about one VM): re-attached and re-pinned by a pass over that VM.
        n_before = len(lab.nm.audit("reconciled"))
        topo.release(lab.host, lab.tap)
        assert _wait(lambda: topo.link(lab.host, lab.tap).get("master") == lab.bridge
                     and _pinned(lab, lab.vm_mac, lab.tap), 5)
        assert _wait(lambda: any(p.get("domains") == {lab.bridge: [lab.domain]}
                                 for p in lab.nm.audit("reconciled")[n_before:]), 2), lab.nm.audit("reconciled")[n_before:]

        # The bridge itself changes (deleted and re-created): a pass over the whole bridge.
        n_before = len(lab.nm.audit("reconciled"))
        topo.run(lab.host, "ip", "link", "del", lab.bridge)
        topo.bridge(lab.host, lab.bridge)
        topo.run(lab.host, "ip", "link", "set", lab.uplink, "master", lab.bridge)
        assert _wait(lambda: topo.link(lab.host, lab.tap).get("master") == lab.bridge
                     and _pinned(lab, lab.vm_mac, lab.tap), 5)
        assert _wait(lambda: any(p.get("scope") == [lab.bridge] and not p.get("domains")
                                 for p in lab.nm.audit("reconciled")[n_before:]), 2), lab.nm.audit("reconciled")[n_before:]
    finally:
        daemon.terminate()
        daemon.wait(10)
    assert daemon.returncode == 0
