"""`netmedic diagnose` on real kernel topologies (namespaces the tests own): each fault class the
tests can create here is injected, and diagnose must name its hop first, with the right evidence; a
healthy VM gets a clean report (exit 0). The JSON output is validated against
docs/diagnose.schema.json; the human output of two cases is compared with tests/golden/*.txt."""
from __future__ import annotations

import json
import os
import sys

import pytest
from diagnose_helpers import (
    MASQ,
    build_natnet,
    diagnose,
    diagnose_json,
    first_broken,
    hop,
    normalise,
)

from netmedic.lab import write_domain_xml

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")


def _pinned_and_talking(lab):
    """netmedic's pin on the VM's tap, and traffic through the path."""
    assert lab.nm.heal().returncode == 0
    assert lab.vm_reaches_gateway(count=2)


def _golden(name: str, text: str) -> None:
    path = os.path.join(GOLDEN, name)
    if os.environ.get("NETMEDIC_UPDATE_GOLDEN"):
        with open(path, "w") as fh:
            fh.write(text)
    with open(path) as fh:
        assert text == fh.read(), f"human output differs from {path} (NETMEDIC_UPDATE_GOLDEN=1 rewrites it)"


def test_healthy_vm_gets_a_clean_report(quiet, tmp_path):
    lab = quiet
    _pinned_and_talking(lab)
    report = diagnose_json(lab.nm, lab.domain, "--leases-dir", str(tmp_path), expect=(0,))
    assert report["verdict"] == "healthy" and report["first_broken"] is None
    assert [h["verdict"] for h in report["hops"][:7]] == ["ok"] * 7
    assert hop(report, 4)["evidence"]["entry"] == {"port": "vnet0", "static": True, "sticky": True,
                                                   "local": False}
    assert hop(report, 9)["verdict"] == "unknown"  # not probed: diagnose sends nothing without --probe
    text = diagnose(lab.nm, lab.domain, "--leases-dir", str(tmp_path), expect=(0,)).stdout
    assert "The path looks healthy" in text
    _golden("diagnose_healthy.txt", normalise(text, tmp_path))


def test_fdb_poisoned_by_reflection(seed, tmp_path):
    lab = seed
    lab.poison()
    proc = diagnose(lab.nm, lab.domain, "--leases-dir", str(tmp_path), expect=(1,))
    _golden("diagnose_seed_poisoned.txt", normalise(proc.stdout, tmp_path))
    assert proc.stdout.splitlines()[2].startswith("Most likely cause: hop 4 (fdb)")
    report = diagnose_json(lab.nm, lab.domain, "--leases-dir", str(tmp_path), expect=(1,))
    assert first_broken(report) == 4
    assert hop(report, 4)["evidence"]["entry"]["port"] == lab.uplink
    assert "static sticky on vnet0" in report["first_broken"]["fix"]
    assert hop(report, 6)["verdict"] == "risk" and "reflecting" in hop(report, 6)["summary"]


def test_reflection_is_told_from_a_remote_duplicate_by_the_probe(seed, tmp_path):
    lab, topo = seed, seed.topo
    _pinned_and_talking(lab)
    talker = topo.spawn(lab.vm, sys.executable, "-c", _BROADCASTER, lab.vm_mac, "eth0", "203.0.113.10")
    report = diagnose_json(lab.nm, lab.domain, "--probe", "--probe-seconds", "1.0", expect=(0,))
    seen = hop(report, 5)["evidence"]["probe"]
    assert seen["reflected"] > 0 and seen["remote"] == 0, seen
    assert hop(report, 5)["verdict"] == "ok" and hop(report, 6)["verdict"] == "risk"
    talker.terminate()


# Gratuitous ARP (broadcast) every 50 ms with the given source MAC and IP, from a raw socket.
_BROADCASTER = r"""
import socket, struct, sys, time, ipaddress
mac, dev, ip = bytes.fromhex(sys.argv[1].replace(":", "")), sys.argv[2], ipaddress.IPv4Address(sys.argv[3]).packed
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((dev, 0))
frame = b"\xff" * 6 + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\0" * 6 + ip
for _ in range(600):
    s.send(frame)
    time.sleep(0.05)
"""


def test_remote_duplicate_behind_the_uplink(quiet, tmp_path):
    lab, topo = quiet, quiet.topo
    _pinned_and_talking(lab)
    dup = topo.netns("dup")
    topo.veth(lab.switch, "swdup", dup, "eth0", mac_b=lab.vm_mac)
    topo.enslave(lab.switch, "swdup", "swbr")
    topo.spawn(dup, sys.executable, "-c", _BROADCASTER, lab.vm_mac, "eth0", "203.0.113.20")
    # Without the probe nothing tells a remote duplicate (the sticky pin holds): hop 5 says so.
    report = diagnose_json(lab.nm, lab.domain, expect=(0,))
    assert "remote duplicates not checked" in hop(report, 5)["summary"]
    report = diagnose_json(lab.nm, lab.domain, "--probe", "--probe-seconds", "1.0", expect=(1,))
    assert first_broken(report) == 5
    ev = hop(report, 5)["evidence"]["probe"]
    assert ev["remote"] > 0 and ev["ports"] == [lab.uplink]
    assert "cannot fix" in hop(report, 5)["summary"]
    assert hop(report, 4)["verdict"] == "ok", "the sticky pin holds"


