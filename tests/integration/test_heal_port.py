"""port_forwarding on a real kernel bridge: a tap left detached when its bridge is re-created
(reattach + re-pin), a port stuck in a non-forwarding state (port_state), and the circuit breaker on
a tap that is detached again after every fix."""
from __future__ import annotations

from conftest import fdb_entry, is_sticky_pin


def _recreate_bridge(lab):
    topo = lab.topo
    topo.run(lab.host, "ip", "link", "del", lab.bridge)
    topo.bridge(lab.host, lab.bridge)
    topo.enslave(lab.host, lab.uplink, lab.bridge)


def test_detached_tap_is_reattached_and_repinned(quiet):
    lab, topo = quiet, quiet.topo
    assert lab.nm.heal().returncode == 0  # pinned
    assert lab.vm_reaches_gateway(count=2)
    _recreate_bridge(lab)
    assert topo.link(lab.host, lab.tap).get("master") is None
    assert not lab.vm_reaches_gateway(count=2, timeout=0.3, all_replies=False)

    report = lab.nm.heal_json()
    results = {(o["violation"]["kind"], o["result"]) for o in report["outcomes"]}
    assert ("detached", "healed") in results and ("unpinned", "healed") in results
    assert topo.link(lab.host, lab.tap).get("master") == lab.bridge
    assert is_sticky_pin(fdb_entry(topo, lab.host, lab.bridge, lab.vm_mac), lab.tap)
    lab.forget_gateway()
    assert lab.vm_reaches_gateway(count=5, interval=0.05)
    healed = [r for r in lab.nm.audit("healed") if r["kind"] == "detached"]
    assert healed[0]["healer"] == "reattach" and healed[0]["after"] == {"master": "br0", "up": True}
    assert healed[0]["steps"] == ["enslave vnet0 to br0"]
    # Second reconcile: no-op.
    report = lab.nm.heal_json()
    assert report["outcomes"] == [] and report["released"] == []


def test_daemon_reattaches_within_a_second(seed):
    import time
    lab, topo = seed, seed.topo
    daemon = lab.nm.daemon()
    t0 = time.monotonic()
    while not is_sticky_pin(fdb_entry(topo, lab.host, lab.bridge, lab.vm_mac), lab.tap):
        assert time.monotonic() - t0 < 10, "daemon never pinned"
        time.sleep(0.05)
    _recreate_bridge(lab)
    t0 = time.monotonic()
    while not (topo.link(lab.host, lab.tap).get("master") == lab.bridge
               and is_sticky_pin(fdb_entry(topo, lab.host, lab.bridge, lab.vm_mac), lab.tap)):
        assert time.monotonic() - t0 < 1.0, "not re-attached and re-pinned within 1 s"
        time.sleep(0.01)
    lab.forget_gateway()
    assert lab.vm_reaches_gateway(count=10, interval=0.05), "reflection re-poisoned the re-created bridge"
    daemon.terminate()
    daemon.wait(10)


def test_port_stuck_learning_is_set_forwarding(quiet):
    lab, topo = quiet, quiet.topo
    topo.run(lab.host, "bridge", "link", "set", "dev", lab.tap, "state", "2")  # learning: forwards nothing
    assert topo.link(lab.host, lab.tap)["linkinfo"]["info_slave_data"]["state"] == "learning"
    assert not lab.vm_reaches_gateway(count=2, timeout=0.3, all_replies=False)
    report = lab.nm.heal_json()
    assert ("not_forwarding", "healed") in {(o["violation"]["kind"], o["result"]) for o in report["outcomes"]}
    link = topo.link(lab.host, lab.tap)
    assert link["linkinfo"]["info_slave_data"]["state"] == "forwarding"
    assert "UP" in link["flags"]
    lab.forget_gateway()  # the VM's ARP entry for the gateway failed while the port forwarded nothing
    assert lab.vm_reaches_gateway(count=3, all_replies=False) and lab.vm_reaches_gateway(count=3)
    rec = [r for r in lab.nm.audit("healed") if r["kind"] == "not_forwarding"][0]
    assert rec["before"] == {"port_state": "learning"} and rec["after"]["port_state"] == "forwarding"
    assert lab.nm.heal_json()["outcomes"] == []


def test_stp_state_is_never_overridden(quiet):
    lab, topo = quiet, quiet.topo
    topo.run(lab.host, "ip", "link", "set", "dev", lab.bridge, "type", "bridge", "stp_state", "1")
    topo.run(lab.host, "ip", "link", "set", "dev", lab.bridge, "type", "bridge", "forward_delay", "3000")
    topo.run(lab.host, "ip", "link", "set", "dev", lab.tap, "down")
    topo.run(lab.host, "ip", "link", "set", "dev", lab.tap, "up")
    report = lab.nm.heal_json()
    assert all(o["violation"]["kind"] != "not_forwarding" for o in report["outcomes"])
    assert topo.link(lab.host, lab.tap)["linkinfo"]["info_slave_data"]["state"] in ("listening", "learning",
                                                                                     "blocking")


def test_circuit_breaker_trips_on_a_flapping_tap(quiet):
    lab, topo = quiet, quiet.topo
    # hold 60: each release below (within a minute of the fix) counts as another agent undoing it
    lab.nm.set_policy({"limits": {"breaker": {"trips": 3, "window": 600, "cooldown": 600, "hold": 60}}})
    for i in range(3):
        topo.release(lab.host, lab.tap)
        report = lab.nm.heal_json()
        assert ("detached", "healed") in {(o["violation"]["kind"], o["result"]) for o in report["outcomes"]}, i
        assert topo.link(lab.host, lab.tap).get("master") == lab.bridge
    topo.release(lab.host, lab.tap)
    report = lab.nm.heal_json()
    outcome = [o for o in report["outcomes"] if o["violation"]["kind"] == "detached"][0]
    assert outcome["result"] == "skipped" and "circuit breaker" in outcome["reason"]
    assert topo.link(lab.host, lab.tap).get("master") is None, "acted on a subject whose breaker is open"
    alerts = lab.nm.audit("breaker_open")
    assert len(alerts) == 1 and alerts[0]["subject"]["port"] == lab.tap and alerts[0]["level"] == "alert"
    # Still open on the next pass, and the alert is not repeated.
    report = lab.nm.heal_json()
    assert topo.link(lab.host, lab.tap).get("master") is None
    assert len(lab.nm.audit("breaker_open")) == 1
