"""ip_forwarding and bridge_netfilter on real kernels: a libvirt NAT network with forwarding off, and
bridged traffic blackholed by br_netfilter + an iptables FORWARD policy of DROP (nft and legacy).
iptables runs inside the test's own namespaces only."""
from __future__ import annotations

import pytest
from conftest import Netmedic

from netmedic.lab import write_domain_xml, write_network_xml


@pytest.fixture
def natnet(topo, tmp_path):
    """host: bridge virbr1 (203.0.113.1/24, a libvirt NAT network) with the VM's tap vnet0, and an
    uplink eth1 (198.51.100.1/24) to an `outside` namespace (198.51.100.2) that routes back."""
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
    doms, nets = tmp_path / "domains", tmp_path / "networks"
    doms.mkdir()
    nets.mkdir()
    write_network_xml(str(nets), "nat1", "virbr1", forward_mode="nat", ip="203.0.113.1",
                             netmask="255.255.255.0")
    write_domain_xml(str(doms), "natvm", [{"mac": "52:54:00:00:01:01", "network": "nat1",
                                                  "bridge": "virbr1", "tap": "vnet0"}])

    class Net:
        pass
    n = Net()
    n.topo, n.host, n.vm, n.out = topo, host, vm, out
    n.nm = Netmedic(topo, host, tmp_path, str(doms), str(nets))
    n.reaches = lambda count=2: topo.ping(vm, "198.51.100.2", count=count, timeout=0.5)
    return n


def test_nat_network_forwarding_off_is_turned_on(natnet):
    topo = natnet.topo
    topo.sysctl(natnet.host, "net.ipv4.ip_forward", 0)
    assert not natnet.reaches()
    report = natnet.nm.heal_json()
    fwd = [o for o in report["outcomes"] if o["violation"]["invariant"] == "ip_forwarding"]
    assert fwd and fwd[0]["result"] == "healed"
    assert fwd[0]["violation"]["subject"] == {"bridge": "virbr1", "network": "nat1"}
    assert topo.sysctl(natnet.host, "net.ipv4.ip_forward") == "1"
    assert natnet.reaches()
    rec = [r for r in natnet.nm.audit("healed") if r["invariant"] == "ip_forwarding"][0]
    # Writing ip_forward=0 also turned every interface's forwarding off: both are reported and fixed.
    assert rec["before"] == {"net/ipv4/ip_forward": "0", "net/ipv4/conf/virbr1/forwarding": "0"}
    assert rec["after"] == {"net/ipv4/ip_forward": "1", "net/ipv4/conf/virbr1/forwarding": "1"}
    assert all(o["violation"]["invariant"] != "ip_forwarding" for o in natnet.nm.heal_json()["outcomes"])


def test_per_interface_forwarding_off_is_turned_on(natnet):
    """The kernel checks forwarding on the input interface: global ip_forward=1 is not enough."""
    topo = natnet.topo
    topo.sysctl(natnet.host, "net.ipv4.ip_forward", 1)
    topo.sysctl(natnet.host, "net/ipv4/conf/virbr1/forwarding", 0)
    assert not natnet.reaches()
    natnet.nm.heal_json()
    assert topo.sysctl(natnet.host, "net/ipv4/conf/virbr1/forwarding") == "1"
    assert natnet.reaches()


@pytest.mark.parametrize("iptables", ["iptables-nft", "iptables-legacy"])
def test_forward_drop_with_bridge_netfilter(quiet, iptables):
    lab, topo = quiet, quiet.topo
    assert topo.sysctl(lab.host, "net.bridge.bridge-nf-call-iptables") == "1"
    assert lab.vm_reaches_gateway(count=2)
    topo.run(lab.host, iptables, "-P", "FORWARD", "DROP")
    assert not lab.vm_reaches_gateway(count=2, timeout=0.3, all_replies=False)

    # Default policy: observe only (a firewall change is the admin's call).
    report = lab.nm.heal_json()
    nf = [o for o in report["outcomes"] if o["violation"]["invariant"] == "bridge_netfilter"]
    assert nf and nf[0]["result"] == "observed"
    assert nf[0]["violation"]["evidence"]["backend"] == iptables.split("-")[1]
    assert not lab.vm_reaches_gateway(count=1, timeout=0.3)

    lab.nm.set_policy({"invariants": {"bridge_netfilter": {"mode": "enforce"}}})
    report = lab.nm.heal_json()
    nf = [o for o in report["outcomes"] if o["violation"]["invariant"] == "bridge_netfilter"]
    assert nf and nf[0]["result"] == "healed"
    rules = topo.run(lab.host, iptables, "-S", "FORWARD").stdout
    assert "-P FORWARD DROP" in rules, "netmedic must not change the admin's policy"
    assert "-A FORWARD -i br0 -o br0 -j ACCEPT" in rules
    assert lab.vm_reaches_gateway(count=3)
    rec = [r for r in lab.nm.audit("healed") if r["invariant"] == "bridge_netfilter"][0]
    assert rec["steps"] == [f"iptables ({iptables.split('-')[1]}) -I FORWARD 1 -i br0 -o br0 -j ACCEPT"]
    assert rec["before"] == {"forward_policy": "DROP"} and rec["healer"] == "netfilter_accept"
    observed = [r for r in lab.nm.audit("planned") if r["invariant"] == "bridge_netfilter"]
    assert observed and observed[0]["result"] == "observed"
    assert f"iptables_rule:{iptables.split('-')[1]}:br0" in lab.nm.records()
    assert all(o["violation"]["invariant"] != "bridge_netfilter" for o in lab.nm.heal_json()["outcomes"])
