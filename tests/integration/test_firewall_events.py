"""Every fact on an event: the daemon (resync 1 h, so only an event can explain a heal) heals forwarding
turned off (netconf events: global, per interface, IPv6) and a firewall that starts dropping a VM bridge
(nf_tables events: an nftables inet chain, iptables-nft's FORWARD policy, a reload removing netmedic's
rule) at once. Everything inside the test's own namespaces; judged by connectivity."""
from __future__ import annotations

import sys
import time

import pytest
from conftest import Netmedic

from netmedic import lab as netlab

# An ICMPv6 echo (the lab's prober is IPv4 only, iputils' ping is often missing): prints 1 when answered.
PING6 = """
import os, select, socket, struct, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
ident = os.getpid() & 0xFFFF
ok = 0
for seq in range(3):
    s.sendto(struct.pack("!BBHHH", 128, 0, 0, ident, seq) + b"netmedic", (sys.argv[1], 0))
    end = time.monotonic() + 0.7
    while not ok and time.monotonic() < end:
        if select.select([s], [], [], max(0, end - time.monotonic()))[0]:
            data, _ = s.recvfrom(2048)
            if data[0] == 129 and struct.unpack("!H", data[4:6])[0] == ident:
                ok = 1
    if ok:
        break
print(ok)
"""