def test_detached_tap(quiet):
    lab, topo = quiet, quiet.topo
    topo.release(lab.host, lab.tap)
    report = diagnose_json(lab.nm, lab.domain, expect=(1,))
    assert first_broken(report) == 3
    assert hop(report, 3)["evidence"]["master"] is None
    assert "enslave vnet0 to br0" in report["first_broken"]["fix"]


def test_port_not_forwarding(quiet):
    lab, topo = quiet, quiet.topo
    topo.run(lab.host, "bridge", "link", "set", "dev", lab.tap, "state", "2")
    report = diagnose_json(lab.nm, lab.domain, expect=(1,))
    assert first_broken(report) == 3
    ev = hop(report, 3)["evidence"]
    assert ev["port_state"] == "learning" and ev["stp"] is False
    assert "set port vnet0 to forwarding" in report["first_broken"]["fix"]


def test_stp_forward_delay(quiet):
    lab, topo = quiet, quiet.topo
    topo.run(lab.host, "ip", "link", "set", "dev", lab.bridge, "type", "bridge", "stp_state", "1")
    topo.run(lab.host, "ip", "link", "set", "dev", lab.bridge, "type", "bridge", "forward_delay", "3000")
    topo.run(lab.host, "ip", "link", "set", "dev", lab.tap, "down")
    topo.run(lab.host, "ip", "link", "set", "dev", lab.tap, "up")
    report = diagnose_json(lab.nm, lab.domain, expect=(1,))
    assert first_broken(report) == 3
    ev = hop(report, 3)["evidence"]
    assert ev["stp"] is True and ev["forward_delay_s"] == 30 and ev["port_state"] in ("listening", "learning")
    assert "forward delay" in hop(report, 3)["summary"]


@pytest.mark.parametrize("iptables", ["iptables-nft", "iptables-legacy"])
def test_forward_drop_with_bridge_netfilter(quiet, iptables):
    lab, topo = quiet, quiet.topo
    _pinned_and_talking(lab)
    topo.run(lab.host, iptables, "-P", "FORWARD", "DROP")
    report = diagnose_json(lab.nm, lab.domain, expect=(1,))
    assert first_broken(report) == 7
    ev = hop(report, 7)["evidence"]
    backend = iptables.split("-")[1]
    assert {"backend": backend, "policy": "DROP", "rules": 0} in ev["forward_chains"]
    assert ev["bridge_nf_call_iptables"]["sysctl"] == "1"
    assert "-I FORWARD 1 -i br0 -o br0 -j ACCEPT" in report["first_broken"]["fix"]


def test_local_duplicate(quiet):
    lab, topo = quiet, quiet.topo
    _pinned_and_talking(lab)
    vm2 = topo.netns("vm2")
    topo.veth(lab.host, "vnet1", vm2, "eth0", mac_a="fe:54:00:12:34:57", mac_b=lab.vm_mac)
    topo.enslave(lab.host, "vnet1", lab.bridge)
    topo.addr(vm2, "eth0", "203.0.113.11/24")
    write_domain_xml(lab.domain_xml_dir, "clonevm", [{"mac": lab.vm_mac, "bridge": lab.bridge,
                                                             "tap": "vnet1"}])
    topo.ping(vm2, lab.gw_ip, count=1, timeout=0.3)
    report = diagnose_json(lab.nm, lab.domain, expect=(1,))
    assert first_broken(report) == 5
    assert hop(report, 5)["evidence"]["local_vms"] == [{"domain": "clonevm", "tap": "vnet1", "bridge": "br0"}]
    clone = diagnose_json(lab.nm, "clonevm", expect=(1,))
    assert first_broken(clone) in (4, 5)  # its MAC is pinned on the original's tap (hop 4 names the clone)
    assert hop(clone, 5)["verdict"] == "broken"


def test_mtu_mismatch(quiet):
    lab, topo = quiet, quiet.topo
    topo.run(lab.host, "ip", "link", "set", "dev", lab.tap, "mtu", "1400")  # the bridge follows: 1400
    topo.run(lab.host, "ip", "link", "set", "dev", lab.bridge, "mtu", "1500")  # set by the admin: no auto-adjust
    report = diagnose_json(lab.nm, lab.domain, expect=(1,))
    assert first_broken(report) == 2
    ev = hop(report, 2)["evidence"]
    assert ev["mtu"] == 1400 and ev["bridge_mtu"] == 1500
    assert "set mtu of vnet0 to 1500" in report["first_broken"]["fix"]


