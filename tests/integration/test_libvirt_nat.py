"""A libvirt NAT network whose firewall rules were flushed works again after netmedic asks libvirt to
re-apply them — with a REAL libvirtd, in a network namespace of the test's own (as tests/integration/test_libvirt.py
runs it, taking the same flock on /etc/libvirt/hooks; no hook is installed here). Judged by
connectivity: a client on the network's bridge reaches a host outside that has no route back to the
network, which only works through libvirt's MASQUERADE rule. Where a reload cannot help (libvirt's
chains or the jumps to them gone), netmedic refuses and names the restart."""
from __future__ import annotations

import json
import os
import sys

import pytest

from tests.conftest import nm_env, write_policy
from tests.integration.test_libvirt import TAG, Libvirt, _foreign_hooks, _serialize, _why_not, wait_for

pytestmark = pytest.mark.netns

OUT_IP, CLIENT_IP = "198.51.100.2", "203.0.113.50"


@pytest.fixture
def lvnet(tmp_path):
    lock = _serialize() if os.path.isdir("/etc/libvirt/hooks") else None  # another run's libvirtd: wait
    env = None
    try:
        why = _why_not()
        if why:
            pytest.skip(why)
        if _foreign_hooks():
            pytest.skip(f"other libvirt hooks are installed: {', '.join(_foreign_hooks())}")
        env = Libvirt(tmp_path)
        env.start_libvirtd()
        yield env
    finally:
        if env is not None:
            env.close()
        if lock is not None:
            os.close(lock)


def _netmedic(lv, policy, command, *extra):
    proc = lv.topo.run(lv.ns, sys.executable, "-m", "netmedic", command, "--json",
                       "--domain-xml-dir", str(lv.tmp / "no-domains"), "--network-xml-dir", "/run/libvirt/network",
                       "--policy", policy, *([] if command == "check" else ["--audit-log", lv.audit_log]),
                       "--state-dir", lv.state_dir, *extra, env=nm_env(), check=False, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)


def _nat_outcome(report):
    [outcome] = [o for o in report["outcomes"] if o["violation"]["invariant"] == "nat_network_health"]
    return outcome


def test_flushed_nat_rules_are_reapplied_by_libvirt(lvnet, tmp_path):
    lv = lvnet
    net, natbr = f"{TAG}-fw", f"{TAG}fw"
    os.makedirs(lv.tmp / "no-domains", exist_ok=True)
    path = lv.tmp / f"{net}.xml"
    path.write_text(f"<network><name>{net}</name><forward mode='nat'/><bridge name='{natbr}' stp='off' delay='0'/>"
                    "<ip address='203.0.113.1' netmask='255.255.255.0'/></network>")
    assert not os.path.exists(f"/etc/libvirt/qemu/networks/{net}.xml")
    lv.virsh("net-define", str(path))
    try:
        lv.virsh("net-start", net)
        # outside: a host on another subnet with no route back to 203.0.113.0/24
        out = lv.topo.netns("out", ipv6=False)
        lv.topo.veth(lv.ns, f"{TAG}o", out, "eth0")
        lv.topo.addr(lv.ns, f"{TAG}o", "198.51.100.1/24")
        lv.topo.addr(out, "eth0", f"{OUT_IP}/24")
        # a client on the NAT network (a VM's place)
        client = lv.topo.netns("cl", ipv6=False)
        lv.topo.veth(lv.ns, f"{TAG}c", client, "eth0")
        lv.topo.enslave(lv.ns, f"{TAG}c", natbr)
        lv.topo.addr(client, "eth0", f"{CLIENT_IP}/24")
        lv.topo.route(client, "default", "203.0.113.1")
        assert lv.topo.ping(client, OUT_IP, count=2, timeout=1.0), "NAT works before the flush"

        # the network's rules flushed from libvirt's chains (the chains and the jumps to them stay)
        for table, chain in (("nat", "LIBVIRT_PRT"), ("filter", "LIBVIRT_FWO"), ("filter", "LIBVIRT_FWI"),
                             ("filter", "LIBVIRT_FWX"), ("filter", "LIBVIRT_INP"), ("filter", "LIBVIRT_OUT")):
            lv.topo.run(lv.ns, "iptables-nft", "-t", table, "-F", chain)
        assert not lv.topo.ping(client, OUT_IP, count=2, timeout=0.5), "no masquerade: no replies"

        policy = write_policy(tmp_path / "nat-policy.yaml", {
            "kill_switch_file": str(tmp_path / "kill-switch"), "scope": {"bridges": [natbr]},
            "invariants": {"nat_network_health": {"mode": "enforce", "remedy": "reload-libvirt"}}})
        found = [v for v in _netmedic(lv, policy, "check")["violations"] if v["invariant"] == "nat_network_health"]
        assert [v["kind"] for v in found] == ["masquerade_missing"], found
        assert found[0]["subject"] == {"bridge": natbr, "network": net}

        libvirtd = lv.procs["libvirtd"].pid
        outcome = _nat_outcome(_netmedic(lv, policy, "heal"))
        assert outcome["result"] == "healed", (outcome, open(lv.tmp / "libvirtd.log").read()[-2000:])
        assert outcome["plan"]["healer"] == "libvirt_reload"
        assert outcome["plan"]["steps"][0]["args"] == {"pid": libvirtd, "comm": "libvirtd", "signal": "HUP"}
        assert any("MASQUERADE" in r for r in outcome["after"]["masquerade_rules"]), outcome["after"]
        assert lv.procs["libvirtd"].poll() is None, "libvirtd reloaded, not stopped"
        assert wait_for(lambda: lv.topo.ping(client, OUT_IP, count=1, timeout=0.5), 10), \
            "the NAT network works again: " + lv.topo.run(lv.ns, "iptables-nft", "-t", "nat", "-S").stdout
        assert not [v for v in _netmedic(lv, policy, "check")["violations"]
                    if v["invariant"] == "nat_network_health"]
        healed = [r for r in lv.audit("healed") if r["invariant"] == "nat_network_health"]
        assert healed and healed[0]["steps"][0].startswith(f"send SIGHUP to libvirtd (pid {libvirtd})")

        # `iptables -t nat -F` also removes the jump from POSTROUTING, and a restore that deletes chains
        # removes LIBVIRT_PRT itself: libvirt 9.0 re-creates its chains and their jumps only when its
        # daemon starts, so a reload cannot help. netmedic sees the masquerade is unreachable and refuses,
        # naming the restart; it never signals libvirt in vain.
        for flush, why in ((["-F"], "nothing jumps to it"), (["-F", "-X"], "is gone")):
            for arg in flush:
                lv.topo.run(lv.ns, "iptables-nft", "-t", "nat", arg)
            assert not lv.topo.ping(client, OUT_IP, count=1, timeout=0.5)
            outcome = _nat_outcome(_netmedic(lv, policy, "heal"))
            assert outcome["result"] == "skipped" and why in outcome["reason"], outcome
            assert "restart libvirt's network daemon" in outcome["reason"]
        assert len([r for r in lv.audit("healed") if r["invariant"] == "nat_network_health"]) == 1
        assert lv.procs["libvirtd"].poll() is None
    finally:
        lv.remove_network(net, natbr)
