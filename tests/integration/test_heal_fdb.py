"""fdb_ownership + fdb_pin on a real kernel bridge: the founding case, with the reflection running
the whole time. Judged by the VM reaching its gateway and by the kernel's fdb."""
from __future__ import annotations

import time

from conftest import fdb_entry, is_sticky_pin


def _wait_reaches(lab, seconds):
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if lab.vm_reaches_gateway(count=1, timeout=0.3):
            return time.monotonic() - t0
    return None


def test_daemon_heals_seed_case_and_vm_stays_reachable(seed):
    seed.poison()
    assert not seed.vm_reaches_gateway(count=3, timeout=0.3, all_replies=False), "not cut off: bad lab"
    assert seed.vm_mac_ports() == [seed.uplink]

    daemon = seed.nm.daemon()
    took = _wait_reaches(seed, 10)
    assert took is not None, "the VM never reached its gateway with the daemon running"
    # The reflection is still on: the pin must hold, not be chased.
    seed.forget_gateway()
    assert seed.vm_reaches_gateway(count=20, timeout=0.5, interval=0.05), "lost replies after the heal"
    assert is_sticky_pin(fdb_entry(seed.topo, seed.host, seed.bridge, seed.vm_mac), seed.tap)
    assert seed.topo.reflected_packets(seed.switch, seed.switch_port) > 0, "the reflection stopped"

    healed = [r for r in seed.nm.audit("healed") if r["invariant"] == "fdb_ownership"]
    assert len(healed) == 1
    rec = healed[0]
    assert rec["subject"] == {"bridge": "br0", "port": "vnet0", "domain": "seedvm", "mac": seed.vm_mac}
    assert rec["before"]["fdb_entry"]["port"] == seed.uplink
    assert rec["after"]["fdb_entry"] == {"port": "vnet0", "static": True, "sticky": True}
    assert rec["healer"] == "fdb_pin" and rec["correlation_id"] and rec["trigger"]
    detected = [r for r in seed.nm.audit("detected") if r["kind"] == "poisoned"]
    assert detected and detected[0]["evidence"]["fdb_entry"]["port"] == seed.uplink
    daemon.terminate()
    daemon.wait(10)
    assert seed.nm.audit("daemon_stopped")

    # A second reconcile is a no-op.
    report = seed.nm.heal_json()
    assert report["outcomes"] == [] and report["released"] == []
    assert seed.nm.records() and list(seed.nm.records()) == ["fdb_pin:br0:" + seed.vm_mac]


def test_pin_at_start_prevents_poisoning(seed):
    """The pin is made before the guest sends anything (as the hook does): the VM never loses a reply."""
    assert seed.vm_mac_ports() == []
    proc = seed.nm.heal()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert is_sticky_pin(fdb_entry(seed.topo, seed.host, seed.bridge, seed.vm_mac), seed.tap)
    seed.forget_gateway()
    assert seed.vm_reaches_gateway(count=10, timeout=0.5, interval=0.05)
    assert seed.vm_mac_ports() == [seed.tap]


def test_dry_run_changes_nothing(seed):
    seed.poison()
    before = seed.topo.fdb(seed.host, seed.bridge)
    proc = seed.nm.heal("--dry-run")
    assert proc.returncode == 1, proc.stderr
    assert "dry-run" in proc.stdout and "pin 52:54:00:12:34:56 static sticky on vnet0" in proc.stdout
    assert seed.vm_mac_ports() == [seed.uplink]
    assert not is_sticky_pin(fdb_entry(seed.topo, seed.host, seed.bridge, seed.vm_mac), seed.tap)
    assert not seed.vm_reaches_gateway(count=2, timeout=0.3, all_replies=False)
    assert seed.nm.records() == {}
    planned = seed.nm.audit("planned")
    assert planned and planned[0]["result"] == "planned" and not seed.nm.audit("healed")
    after = seed.topo.fdb(seed.host, seed.bridge)
    assert [e for e in after if e.get("mac") == seed.vm_mac] == [e for e in before if e.get("mac") == seed.vm_mac]


def test_observe_mode_and_kill_switch_change_nothing(seed, tmp_path):
    seed.poison()
    proc = seed.nm.heal("--mode", "observe")
    assert proc.returncode == 1
    assert seed.vm_mac_ports() == [seed.uplink]
    (tmp_path / "kill-switch").write_text("")
    proc = seed.nm.heal()
    assert proc.returncode == 1 and "kill switch" in proc.stdout
    assert seed.vm_mac_ports() == [seed.uplink]
    (tmp_path / "kill-switch").unlink()
    assert seed.nm.heal().returncode == 0
    assert is_sticky_pin(fdb_entry(seed.topo, seed.host, seed.bridge, seed.vm_mac), seed.tap)


def test_vm_stop_removes_only_netmedics_pins(quiet):
    lab, topo = quiet, quiet.topo
    assert lab.nm.heal().returncode == 0
    assert is_sticky_pin(fdb_entry(topo, lab.host, lab.bridge, lab.vm_mac), lab.tap)
    # The admin's own pin on the same tap, for another MAC, is not netmedic's.
    other = "52:54:00:aa:bb:cc"
    topo.run(lab.host, "bridge", "fdb", "replace", other, "dev", lab.tap, "master", "static", "sticky")
    # The VM stops: libvirt removes its run-state XML (the tap stays here so the pin would survive).
    import os
    os.unlink(os.path.join(lab.domain_xml_dir, "seedvm.xml"))
    report = lab.nm.heal_json()
    assert [r["mac"] for r in report["released"]] == [lab.vm_mac]
    assert fdb_entry(topo, lab.host, lab.bridge, lab.vm_mac) is None or \
        not is_sticky_pin(fdb_entry(topo, lab.host, lab.bridge, lab.vm_mac), lab.tap)
    assert is_sticky_pin(fdb_entry(topo, lab.host, lab.bridge, other), lab.tap)
    assert lab.nm.records() == {}
    released = lab.nm.audit("released")
    assert released and released[0]["record"]["mac"] == lab.vm_mac
    # Nothing left to do.
    assert lab.nm.heal_json()["released"] == []


def test_out_of_scope_bridge_is_not_touched(seed, tmp_path):
    topo = seed.topo
    # A second bridge with a second VM, poisoned the same way, excluded by the policy's scope.
    topo.bridge(seed.host, "br1")
    vm2 = topo.netns("vm2")
    topo.veth(seed.host, "vnet1", vm2, "eth0", mac_a="fe:54:00:00:00:02", mac_b="52:54:00:00:00:02")
    topo.enslave(seed.host, "vnet1", "br1")
    from netmedic.lab import write_domain_xml
    write_domain_xml(seed.domain_xml_dir, "othervm",
                            [{"mac": "52:54:00:00:00:02", "bridge": "br1", "tap": "vnet1"}])
    topo.run(seed.host, "bridge", "fdb", "replace", "52:54:00:00:00:02", "dev", "vnet1", "master", "dynamic")
    seed.nm.set_policy({"scope": {"exclude_bridges": ["br1"]}})
    seed.poison()
    proc = seed.nm.heal()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert is_sticky_pin(fdb_entry(topo, seed.host, "br0", seed.vm_mac), seed.tap)
    e = fdb_entry(topo, seed.host, "br1", "52:54:00:00:00:02")
    assert e is not None and "sticky" not in (e.get("flags") or [])
    assert all(r["subject"].get("bridge") != "br1" for r in seed.nm.audit() if "subject" in r)