def test_ip_on_an_enslaved_port(quiet):
    lab, topo = quiet, quiet.topo
    topo.addr(lab.host, lab.uplink, "198.51.100.5/24")
    report = diagnose_json(lab.nm, lab.domain, expect=(1,))
    assert first_broken(report) == 6
    up = hop(report, 6)["evidence"]["uplinks"][0]
    assert up["name"] == lab.uplink and up["addresses"] == ["198.51.100.5/24"]
    assert "ip addr add 198.51.100.5/24 dev br0" in report["first_broken"]["fix"]


@pytest.fixture
def natnet(topo, tmp_path):
    return build_natnet(topo, tmp_path)


def test_nat_network_healthy_and_vm_ip_from_the_neighbour_table(natnet, tmp_path):
    assert natnet.topo.ping(natnet.vm, "198.51.100.2", count=2, timeout=0.5)
    report = diagnose_json(natnet.nm, "natvm", "--leases-dir", str(tmp_path), expect=(0,))
    assert [h["verdict"] for h in report["hops"][:7]] in (["ok"] * 7, ["ok"] * 3 + ["risk"] + ["ok"] * 3)
    ip = hop(report, 8)
    assert ip["verdict"] == "ok" and ip["evidence"]["address"] == "203.0.113.10"
    assert ip["evidence"]["source"] == "neighbour" and ip["evidence"]["device"] == "virbr1"
    assert report["vm_ip"] == "203.0.113.10"
    ev = hop(report, 7)["evidence"]
    assert ev["dnsmasq"]["alive"] is True and ev["masquerade"]["203.0.113.0/24"]


def test_vm_ip_from_a_dhcp_lease_file(natnet, tmp_path):
    """Captured libvirt lease file (the real-libvirt lease test lives with the libvirtd tests)."""
    leases = tmp_path / "leases"
    leases.mkdir()
    (leases / "virbr1.status").write_text(json.dumps([
        {"ip-address": "203.0.113.50", "mac-address": "52:54:00:00:01:01", "hostname": "natvm",
         "client-id": "01:52:54:00:00:01:01", "expiry-time": 4102444800},
        {"ip-address": "203.0.113.51", "mac-address": "52:54:00:00:01:01", "expiry-time": 1}]))  # expired
    report = diagnose_json(natnet.nm, "natvm", "--leases-dir", str(leases), expect=(0,))
    ev = hop(report, 8)["evidence"]
    assert ev["address"] == "203.0.113.50" and ev["source"] == "dhcp_lease" and ev["all"] == ["203.0.113.50"]
    assert ev["hostname"] == "natvm"


def test_forwarding_off(natnet):
    natnet.topo.sysctl(natnet.host, "net.ipv4.ip_forward", 0)
    report = diagnose_json(natnet.nm, "natvm", expect=(1,))
    assert first_broken(report) == 7
    ev = hop(report, 7)["evidence"]
    assert ev["ip_forward"] == "0" and ev["forwarding"] == {"virbr1": "0"}
    assert "set net.ipv4.ip_forward = 1" in report["first_broken"]["fix"]


def test_nat_network_without_masquerade(natnet):
    natnet.topo.run(natnet.host, "iptables-nft", *["-D" if a == "-A" else a for a in MASQ])
    report = diagnose_json(natnet.nm, "natvm", expect=(1,))
    assert first_broken(report) == 7
    assert hop(report, 7)["evidence"]["masquerade"] == {"203.0.113.0/24": []}
    assert "iptables -t nat -A POSTROUTING -s 203.0.113.0/24 ! -d 203.0.113.0/24 -j MASQUERADE" \
        in report["first_broken"]["fix"]


def test_nat_network_without_dnsmasq(natnet):
    natnet.dnsmasq.terminate()
    natnet.dnsmasq.wait(10)
    report = diagnose_json(natnet.nm, "natvm", expect=(1,))
    assert first_broken(report) == 7
    dns = hop(report, 7)["evidence"]["dnsmasq"]
    assert dns["alive"] is False and dns["pid"] == natnet.dnsmasq.pid
    assert "dnsmasq is not running" in hop(report, 7)["summary"]
    assert "virtnetworkd" in report["first_broken"]["fix"]


def test_unknown_domain_and_nic_exit_2(quiet):
    lab = quiet
    proc = lab.nm.run("diagnose", "nosuchvm")
    assert proc.returncode == 2 and "nosuchvm" in proc.stderr
    proc = lab.nm.run("diagnose", lab.domain, "--nic", "vnet9")
    assert proc.returncode == 2 and "vnet0" in proc.stderr
    assert diagnose_json(lab.nm, lab.domain, "--nic", lab.tap)["nic"]["tap"] == lab.tap
