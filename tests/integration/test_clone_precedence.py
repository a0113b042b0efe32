"""Remedies never fight: a cloned VM (same MAC, same IP, on a second tap of the same bridge) starts next
to the original and keeps talking (a ping every 20 ms) while the original talks lightly; the daemon
runs for 60 s. The engine's one precedence rule keeps the MAC on its owner's tap (the older NIC): the
original's MAC never moves (`bridge monitor fdb`), the gateway keeps reaching the original (loss <= 10 %),
and the audit shows no pin on the clone's tap — with unique_mac in observe (the shipped default) and in
enforce, where the clone's quarantine is re-applied on the clone port's own link event (the kernel puts
a port back to forwarding on a carrier flap)."""
from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest
from conftest import fdb_entry, is_sticky_pin

from netmedic import lab as netlab

CLONE_TAP = "vnet1"
RUN_SECONDS = 60


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _port_state(topo, ns, dev):
    return topo.link(ns, dev)["linkinfo"]["info_slave_data"]["state"]


@pytest.mark.soak
@pytest.mark.parametrize("mode", ["observe", "enforce"])
def test_a_talking_clone_never_takes_the_original_mac(quiet, tmp_path, mode):
    lab, topo = quiet, quiet.topo
    lab.nm.set_policy({"invariants": {"unique_mac": {"mode": mode}}})
    daemon = lab.nm.daemon("--resync", "3600")
    monitor = None
    try:
        assert _wait(lambda: is_sticky_pin(fdb_entry(topo, lab.host, lab.bridge, lab.vm_mac), lab.tap)), \
            "the daemon's startup pass did not pin the original VM"
        # Watch every fdb change of the bridge from now on.
        log = open(os.path.join(str(tmp_path), "fdb-monitor.txt"), "w")
        monitor = topo.spawn(lab.host, "bridge", "monitor", "fdb", stdout=log, stderr=subprocess.STDOUT)

        # The clone starts the way libvirt starts it: tap enslaved first, status XML after.
        clone = topo.netns("clone", ipv6=False)
        topo.veth(lab.host, CLONE_TAP, clone, "eth0", mac_a=netlab.tap_mac_for("52:54:00:12:34:57"),
                  mac_b=lab.vm_mac)
        topo.enslave(lab.host, CLONE_TAP, lab.bridge)
        topo.addr(clone, "eth0", lab.vm_ip + "/24")
        netlab.write_domain_xml(lab.domain_xml_dir, "clonevm",
                                [{"mac": lab.vm_mac, "bridge": lab.bridge, "tap": CLONE_TAP}])
        if mode == "enforce":
            assert _wait(lambda: _port_state(topo, lab.host, CLONE_TAP) == "listening", 5), \
                "the clone's port was not quarantined"

        deadline = time.monotonic() + RUN_SECONDS
        talkers = [
            # the clone talks hard (a ping every 20 ms) ...
            threading.Thread(target=topo.ping, args=(clone, lab.gw_ip),
                             kwargs={"count": RUN_SECONDS * 50, "interval": 0.02, "timeout": 0.02}),
            # ... the original lightly
            threading.Thread(target=topo.ping, args=(lab.vm, lab.gw_ip),
                             kwargs={"count": RUN_SECONDS // 2, "interval": 2.0, "timeout": 0.5}),
        ]
        for t in talkers:
            t.start()
        if mode == "enforce":
            # Halfway, the clone's port flaps (its carrier goes away and back): the kernel resets the port
            # to forwarding; the daemon quarantines it again on that port's own link event.
            time.sleep(RUN_SECONDS / 2 - 5)
            topo.set_up(lab.host, CLONE_TAP, False)
            topo.set_up(lab.host, CLONE_TAP, True)
            t0 = time.monotonic()
            assert _wait(lambda: _port_state(topo, lab.host, CLONE_TAP) == "listening", 2), \
                "the quarantine was not re-applied after the clone port's link event"
            assert time.monotonic() - t0 < 1.0
        # The gateway keeps reaching the original for the rest of the run: <= 10 % loss.
        count = max(10, int((deadline - time.monotonic()) / 0.1) - 5)
        assert topo.ping(lab.gw, lab.vm_ip, count=count, interval=0.1, timeout=0.2,
                         min_replies=int(count * 0.9)), "the gateway lost more than 10 % of the original's replies"
        for t in talkers:
            t.join(RUN_SECONDS + 30)

        # The original's MAC never moved: no fdb change of it on any port but its own tap.
        monitor.terminate()
        monitor.wait(5)
        log.close()
        with open(log.name) as fh:
            moves = [line for line in fh if lab.vm_mac in line.lower() and f"dev {lab.tap} " not in line]
        assert moves == [], moves
        assert is_sticky_pin(fdb_entry(topo, lab.host, lab.bridge, lab.vm_mac), lab.tap)
        # No pin was ever planned or made on the clone's tap.
        pins_on_clone = [r for r in lab.nm.audit() if r.get("healer") == "fdb_pin"
                         and (r.get("subject") or {}).get("port") == CLONE_TAP]
        assert pins_on_clone == [], pins_on_clone
        assert not any(r.get("kind") == "fdb_pin" and r.get("port") == CLONE_TAP for r in lab.nm.records().values())
        if mode == "enforce":
            assert _port_state(topo, lab.host, CLONE_TAP) == "listening"
    finally:
        if monitor is not None and monitor.poll() is None:
            monitor.terminate()
        daemon.terminate()
        daemon.wait(10)
    assert daemon.returncode == 0
