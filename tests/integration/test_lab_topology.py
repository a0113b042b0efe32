"""The lab's physics, judged by connectivity and by the kernel's own state (iproute2's `bridge`/`tc`).

What netmedic relies on: a switch that reflects the VM's broadcasts into the uplink makes the bridge
learn the VM's MAC on the uplink and cuts the VM off; a plain `static` entry does not hold; a
`static sticky` entry on the tap does, while the reflection goes on. Plus: a Topology always cleans up.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET

import pytest

from netmedic.lab import (
    SeedLab,
    Topology,
    build_seed_case,
)

needs_netns = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                       reason="needs root and iproute2 (creates network namespaces)"),
]


def netns(func):
    for mark in needs_netns:
        func = mark(func)
    return func


def netns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def master_ports(lab: SeedLab, mac: str) -> list[dict]:
    """The bridge's forwarding entries (not ports' own `self` entries) for `mac`."""
    return [e for e in lab.topo.fdb(lab.host, lab.bridge)
            if e["mac"] == mac and e.get("master") == lab.bridge and "self" not in e.get("flags", [])]


def ports_of(lab: SeedLab, mac: str) -> list[str]:
    return [e["ifname"] for e in master_ports(lab, mac)]


def flush_vm_neighbours(lab: SeedLab) -> None:
    """Forget the gateway's MAC: the VM's next packet starts with a broadcast ARP request."""
    lab.topo.run(lab.vm, "ip", "neigh", "flush", "dev", "eth0")


@pytest.fixture
def topo():
    with Topology(prefix="nmtlab") as t:
        yield t
    assert not set(t.namespaces) & netns_list()


# ---------------------------------------------------------------------------------------------------
# Physics (root, namespaces)


@netns
def test_without_reflection_the_vm_reaches_its_gateway(topo, tmp_path):
    t0 = time.monotonic()
    lab = build_seed_case(topo, str(tmp_path), reflect=False)
    assert time.monotonic() - t0 < 5

    assert lab.topo.ping(lab.vm, lab.gw_ip, count=3, interval=0.1, timeout=1.0, min_replies=3)
    assert ports_of(lab, lab.vm_mac) == ["vnet0"]
    # the host end of the "tap" looks like a libvirt tap, and the domain's run-state XML names it
    assert topo.link(lab.host, "vnet0")["address"] == "fe:54:00:12:34:56"
    assert topo.link(lab.host, "vnet0")["master"] == "br0"
    assert topo.link(lab.host, "nosuchdev") is None
    iface = ET.parse(os.path.join(lab.domain_xml_dir, "seedvm.xml")).find("domain/devices/interface")
    assert iface.find("target").get("dev") == "vnet0"
    assert iface.find("mac").get("address") == lab.vm_mac
    assert iface.find("source").get("bridge") == "br0"
    assert os.listdir(lab.network_xml_dir) == []


@netns
def test_reflected_broadcasts_poison_the_fdb_and_cut_the_vm_off(topo, tmp_path):
    lab = build_seed_case(topo, str(tmp_path), reflect=True)
    # IPv6 is off in the lab: the guest MAC is unknown until the guest's first frame
    assert ports_of(lab, lab.vm_mac) == []

    assert not topo.ping(lab.vm, lab.gw_ip, count=2, interval=0.2, timeout=0.3)
    assert ports_of(lab, lab.vm_mac) == ["uplink0"]  # learned on the uplink, not on vnet0
    assert topo.reflected_packets(lab.switch, "sw0") >= 1

    t0 = time.monotonic()
    assert not topo.ping(lab.vm, lab.gw_ip, count=10, interval=0.2, timeout=0.2)  # not one reply
    assert time.monotonic() - t0 >= 1.8
    assert ports_of(lab, lab.vm_mac) == ["uplink0"]


@netns
def test_static_sticky_pin_on_the_tap_holds_while_reflection_continues(topo, tmp_path):
    lab = build_seed_case(topo, str(tmp_path), reflect=True)
    assert not topo.ping(lab.vm, lab.gw_ip, count=2, interval=0.2, timeout=0.3)
    assert ports_of(lab, lab.vm_mac) == ["uplink0"]

    # a plain static entry is moved by learning (and stays flagged static): not a fix
    topo.run(lab.host, "bridge", "fdb", "replace", lab.vm_mac, "dev", "vnet0", "master", "static")
    flush_vm_neighbours(lab)
    assert not topo.ping(lab.vm, lab.gw_ip, count=2, interval=0.2, timeout=0.3)
    [entry] = master_ports(lab, lab.vm_mac)
    assert (entry["ifname"], entry["state"]) == ("uplink0", "static")

    # the fix netmedic automates
    topo.run(lab.host, "bridge", "fdb", "replace", lab.vm_mac, "dev", "vnet0", "master", "static", "sticky")
    [entry] = master_ports(lab, lab.vm_mac)
    assert (entry["ifname"], entry["state"]) == ("vnet0", "static")
    assert "sticky" in entry["flags"]

    for _ in range(3):
        before = topo.reflected_packets(lab.switch, "sw0")
        flush_vm_neighbours(lab)  # next ping starts with an ARP broadcast, which is reflected
        assert topo.ping(lab.vm, lab.gw_ip, count=4, interval=0.05, timeout=1.0, min_replies=4)
        assert topo.reflected_packets(lab.switch, "sw0") > before
        assert ports_of(lab, lab.vm_mac) == ["vnet0"]


@netns
def test_close_removes_every_namespace_and_process_even_after_a_failure(tmp_path):
    outsider = None
    with pytest.raises(RuntimeError, match="boom"):
        with Topology(prefix="nmtlab") as t:
            lab = build_seed_case(t, str(tmp_path / "w"))
            names = t.namespaces
            assert len(names) == 4 and set(names) <= netns_list()
            spawned = t.spawn(lab.vm, "sh", "-c", "sleep 300 & echo $!; wait", stdout=subprocess.PIPE)
            grandchild = int(spawned.stdout.readline())
            # started behind the Topology's back: killed by PID too, since its namespace goes away
            outsider = subprocess.Popen(["ip", "netns", "exec", lab.gw, "sleep", "300"])
            raise RuntimeError("boom")
    try:
        assert not set(names) & netns_list()
        assert spawned.wait(timeout=5) is not None
        assert outsider.wait(timeout=5) is not None
        assert not os.path.isdir(lab.domain_xml_dir) and not os.path.isdir(lab.network_xml_dir)
        # the spawned process's own child went with its process group (gone, or a zombie of init)
        try:
            with open(f"/proc/{grandchild}/stat") as fh:
                assert fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except FileNotFoundError:
            pass
        t.close()  # twice is fine
        assert t.namespaces == []
        with pytest.raises(RuntimeError, match="closed"):
            t.netns("again")
    finally:
        if outsider is not None and outsider.poll() is None:
            outsider.kill()
            outsider.wait()


@netns
def test_namespace_names_are_unique_per_topology_and_methods_stay_in_them():
    with Topology(prefix="nmtlab") as a, Topology(prefix="nmtlab") as b:
        na, nb = a.netns("x"), b.netns("x")
        assert na != nb and na.startswith("nmtlab") and na.endswith("-x")
        with pytest.raises(ValueError, match="not a namespace of this Topology"):
            a.bridge(nb, "br0")
        a.bridge(na, "br0", mtu=9000)
        info = a.link(na, "br0")
        assert info["mtu"] == 9000 and info["linkinfo"]["info_data"]["stp_state"] == 0
        assert a.sysctl(na, "net.ipv4.ip_forward", 1) == "1"
        assert a.run(na, "false", check=False).returncode == 1
        with pytest.raises(RuntimeError, match=r"^\S*ip netns exec \S+ false failed \(exit 1\)"):
            a.run(na, "false")


# ---------------------------------------------------------------------------------------------------
# Validation and XML (no root needed)


