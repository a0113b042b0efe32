"""Ownership survives any crash: `netmedic heal` is SIGKILLed at each step boundary of a heal (after the
intent is on disk, after the change, after verification, after the save: the engine's fault-injection
points, NETMEDIC_TEST_KILL_AT), and the next run converges — the pin on the host and exactly one record
of it, nothing pending, nothing duplicated; a quarantine keeps the port's state from before the first
change; once the VM is gone, nothing of netmedic's is left. Judged by kernel state."""
from __future__ import annotations

import os
import signal

import pytest
from conftest import fdb_entry, is_sticky_pin, nm_env

POINTS = ("after_intent", "after_apply", "after_verify", "after_save")


def _run_killed(lab, point, *extra):
    env = dict(nm_env(), NETMEDIC_TEST_KILL_AT=point)
    return lab.topo.run(lab.host, *lab.nm.argv("heal", *extra), check=False, env=env, timeout=60)


def _port_state(topo, ns, dev):
    return topo.link(ns, dev)["linkinfo"]["info_slave_data"]["state"]


@pytest.mark.parametrize("point", POINTS)
def test_a_pin_survives_a_kill_at_every_step_boundary(quiet, point):
    lab, topo = quiet, quiet.topo
    proc = _run_killed(lab, point)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)
    records = lab.nm.records()
    key = f"fdb_pin:{lab.bridge}:{lab.vm_mac}"
    # the intent was on disk before the host was touched, whatever happened after it
    assert list(records) == [key], records
    pinned = is_sticky_pin(fdb_entry(topo, lab.host, lab.bridge, lab.vm_mac), lab.tap)
    assert pinned == (point != "after_intent")

    report = lab.nm.heal_json()
    assert report["errors"] == []
    assert is_sticky_pin(fdb_entry(topo, lab.host, lab.bridge, lab.vm_mac), lab.tap)
    records = lab.nm.records()
    assert list(records) == [key] and not records[key].get("pending"), records
    # a second pass changes nothing
    again = lab.nm.heal_json()
    assert all(o["result"] != "healed" for o in again["outcomes"]) and again["released"] == []

    # The VM goes: its pin and its record go with it, nothing is left.
    os.unlink(os.path.join(lab.domain_xml_dir, f"{lab.domain}.xml"))
    report = lab.nm.heal_json()
    assert [r["key"] for r in report["released"]] == [key]
    assert lab.nm.records() == {}
    entry = fdb_entry(topo, lab.host, lab.bridge, lab.vm_mac)
    assert entry is None or "sticky" not in (entry.get("flags") or [])


@pytest.mark.parametrize("point", ("after_apply", "after_verify"))
def test_a_quarantine_rebuilt_after_a_crash_keeps_the_prior_state(quiet, point):
    from netmedic import lab as netlab

    lab, topo = quiet, quiet.topo
    lab.nm.heal()  # the original is pinned first
    clone = topo.netns("clone", ipv6=False)
    topo.veth(lab.host, "vnet1", clone, "eth0", mac_a="fe:54:00:12:34:57", mac_b=lab.vm_mac)
    topo.enslave(lab.host, "vnet1", lab.bridge)
    netlab.write_domain_xml(lab.domain_xml_dir, "clonevm", [{"mac": lab.vm_mac, "bridge": lab.bridge, "tap": "vnet1"}])
    lab.nm.set_policy({"invariants": {"unique_mac": {"mode": "enforce"}}})
    proc = _run_killed(lab, point)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _port_state(topo, lab.host, "vnet1") == "listening"
    lab.nm.heal_json()  # restarted: adopts the quarantine
    rec = lab.nm.records()["quarantine:vnet1"]
    assert rec["prior_state"] == 3 and not rec.get("pending"), rec  # forwarding, from before the first change
    # The clone stops: the port is given back its prior state, and only netmedic's record goes.
    os.unlink(os.path.join(lab.domain_xml_dir, "clonevm.xml"))
    report = lab.nm.heal_json()
    assert [r["kind"] for r in report["released"]] == ["quarantine"]
    assert _port_state(topo, lab.host, "vnet1") == "forwarding"
    assert list(lab.nm.records()) == [f"fdb_pin:{lab.bridge}:{lab.vm_mac}"]
