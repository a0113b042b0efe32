"""`netmedic diagnose` answers the questions of the four troubleshooting guides, on real namespaces, each
judged by what diagnose names first: a guest that never sends, DHCP blocked on the uplink side, DHCP
answered (a real dnsmasq and a real DHCP client, busybox udhcpc, in the guest namespace), OFFERs with a
bad UDP checksum (a raw-socket responder) that udhcpc drops, a macvtap
guest its host cannot reach (a real macvtap device), a routing conflict. And diagnose's verdicts are
the invariants': it names no invariant in its code, and for every injected fault `check` and
`diagnose` name the same cause."""
from __future__ import annotations

import glob
import os
import re
import sys
import time

import pytest
from conftest import Netmedic
from diagnose_helpers import diagnose_json, first_broken, hop

from netmedic import lab as netlab
from netmedic.policies import INVARIANTS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VM_MAC = "52:54:00:aa:00:01"

# `count` broadcast ARP requests from a raw socket, 10 ms apart (traffic the bridge floods to every port).
_BROADCAST = r"""
import socket, struct, sys, time
mac, dev, count = bytes.fromhex(sys.argv[1].replace(":", "")), sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((dev, 0))
ip = bytes([198, 51, 100, 1])
frame = b"\xff" * 6 + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\0" * 6 + ip
for _ in range(count):
    s.send(frame)
    time.sleep(0.01)
"""


# A DHCP server on a raw socket that answers each DISCOVER on `dev` with a well-formed OFFER (198.51.100.50
# from 198.51.100.1), its UDP checksum the correct one or, with "bad", that value XOR 0xFFFF (never 0). It
# writes `ready` once bound and quits after `seconds`; the test's Topology ends it by PID in teardown.
_OFFERER = r"""
import socket, struct, sys, time
dev, bad, ready, seconds = sys.argv[1], sys.argv[2] == "bad", sys.argv[3], float(sys.argv[4])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((dev, 3))
s.settimeout(0.5)
mac, server, offered = s.getsockname()[4], bytes([198, 51, 100, 1]), bytes([198, 51, 100, 50])
open(ready, "w").close()

def fold(data):
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

def msgtype(opts):
    i = 0
    while i + 2 < len(opts) and opts[i] != 255:
        if opts[i] == 0:
            i += 1
            continue
        if opts[i] == 53:
            return opts[i + 2]
        i += 2 + opts[i + 1]

end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        frame, addr = s.recvfrom(2048)
    except socket.timeout:
        continue
    if addr[2] == 4 or len(frame) < 282 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        continue
    u = 14 + (frame[14] & 15) * 4
    b = frame[u + 8:]
    if struct.unpack_from("!H", frame, u + 2)[0] != 67 or b[236:240] != b"\x63\x82\x53\x63" \
            or msgtype(b[240:]) != 1:
        continue
    bootp = (bytes([2, 1, 6, 0]) + b[4:8] + b"\0\0" + b[10:12] + b"\0" * 4 + offered + server + b"\0" * 4
             + b[28:44] + b"\0" * 192 + b"\x63\x82\x53\x63" + bytes([53, 1, 2, 54, 4]) + server
             + bytes([51, 4, 0, 0, 14, 16, 1, 4, 255, 255, 255, 0, 255]))
    bootp += b"\0" * (300 - len(bootp))
    dst = b"\xff" * 4
    udp = struct.pack("!HHHH", 67, 68, 8 + len(bootp), 0) + bootp
    csum = fold(server + dst + struct.pack("!BBH", 0, 17, len(udp)) + udp) or 0xFFFF
    if bad:
        csum = (csum ^ 0xFFFF) or 1
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, server, dst)
    ip = ip[:10] + struct.pack("!H", fold(ip)) + ip[12:]
    s.send(b[28:34] + mac + b"\x08\x00" + ip + udp)
"""


