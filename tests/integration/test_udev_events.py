"""udev as an event source, with a REAL systemd-udevd running inside the test's network namespace (net
uevents stay in their namespace) and in a private mount view (netmedic.sources.nmlab: its own /run/udev,
and rules directories holding only the rule under test — netmedic/sources/scripts/90-netmedic.rules with its
RUN+= pointing at the test's rendered copy of netmedic/sources/scripts/netmedic-udev). udevd is stopped by
PID at teardown; nothing is installed on the host.

A new tap for a known VM (its domain XML names vnet0 on br0) appears detached: the rule's RUN program
posts the event to the daemon's socket and returns at once; the daemon (netlink and D-Bus sources off,
resync 3600 s) re-attaches and pins it within 1 s.
"""
from __future__ import annotations

import os
import sys
import time

import nmlab
import pytest
from conftest import ROOT, Netmedic, fdb_entry, is_sticky_pin, nm_env

from netmedic.lab import tap_mac_for, write_domain_xml
from netmedic.sources import render_script, render_udev_rule

VM_MAC = "52:54:00:12:34:57"

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.skipif(not os.path.exists(nmlab.UDEVD) or not os.path.exists("/usr/bin/unshare"),
                                 reason="systemd-udevd missing: scripts/nm-test-env.sh")]


def _wait(cond, timeout, what, proc=None):
    t0 = time.monotonic()
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(what)
        time.sleep(0.02)


@pytest.fixture
def udevhost(topo, tmp_path):
    host, vm = topo.netns("host", ipv6=False), topo.netns("vm", ipv6=False)
    lab = nmlab.NMLab(topo, host, str(tmp_path / "lab"))
    domains, networks = str(tmp_path / "domains"), str(tmp_path / "networks")
    os.makedirs(networks)
    write_domain_xml(domains, "vm2", [{"mac": VM_MAC, "bridge": "br0", "tap": "vnet0"}])
    nm = Netmedic(topo, host, tmp_path, domains, networks)
    sock = str(tmp_path / "sock" / "netmedic.sock")
    program = str(tmp_path / "netmedic-udev")
    with open(program, "w") as fh:
        fh.write(render_script("netmedic-udev", sys.executable, env={"NETMEDIC_SOCKET": sock}, pythonpath=ROOT))
    os.chmod(program, 0o755)
    lab.install_udev_rule("90-netmedic.rules", render_udev_rule(program, socket=sock))
    topo.bridge(host, "br0")
    return topo, host, vm, lab, nm, sock


def test_new_tap_of_a_known_vm_is_handled_via_the_udev_rule(udevhost):
    topo, host, vm, lab, nm, sock = udevhost
    udevd = lab.start_udevd()
    argv = nm.argv("daemon", "--no-dbus", "--no-netlink", "--resync", "3600", "--socket", sock)
    daemon = topo.spawn(host, *argv, env=nm_env(), stdout=open(os.path.join(nm.workdir, "daemon.log"), "w"))
    _wait(lambda: nm.audit("reconciled"), 15, "the daemon did not start", daemon)
    n0 = len(nm.audit("reconciled"))

    t0 = time.monotonic()
    topo.veth(host, "vnet0", vm, "eth0", mac_a=tap_mac_for(VM_MAC), mac_b=VM_MAC)  # detached
    _wait(lambda: (topo.link(host, "vnet0") or {}).get("master") == "br0"
          and is_sticky_pin(fdb_entry(topo, host, "br0", VM_MAC), "vnet0"), 1.0,
          "the new tap was not attached and pinned within 1 s: " + lab.log("udevd.log")[-1500:], daemon)
    print(f"new tap attached and pinned {time.monotonic() - t0:.3f} s after it was created")
    _wait(lambda: any(r["trigger"].startswith("event: udev add") for r in nm.audit("reconciled")[n0:]), 2,
          "the reconcile was not triggered by the udev event")
    heals = [r for r in nm.audit("healed") if r.get("kind") == "detached"]
    assert heals and heals[0]["trigger"].startswith("event: udev add"), heals

    # remove: the tap goes away; the event reaches the daemon too (nothing to heal)
    topo.run(host, "ip", "link", "del", "vnet0")
    _wait(lambda: any(r["trigger"].startswith("event: udev remove") for r in nm.audit("reconciled")[n0:]), 2,
          "no reconcile for the udev remove event", daemon)
    os.killpg(daemon.pid, 15)
    assert daemon.wait(10) == 0
    lab.kill_udevd()
    assert udevd.poll() is not None


def test_udev_program_returns_at_once_without_a_daemon(udevhost, tmp_path):
    topo, host, _vm, lab, _nm, _sock = udevhost
    program = str(tmp_path / "netmedic-udev")
    t0 = time.monotonic()
    res = topo.run(host, program, env={"ACTION": "add", "INTERFACE": "br0", "IFINDEX": "2"})  # no PATH
    assert res.returncode == 0 and time.monotonic() - t0 < 1.0