def _wait(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _triggers(nm, invariant):
    """The triggers of the passes that healed a violation of `invariant`."""
    cids = {r.get("correlation_id") for r in nm.audit("healed") if r.get("invariant") == invariant}
    return [r.get("trigger") for r in nm.audit("reconciled") if r.get("correlation_id") in cids]


def _healed(nm, invariant, kind=None):
    return [r for r in nm.audit("healed") if r.get("invariant") == invariant and (kind is None or r["kind"] == kind)]


@pytest.fixture
def natnet6(topo, tmp_path):
    """host: libvirt NAT network nat1 on virbr1 (203.0.113.1/24 and 2001:db8:13::1/64) with the VM's tap
    vnet0, forward device eth1 (198.51.100.1/24, 2001:db8:14::1/64) to `out`, which routes both back."""
    host, vm, out = topo.netns("host"), topo.netns("vm"), topo.netns("out")
    topo.bridge(host, "virbr1")
    topo.addr(host, "virbr1", "203.0.113.1/24")
    topo.veth(host, "vnet0", vm, "eth0", mac_a="fe:54:00:00:01:01", mac_b="52:54:00:00:01:01")
    topo.enslave(host, "vnet0", "virbr1")
    topo.addr(vm, "eth0", "203.0.113.10/24")
    topo.route(vm, "default", "203.0.113.1")
    topo.veth(host, "eth1", out, "eth0")
    topo.addr(host, "eth1", "198.51.100.1/24")
    topo.addr(out, "eth0", "198.51.100.2/24")
    topo.route(out, "203.0.113.0/24", "198.51.100.1")
    for ns, dev, addr in ((host, "virbr1", "2001:db8:13::1/64"), (vm, "eth0", "2001:db8:13::10/64"),
                          (host, "eth1", "2001:db8:14::1/64"), (out, "eth0", "2001:db8:14::2/64")):
        topo.run(ns, "ip", "-6", "addr", "add", addr, "dev", dev, "nodad")
    topo.run(vm, "ip", "-6", "route", "add", "default", "via", "2001:db8:13::1")
    topo.run(out, "ip", "-6", "route", "add", "2001:db8:13::/64", "via", "2001:db8:14::1")
    topo.sysctl(host, "net.ipv4.ip_forward", 1)
    topo.sysctl(host, "net.ipv6.conf.all.forwarding", 1)
    doms, nets = tmp_path / "domains", tmp_path / "networks"
    doms.mkdir()
    nets.mkdir()
    path = netlab.write_network_xml(str(nets), "nat1", "virbr1", forward_mode="nat", ip="203.0.113.1",
                                    netmask="255.255.255.0", forward_dev="eth1")
    with open(path) as fh:  # libvirt's <ip family='ipv6' address=... prefix=...> beside the IPv4 one
        text = fh.read()
    with open(path, "w") as fh:
        fh.write(text.replace("</network>", '<ip family="ipv6" address="2001:db8:13::1" prefix="64"/></network>'))
    netlab.write_domain_xml(str(doms), "natvm", [{"mac": "52:54:00:00:01:01", "network": "nat1",
                                                  "bridge": "virbr1", "tap": "vnet0"}])

    class Net:
        pass
    n = Net()
    n.topo, n.host, n.vm, n.out = topo, host, vm, out
    n.nm = Netmedic(topo, host, tmp_path, str(doms), str(nets))
    n.reaches = lambda count=1: topo.ping(vm, "198.51.100.2", count=count, timeout=0.5)
    n.reaches6 = lambda: topo.run(vm, sys.executable, "-I", "-S", "-c", PING6, "2001:db8:14::2",
                                  check=False).stdout.strip() == "1"
    return n


def test_forwarding_turned_off_is_healed_on_its_netconf_event(natnet6):
    n, topo = natnet6, natnet6.topo
    assert n.reaches() and n.reaches6()
    topo.sysctl(n.host, "net.ipv6.conf.eth1.accept_ra", 1)
    daemon = n.nm.daemon("--resync", "3600", "--no-dbus", "--socket", "none", "--libvirt-uri", "none")
    try:
        assert _wait(lambda: any(r.get("trigger") == "startup" for r in n.nm.audit("reconciled")), 10)

        t0 = time.monotonic()
        topo.sysctl(n.host, "net.ipv4.ip_forward", 0)
        assert _wait(lambda: topo.sysctl(n.host, "net.ipv4.ip_forward") == "1"), "ip_forward not healed"
        assert time.monotonic() - t0 < 2.0
        assert _wait(lambda: topo.sysctl(n.host, "net/ipv4/conf/virbr1/forwarding") == "1")
        assert n.reaches()
        assert any("netconf" in (t or "") for t in _triggers(n.nm, "ip_forwarding"))

        # Per interface: only that interface's network is looked at.
        topo.sysctl(n.host, "net/ipv4/conf/eth1/forwarding", 0)
        assert _wait(lambda: topo.sysctl(n.host, "net/ipv4/conf/eth1/forwarding") == "1"), "eth1 not healed"
        assert n.reaches()
        assert any("ipv4 eth1 forwarding off" in (t or "") for t in _triggers(n.nm, "ip_forwarding"))

        # IPv6: all.forwarding off (it turns every interface's off). accept_ra of the forward device goes
        # from 1 to 2 before forwarding comes back, so the uplink keeps taking router advertisements.
        topo.sysctl(n.host, "net.ipv6.conf.all.forwarding", 0)
        assert _wait(lambda: topo.sysctl(n.host, "net.ipv6.conf.all.forwarding") == "1"), "IPv6 not healed"
        assert _wait(lambda: topo.sysctl(n.host, "net/ipv6/conf/virbr1/forwarding") == "1")
        assert topo.sysctl(n.host, "net/ipv6/conf/eth1/accept_ra") == "2"
        assert n.reaches6()
        rec = _healed(n.nm, "ip_forwarding", "ipv6_forwarding_off")[0]
        assert rec["before"]["net/ipv6/conf/all/forwarding"] == "0"
        assert rec["before"]["net/ipv6/conf/eth1/accept_ra"] == "1"
        assert rec["steps"][0] == "set net.ipv6.conf.eth1.accept_ra = 2"

        topo.sysctl(n.host, "net/ipv6/conf/virbr1/forwarding", 0)
        assert _wait(lambda: topo.sysctl(n.host, "net/ipv6/conf/virbr1/forwarding") == "1"), "virbr1 v6 not healed"
        assert n.reaches6()
    finally:
        daemon.terminate()
        daemon.wait(10)
    assert daemon.returncode == 0


INET_DROP = """
table inet filter {
    chain forward {
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
    }
}
"""


def test_firewall_changes_are_healed_on_their_nftables_event(quiet, tmp_path):
    lab, topo = quiet, quiet.topo
    lab.nm.set_policy({"invariants": {"bridge_netfilter": {"mode": "enforce"}}})
    daemon = lab.nm.daemon("--resync", "3600", "--no-dbus", "--socket", "none", "--libvirt-uri", "none")
    try:
        assert _wait(lambda: any(r.get("trigger") == "startup" for r in lab.nm.audit("reconciled")), 10)
        assert lab.vm_reaches_gateway(count=2)

        # iptables-nft's FORWARD policy DROP (Docker's): an nf_tables event too.
        topo.run(lab.host, "iptables-nft", "-P", "FORWARD", "DROP")
        assert _wait(lambda: "-A FORWARD -i br0 -o br0 -j ACCEPT" in
                     topo.run(lab.host, "iptables-nft", "-S", "FORWARD").stdout), "iptables-nft DROP not healed"
        assert lab.vm_reaches_gateway(count=2)
        assert any("nftables" in (t or "") for t in _triggers(lab.nm, "bridge_netfilter"))

        # An nftables-native inet chain dropping forwarded traffic.
        rules = tmp_path / "inet.nft"
        rules.write_text(INET_DROP)
        topo.run(lab.host, "nft", "-f", str(rules))

        def own():
            out = topo.run(lab.host, "nft", "-a", "list", "chain", "inet", "filter", "forward", check=False).stdout
            return out.count("netmedic: accept bridged traffic of br0")
        assert _wait(lambda: own() == 1), "nftables inet drop not healed"
        assert lab.vm_reaches_gateway(count=2)

        # A reload takes netmedic's rule away: it is back at once.
        for _ in range(2):
            topo.run(lab.host, "nft", "delete", "table", "inet", "filter")
            topo.run(lab.host, "nft", "-f", str(rules))
            assert _wait(lambda: own() == 1), "not re-inserted after a reload"
            assert lab.vm_reaches_gateway(count=2)
        assert len(_healed(lab.nm, "bridge_netfilter", "bridged_traffic_dropped_nft")) == 3
    finally:
        daemon.terminate()
        daemon.wait(10)
    assert daemon.returncode == 0


def test_bridge_table_drop_is_reported_on_its_event_and_legacy_on_the_resync(quiet, tmp_path):
    """An L2 drop (bridge table) is detected at once and explained, not changed; iptables-legacy changes
    have no kernel event: the periodic resync finds them (here every 3 s)."""
    lab, topo = quiet, quiet.topo
    lab.nm.set_policy({"invariants": {"bridge_netfilter": {"mode": "enforce"}}})
    daemon = lab.nm.daemon("--resync", "3", "--no-dbus", "--socket", "none", "--libvirt-uri", "none")
    try:
        assert _wait(lambda: any(r.get("trigger") == "startup" for r in lab.nm.audit("reconciled")), 10)
        rules = tmp_path / "l2.nft"
        rules.write_text("table bridge l2fw {\n chain forward {\n  type filter hook forward priority 0; "
                         "policy drop;\n }\n}\n")
        t0 = time.monotonic()
        topo.run(lab.host, "nft", "-f", str(rules))
        assert _wait(lambda: any(r.get("kind") == "bridged_traffic_dropped_l2" for r in lab.nm.audit("detected")), 2)
        assert time.monotonic() - t0 < 2.5  # before any resync could have run (3 s after the last)
        assert not _healed(lab.nm, "bridge_netfilter", "bridged_traffic_dropped_l2")
        assert "rule" not in topo.run(lab.host, "nft", "list", "table", "bridge", "l2fw").stdout
        topo.run(lab.host, "nft", "delete", "table", "bridge", "l2fw")
        assert lab.vm_reaches_gateway(count=2)

        topo.run(lab.host, "iptables-legacy", "-P", "FORWARD", "DROP")
        assert _wait(lambda: "-A FORWARD -i br0 -o br0 -j ACCEPT" in
                     topo.run(lab.host, "iptables-legacy", "-S", "FORWARD").stdout, 8), "legacy DROP not healed"
        assert lab.vm_reaches_gateway(count=2)
        assert "resync" in _triggers(lab.nm, "bridge_netfilter")
    finally:
        daemon.terminate()
        daemon.wait(10)
    assert daemon.returncode == 0