def test_diagnose_names_no_invariant():
    """diagnose maps the violations onto hops through the plugins' HOP/HOPS declarations: no invariant's
    name appears in its code."""
    files = glob.glob(os.path.join(ROOT, "netmedic", "diagnose", "*.py"))
    assert files
    for path in files:
        with open(path) as fh:
            text = fh.read()
        for name in INVARIANTS:
            assert not re.search(rf"\b{name}\b", text), f"{os.path.basename(path)} names invariant {name}"
    for inv in INVARIANTS.values():  # and every violation kind lands on a hop diagnose walks
        from netmedic.plugin import HOP_NAMES

        assert {inv.HOP, *inv.HOPS.values()} <= set(HOP_NAMES)


class Lan:
    pass


def build_lan(topo, tmp_path, dhcp: bool = True) -> Lan:
    """host: br0 with uplink0 to a `lan` namespace (198.51.100.1/24, a real dnsmasq serving DHCP when
    `dhcp`) and the VM's tap vnet0 to a `vm` namespace whose eth0 has no address. IPv6 off everywhere:
    nobody sends a frame of its own."""
    lan = Lan()
    lan.topo = topo
    lan.host, lan.vm, lan.lan = (topo.netns(n, ipv6=False) for n in ("host", "vm", "lan"))
    topo.bridge(lan.host, "br0")
    topo.veth(lan.host, "uplink0", lan.lan, "eth0")
    topo.enslave(lan.host, "uplink0", "br0")
    topo.veth(lan.host, "vnet0", lan.vm, "eth0", mac_a="fe:54:00:aa:00:01", mac_b=VM_MAC)
    topo.enslave(lan.host, "vnet0", "br0")
    topo.addr(lan.lan, "eth0", "198.51.100.1/24")
    doms, nets = tmp_path / "domains", tmp_path / "networks"
    doms.mkdir()
    nets.mkdir()
    netlab.write_domain_xml(str(doms), "guestvm", [{"mac": VM_MAC, "bridge": "br0", "tap": "vnet0"}])
    lan.nm = Netmedic(topo, lan.host, tmp_path, str(doms), str(nets))
    lan.leases = str(tmp_path / "lan.leases")
    if dhcp:
        lan.dnsmasq = topo.spawn(lan.lan, "/usr/sbin/dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
                                 "--port=0", "--bind-interfaces", "--interface=eth0", "--except-interface=lo",
                                 "--user=root", "--pid-file=", f"--dhcp-leasefile={lan.leases}",
                                 "--dhcp-range=198.51.100.50,198.51.100.99,255.255.255.0,1h", "--dhcp-authoritative",
                                 stdout=open(os.devnull, "w"), stderr=open(os.devnull, "w"))
        time.sleep(0.3)
    return lan


def start_udhcpc(lan, delay: float = 2.0):
    """busybox udhcpc in the guest namespace, after `delay` (so diagnose's watch is already on): 8
    DISCOVERs 2 s apart at most, quits once it has a lease (the lease script does nothing)."""
    code = ("import os, sys, time; time.sleep(float(sys.argv[1])); "
            "os.execv('/usr/bin/busybox', ['busybox', 'udhcpc', '-i', 'eth0', '-f', '-q', '-n', '-t', '8', "
            "'-T', '2', '-s', '/bin/true'])")
    return lan.topo.spawn(lan.vm, sys.executable, "-c", code, str(delay), stdout=open(os.devnull, "w"),
                          stderr=open(os.devnull, "w"))


def _kinds(check: dict) -> set:
    return {(v["invariant"], v["kind"]) for v in check["violations"]}


def test_a_guest_that_never_sends(topo, tmp_path):
    """The silent guest: the bridge delivers the LAN's broadcasts to its tap, nothing comes back."""
    lan = build_lan(topo, tmp_path, dhcp=False)
    topo.run(lan.lan, sys.executable, "-c", _BROADCAST, "02:00:00:00:00:99", "eth0", "80", timeout=30)
    report = diagnose_json(lan.nm, "guestvm", "--leases-dir", str(tmp_path), expect=(1,))
    assert first_broken(report) == 2, report["headline"]
    assert report["first_broken"]["cause"] == {"invariant": "guest_silent", "kind": "guest_silent"}
    assert "the guest has sent nothing" in report["first_broken"]["summary"]
    assert "driver" in report["first_broken"]["fix"]
    counters = hop(report, 2)["evidence"]["counters"]
    assert counters["from_guest"] == 0 and counters["from_guest_recent"] == 0 and counters["to_guest"] >= 50
    assert ("guest_silent", "guest_silent") in _kinds(lan.nm.check_json())
    # The guest speaks once: no longer silent.
    topo.run(lan.vm, sys.executable, "-c", _BROADCAST, VM_MAC, "eth0", "1", timeout=30)
    report = diagnose_json(lan.nm, "guestvm", "--leases-dir", str(tmp_path))
    assert hop(report, 2)["verdict"] == "ok" and hop(report, 2)["evidence"]["counters"]["from_guest"] >= 1


def test_dhcp_blocked_on_the_uplink_side(topo, tmp_path):
    """DISCOVER seen on the tap and out of the uplink, no OFFER back: the LAN's DHCP server does not answer
    (here a firewall in front of it drops the requests)."""
    lan = build_lan(topo, tmp_path)
    topo.run(lan.lan, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", "67", "-j", "DROP")
    client = start_udhcpc(lan)
    report = diagnose_json(lan.nm, "guestvm", "--leases-dir", str(tmp_path), "--probe", "--probe-seconds", "0.5",
                           "--dhcp-seconds", "7", expect=(1,))
    assert first_broken(report) == 10, report["headline"]
    ev = hop(report, 10)["evidence"]
    assert "DISCOVER in" in ev["seen"]["vnet0"] and "DISCOVER out" in ev["seen"]["uplink0"]
    assert not any(s.startswith("OFFER") for seen in ev["seen"].values() for s in seen)
    summary = report["first_broken"]["summary"]
    assert "no DHCPOFFER came back" in summary and "DHCP snooping" in summary
    assert ev["why_this_long"] and ev["window_seconds"] == 7
    client.wait(30)
    assert not os.path.exists(lan.leases) or VM_MAC not in open(lan.leases).read()


def test_dhcp_answered(topo, tmp_path):
    """A real dnsmasq on the LAN answers a real DHCP client in the guest: the whole exchange is seen on the
    tap and the uplink, hop 10 is ok and the watch ends at the ACK."""
    lan = build_lan(topo, tmp_path)
    client = start_udhcpc(lan)
    t0 = time.monotonic()
    report = diagnose_json(lan.nm, "guestvm", "--leases-dir", str(tmp_path), "--probe", "--probe-seconds", "0.5",
                           "--dhcp-seconds", "15", expect=(0,))
    assert time.monotonic() - t0 < 14, "the watch did not end at the ACK"
    h = hop(report, 10)
    assert h["verdict"] == "ok" and "lease obtained" in h["summary"], h
    assert h["evidence"]["stopped_at_ack"] is True
    assert {"DISCOVER in", "REQUEST in", "OFFER out", "ACK out"} <= set(h["evidence"]["seen"]["vnet0"])
    assert {"OFFER in", "ACK in"} <= set(h["evidence"]["seen"]["uplink0"])
    assert report["first_broken"] is None
    # dnsmasq's replies cross the veths with their checksum left to offload (PACKET_AUXDATA's
    # TP_STATUS_CSUMNOTREADY): "partial", and udhcpc (which honours it) takes them — no checksum verdict.
    offers = [e for e in h["evidence"]["events"] if e["type"] == "OFFER" and e["interface"] == "vnet0"]
    assert offers and {e["udp_checksum"] for e in offers} == {"partial"}, offers
    client.wait(30)
    with open(lan.leases) as fh:
        assert VM_MAC in fh.read(), "dnsmasq holds no lease for the VM"


def start_offerer(lan, tmp_path, bad: bool):
    """_OFFERER in the lan namespace on eth0 (instead of dnsmasq: build_lan(..., dhcp=False)), once bound."""
    ready = tmp_path / "offerer.ready"
    proc = lan.topo.spawn(lan.lan, sys.executable, "-c", _OFFERER, "eth0", "bad" if bad else "good", str(ready),
                          "60")
    deadline = time.monotonic() + 10
    while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ready.exists(), "the DHCP responder did not start"
    return proc


def test_dhcp_offers_with_a_bad_udp_checksum(topo, tmp_path):
    """The LAN's server sends OFFERs whose UDP checksum is wrong: busybox udhcpc in the guest verifies it,
    drops each OFFER and sends DISCOVER again. Hop 10 names the checksum (found vs expected, on which
    events) and the fix (checksum fill, or tx offload off), on the LAN server's host."""
    lan = build_lan(topo, tmp_path, dhcp=False)
    start_offerer(lan, tmp_path, bad=True)
    client = start_udhcpc(lan)
    report = diagnose_json(lan.nm, "guestvm", "--leases-dir", str(tmp_path), "--probe", "--probe-seconds", "0.5",
                           "--dhcp-seconds", "8", expect=(1,))
    assert first_broken(report) == 10, report["headline"]
    h = hop(report, 10)
    summary, fix = report["first_broken"]["summary"], report["first_broken"]["fix"]
    assert "the OFFERs reaching the guest carry a bad UDP checksum" in summary, summary
    assert "the guest's DHCP client drops them and asks again" in summary
    assert "--checksum-fill" in fix and "mangle POSTROUTING" in fix and "`ethtool -K DEV tx off`" in fix, fix
    assert "the LAN's DHCP server" in fix and "already bad on uplink0" in fix, fix
    bad = h["evidence"]["bad_udp_checksum"]
    # The responder sends the correct checksum XOR 0xFFFF: what the probe expects is the correct one.
    assert int(bad["found"], 16) ^ int(bad["expected"], 16) == 0xFFFF, bad
    assert bad["already_bad_on"] == ["uplink0"] and bad["events"], bad
    assert all(e["interface"] == "vnet0" and e["type"] == "OFFER" and e["direction"] == "out"
               and e["udp_checksum"] == "bad" for e in bad["events"])
    events = h["evidence"]["events"]
    assert {e["udp_checksum"] for e in events if e["type"] == "OFFER"} == {"bad"}
    # udhcpc computes its own checksums: its DISCOVERs verify, and it asked again after an OFFER.
    discovers = [e for e in events if e["type"] == "DISCOVER" and e["interface"] == "vnet0"]
    assert len(discovers) >= 2 and {e["udp_checksum"] for e in discovers} == {"ok"}
    assert "REQUEST in" not in h["evidence"]["seen"]["vnet0"]
    client.wait(30)


def test_dhcp_offers_with_a_good_udp_checksum_are_not_blamed(topo, tmp_path):
    """The control: the same responder with the correct checksum. udhcpc takes the OFFER and REQUESTs (no ACK
    comes: the responder answers DISCOVERs only); no checksum verdict, every OFFER's checksum is ok."""
    lan = build_lan(topo, tmp_path, dhcp=False)
    start_offerer(lan, tmp_path, bad=False)
    client = start_udhcpc(lan)
    report = diagnose_json(lan.nm, "guestvm", "--leases-dir", str(tmp_path), "--probe", "--probe-seconds", "0.5",
                           "--dhcp-seconds", "6", expect=(1,))
    h = hop(report, 10)
    assert "REQUEST in" in h["evidence"]["seen"]["vnet0"] and "OFFER out" in h["evidence"]["seen"]["vnet0"]
    assert "checksum" not in h["summary"] and "bad_udp_checksum" not in h["evidence"], h["summary"]
    assert "REQUEST got no ACK" in h["summary"], h["summary"]
    offers = [e for e in h["evidence"]["events"] if e["type"] == "OFFER"]
    assert offers and {e["udp_checksum"] for e in offers} == {"ok"}
    client.kill()
    client.wait(10)


def _direct_domain_xml(directory, name, mac, dev, parent, mode) -> None:
    with open(os.path.join(directory, f"{name}.xml"), "w") as fh:
        fh.write(f"""<domstatus state='running' reason='booted' pid='{os.getpid()}'>
  <domain type='kvm' id='7'>
    <name>{name}</name>
    <uuid>4d2c5a0e-2f0b-4c43-9a34-9d5f6f3c0a01</uuid>
    <devices>
      <interface type='direct'>
        <mac address='{mac}'/>
        <source dev='{parent}' mode='{mode}'/>
        <target dev='{dev}'/>
        <model type='virtio'/>
      </interface>
    </devices>
  </domain>
</domstatus>
""")


def test_a_macvtap_guest_the_host_cannot_reach(topo, tmp_path):
    """A real macvtap in bridge mode on the host's eth1: host and guest are cut off by design. diagnose walks
    the NIC's own path and names the isolation with its fixes; a host macvlan in bridge mode ends it."""
    host, lan = topo.netns("host", ipv6=False), topo.netns("lan", ipv6=False)
    topo.veth(host, "eth1", lan, "eth0")
    topo.addr(host, "eth1", "198.51.100.1/24")
    topo.run(host, "ip", "link", "add", "link", "eth1", "name", "macvtap0", "address", VM_MAC, "type", "macvtap",
             "mode", "bridge")
    topo.set_up(host, "macvtap0")
    doms, nets = tmp_path / "domains", tmp_path / "networks"
    doms.mkdir()
    nets.mkdir()
    _direct_domain_xml(str(doms), "tapvm", VM_MAC, "macvtap0", "eth1", "bridge")
    nm = Netmedic(topo, host, tmp_path, str(doms), str(nets))
    report = diagnose_json(nm, "tapvm", "--leases-dir", str(tmp_path), expect=(0,))
    assert report["path"] == "direct" and [h["name"] for h in report["hops"]] == ["nic", "direct", "isolation", "ip"]
    assert report["verdict"] == "risk" and report["headline"].startswith("No broken hop; at risk: hop 3 (host <-> guest)")
    iso = hop(report, 3)
    assert iso["cause"] == {"invariant": "macvtap_isolation", "kind": "host_isolated"}
    assert "bridge mode" in iso["summary"] and "macvlan" in iso["fix"] and "Linux bridge" in iso["fix"]
    dev = hop(report, 2)["evidence"]
    assert (dev["kind"], dev["mode"], dev["parent"], dev["parent_carrier"]) == ("macvtap", "bridge", "eth1", True)
    assert ("macvtap_isolation", "host_isolated") in _kinds(nm.check_json())
    # The fix the hop names: a macvlan in bridge mode on the parent, carrying the host's address.
    topo.run(host, "ip", "link", "add", "link", "eth1", "name", "mvhost", "type", "macvlan", "mode", "bridge")
    topo.set_up(host, "mvhost")
    topo.addr(host, "mvhost", "198.51.100.2/24")
    report = diagnose_json(nm, "tapvm", "--leases-dir", str(tmp_path), expect=(0,))
    assert hop(report, 3)["verdict"] == "ok" and report["verdict"] == "healthy", report["headline"]
    # The parent loses its carrier: the VM is cut off (hop 2).
    topo.set_up(lan, "eth0", up=False)
    report = diagnose_json(nm, "tapvm", "--leases-dir", str(tmp_path), expect=(1,))
    assert first_broken(report) == 2 and report["first_broken"]["cause"]["kind"] == "parent_down"


def _routed_vm(topo, tmp_path):
    lan = Lan()
    lan.topo = topo
    lan.host, lan.vm, lan.ctr = (topo.netns(n, ipv6=False) for n in ("host", "vm", "ctr"))
    topo.bridge(lan.host, "br0")
    topo.addr(lan.host, "br0", "203.0.113.1/24")
    topo.veth(lan.host, "vnet0", lan.vm, "eth0", mac_a="fe:54:00:aa:00:01", mac_b=VM_MAC)
    topo.enslave(lan.host, "vnet0", "br0")
    topo.addr(lan.vm, "eth0", "203.0.113.10/24")
    topo.veth(lan.host, "ctr0", lan.ctr, "eth0")
    doms, nets = tmp_path / "domains", tmp_path / "networks"
    doms.mkdir()
    nets.mkdir()
    netlab.write_domain_xml(str(doms), "guestvm", [{"mac": VM_MAC, "bridge": "br0", "tap": "vnet0"}])
    lan.nm = Netmedic(topo, lan.host, tmp_path, str(doms), str(nets))
    assert topo.ping(lan.vm, "203.0.113.1", count=1, timeout=1.0)  # the host learns the VM's address
    return lan


def test_a_routing_conflict(topo, tmp_path):
    """The VM's address lies in br0's subnet, but a more specific route (a container network, a VPN) sends
    the host's packets to it out of ctr0: host and VM cannot talk. Named at hop 7 with the route."""
    lan = _routed_vm(topo, tmp_path)
    report = diagnose_json(lan.nm, "guestvm", "--leases-dir", str(tmp_path), expect=(0,))
    assert hop(report, 7)["verdict"] == "ok" and hop(report, 7)["evidence"]["routes"][0]["oif"] == "br0"
    topo.run(lan.host, "ip", "route", "add", "203.0.113.0/28", "dev", "ctr0")
    assert not topo.ping(lan.vm, "203.0.113.1", count=1, timeout=0.5), "the conflict should cut host and VM"
    report = diagnose_json(lan.nm, "guestvm", "--leases-dir", str(tmp_path), expect=(1,))
    assert first_broken(report) == 7, report["headline"]
    assert report["first_broken"]["cause"] == {"invariant": "route_conflict", "kind": "route_elsewhere"}
    assert "203.0.113.0/28 dev ctr0" in report["first_broken"]["summary"]
    assert hop(report, 7)["evidence"]["routes"] == [{"address": "203.0.113.10", "oif": "ctr0",
                                                     "route": "203.0.113.0/28 dev ctr0 table 254"}]
    assert ("route_conflict", "route_elsewhere") in _kinds(lan.nm.check_json())


def test_the_vm_subnet_on_a_second_host_interface(topo, tmp_path):
    lan = _routed_vm(topo, tmp_path)
    topo.addr(lan.host, "ctr0", "203.0.113.200/24")
    report = diagnose_json(lan.nm, "guestvm", "--leases-dir", str(tmp_path), expect=(1,))
    assert first_broken(report) == 7
    found = {(f["invariant"], f["kind"]) for f in hop(report, 7)["findings"]}
    assert ("route_conflict", "subnet_on_other_interface") in found
    assert "ctr0 also has an address in 203.0.113.0/24" in hop(report, 7)["summary"]


# --- check and diagnose name the same cause, for every fault the tests can inject ----------------------
def _detached(lab):
    lab.topo.release(lab.host, lab.tap)


def _not_forwarding(lab):
    lab.topo.run(lab.host, "bridge", "link", "set", "dev", lab.tap, "state", "2")


def _stp_forward_delay(lab):
    for args in (("type", "bridge", "stp_state", "1"), ("type", "bridge", "forward_delay", "3000")):
        lab.topo.run(lab.host, "ip", "link", "set", "dev", lab.bridge, *args)
    lab.topo.set_up(lab.host, lab.tap, up=False)
    lab.topo.set_up(lab.host, lab.tap)


def _mtu(lab):
    lab.topo.run(lab.host, "ip", "link", "set", "dev", lab.tap, "mtu", "1400")
    lab.topo.run(lab.host, "ip", "link", "set", "dev", lab.bridge, "mtu", "1500")


def _ip_on_port(lab):
    lab.topo.addr(lab.host, lab.uplink, "198.51.100.5/24")


def _forward_drop(lab):
    lab.topo.run(lab.host, "iptables-nft", "-P", "FORWARD", "DROP")


def _no_learning_no_flood(lab):
    lab.topo.run(lab.host, "bridge", "link", "set", "dev", lab.tap, "learning", "off", "flood", "off")


def _uplink_down(lab):
    lab.topo.set_up(lab.host, lab.uplink, up=False)


def _tap_down(lab):
    lab.topo.set_up(lab.host, lab.tap, up=False)


def _poisoned(lab):
    lab.poison()


FAULTS = {"detached": _detached, "not_forwarding": _not_forwarding, "stp_forward_delay": _stp_forward_delay,
          "mtu": _mtu, "ip_on_port": _ip_on_port, "forward_drop": _forward_drop,
          "no_learning_no_flood": _no_learning_no_flood, "uplink_down": _uplink_down, "tap_down": _tap_down}


@pytest.mark.parametrize("fault", sorted(FAULTS) + ["poisoned"])
def test_check_and_diagnose_name_the_same_cause(fault, topo, tmp_path, request):
    from conftest import _seed

    lab = _seed(topo, tmp_path, reflect=fault == "poisoned")
    (_poisoned if fault == "poisoned" else FAULTS[fault])(lab)
    check = lab.nm.check_json()
    report = diagnose_json(lab.nm, lab.domain, "--leases-dir", str(tmp_path), expect=(1,))
    cause = report["first_broken"]["cause"]
    assert cause is not None, f"diagnose's first broken hop is its own verdict: {report['headline']}"
    assert (cause["invariant"], cause["kind"]) in _kinds(check), (cause, check["violations"])
    shown = {(f["invariant"], f["kind"]) for h in report["hops"] for f in h["findings"]}
    mine = {(v["invariant"], v["kind"]) for v in check["violations"]
            if v["subject"].get("domain") in (None, lab.domain)}
    assert mine <= shown, f"check reports {mine - shown} that diagnose does not show"
    first_check = [v for v in check["violations"] if v["severity"] == "broken"]
    assert first_check, "check names no broken cause"


def test_the_daemon_tells_diagnose_how_often_the_mac_moved(seed, tmp_path):
    """The founding case after the fact: the daemon (observe mode: it pins nothing) keeps a ring of the
    fdb moves it saw per MAC; diagnose asks it through its socket and shows them on hop 4."""
    import shutil
    import tempfile

    lab = seed
    rundir = tempfile.mkdtemp(prefix="nmd", dir="/tmp")  # a short path: a Unix socket's is at most 107 bytes
    try:
        sock = os.path.join(rundir, "netmedic.sock")
        daemon = lab.nm.daemon("--socket", sock, "--libvirt-uri", "none", "--no-dbus", "--resync", "3600",
                               "--mode", "observe")
        deadline = time.monotonic() + 20
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.exists(sock), "the daemon did not start"
        for _ in range(3):  # tap -> uplink (reflected broadcast) -> tap (the VM talks) ...
            lab.poison()
            lab.topo.ping(lab.vm, lab.gw_ip, count=1, timeout=0.2)
        time.sleep(0.5)
        report = diagnose_json(lab.nm, lab.domain, "--leases-dir", str(tmp_path), "--socket", sock)
        moves = hop(report, 4)["evidence"]["daemon_moves"]
        assert moves["known"] is True and moves["moves_total"] >= 3 and moves["moves_last_60s"] >= 3, moves
        assert {m["to"] for m in moves["recent"]} >= {lab.uplink}
        assert f"the daemon saw it move {moves['moves_last_60s']} time(s) in the last minute" in hop(report, 4)["summary"]
        daemon.terminate()
        daemon.wait(10)
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


def _nat_guest(topo, tmp_path, dhcp_range: bool):
    """A libvirt NAT network (diagnose_helpers.build_natnet) whose dnsmasq serves DHCP on virbr1 or (no
    range) only runs; its pid file beside the network's run-state XML, as libvirt keeps it."""
    from diagnose_helpers import build_natnet

    n = build_natnet(topo, tmp_path, dnsmasq=False)
    n.leases = str(tmp_path / "nat1.leases")
    extra = ["--dhcp-range=203.0.113.50,203.0.113.99,255.255.255.0,1h", f"--dhcp-leasefile={n.leases}",
             "--dhcp-authoritative"] if dhcp_range else []
    proc = topo.spawn(n.host, "/usr/sbin/dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
                      "--bind-interfaces", "--interface=virbr1", "--except-interface=lo", "--user=root", "--pid-file=",
                      *extra, stdout=open(os.devnull, "w"), stderr=open(os.devnull, "w"))
    time.sleep(0.3)
    with open(os.path.join(n.nets, "nat1.pid"), "w") as fh:
        fh.write(f"{proc.pid}\n")
    return n


def test_dhcp_on_a_nat_network_answered_by_its_dnsmasq(topo, tmp_path):
    n = _nat_guest(topo, tmp_path, dhcp_range=True)
    client = start_udhcpc(n)
    report = diagnose_json(n.nm, "natvm", "--leases-dir", str(tmp_path), "--probe", "--probe-seconds", "0.5",
                           "--dhcp-seconds", "15", expect=(0,))
    h = hop(report, 10)
    assert h["verdict"] == "ok" and "lease obtained" in h["summary"], h
    dns = h["evidence"]["dnsmasq"]
    assert dns["alive"] and dns["same_netns"] and dns["listening_udp_67"] is True
    assert {"OFFER out", "ACK out"} <= set(h["evidence"]["seen"]["vnet0"])
    client.wait(30)
    with open(n.leases) as fh:
        assert "52:54:00:00:01:01" in fh.read()


def test_dhcp_on_a_nat_network_whose_dnsmasq_does_not_serve_dhcp(topo, tmp_path):
    """dnsmasq runs (hop 7 is fine) but holds no DHCP socket: the guest's DISCOVER reaches the host and no
    OFFER comes back — hop 10 names the network's dnsmasq."""
    n = _nat_guest(topo, tmp_path, dhcp_range=False)
    start_udhcpc(n)
    report = diagnose_json(n.nm, "natvm", "--leases-dir", str(tmp_path), "--probe", "--probe-seconds", "0.5",
                           "--dhcp-seconds", "6", expect=(1,))
    assert first_broken(report) == 10, report["headline"]
    assert hop(report, 7)["verdict"] == "ok"
    assert "network nat1's dnsmasq is the server and it holds no DHCP socket (UDP 67)" in \
        report["first_broken"]["summary"]
    assert hop(report, 10)["evidence"]["dnsmasq"]["listening_udp_67"] is False


def test_ipv6_neighbours_are_among_the_vm_addresses(topo, tmp_path):
    """The third guide: the host's IPv6 neighbour table (netlink) names the guest's IPv6 addresses too."""
    from diagnose_helpers import build_natnet

    n = build_natnet(topo, tmp_path, dnsmasq=False)
    time.sleep(2.5)  # IPv6 duplicate address detection of the link-local addresses
    # An ICMPv6 echo to all nodes from the guest: the host answers and learns the guest's link-local address.
    topo.run(n.vm, sys.executable, "-c", "import socket, time; s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, "
             "socket.IPPROTO_ICMPV6); s.sendto(b'\\x80\\0\\0\\0\\0\\1\\0\\1', ('ff02::1', 0, 0, "
             "socket.if_nametoindex('eth0'))); time.sleep(0.5)")
    topo.ping(n.vm, "203.0.113.1", count=1, timeout=1.0)
    report = diagnose_json(n.nm, "natvm", "--leases-dir", str(tmp_path))
    ip = hop(report, 8)
    assert ip["evidence"]["address"] == "203.0.113.10" and "fe80::5054:ff:fe00:101" in ip["evidence"]["ipv6"], ip
    assert "IPv6: fe80::5054:ff:fe00:101" in ip["summary"]


def test_a_hostdev_nic_is_walked_on_its_own_path(topo, tmp_path):
    """An SR-IOV VF passed through (type='hostdev'): no tap, no bridge; diagnose names the PCI function and
    says what it cannot see (no VF here: the function is not on this host's bus)."""
    host = topo.netns("host", ipv6=False)
    doms, nets = tmp_path / "domains", tmp_path / "networks"
    doms.mkdir()
    nets.mkdir()
    (doms / "vfvm.xml").write_text(f"""<domstatus state='running' reason='booted' pid='{os.getpid()}'>
  <domain type='kvm' id='8'><name>vfvm</name><uuid>4d2c5a0e-2f0b-4c43-9a34-9d5f6f3c0a02</uuid><devices>
    <interface type='hostdev' managed='yes'><mac address='{VM_MAC}'/>
      <source><address type='pci' domain='0x0000' bus='0xfe' slot='0x1f' function='0x7'/></source>
    </interface>
  </devices></domain>
</domstatus>
""")
    nm = Netmedic(topo, host, tmp_path, str(doms), str(nets))
    report = diagnose_json(nm, "vfvm", "--leases-dir", str(tmp_path), expect=(0,))
    assert report["path"] == "direct" and report["nic"]["kind"] == "hostdev" and report["nic"]["pci"] == "0000:fe:1f.7"
    assert hop(report, 2)["verdict"] == "unknown" and "not on this host's PCI bus" in hop(report, 2)["summary"]
    assert hop(report, 3)["verdict"] == "unknown" and "embedded switch" in hop(report, 3)["summary"]
    assert report["nic"]["tap"] is None and nm.check_json()["violations"] == []
