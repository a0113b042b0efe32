"""nat_network_health on captured snapshots (libvirt's NAT rules parsed, dnsmasq alive or not), and the
dnsmasq reader on a real process."""
from __future__ import annotations

import subprocess
import sys

from snapshots import MAC1, bridge, check_invariant, nic, snapshot, tap

from netmedic import hostfacts
from netmedic.inventory import Network


def _nat_snap(rules, dns):
    net = Network(name="default", bridge="virbr0", forward_mode="nat", forward_dev=None, ips=("192.168.122.1/24",))
    snap = snapshot(links=[bridge("virbr0", 2), tap("vnet0", 10, master=2)],
                    nics=[nic("vm1", MAC1, "virbr0", "vnet0", type="network", network="default")], networks=[net])
    snap.nat_rules, snap.dnsmasq = rules, {"default": dns}
    return snap


LIBVIRT_NAT = """-P POSTROUTING ACCEPT
-N LIBVIRT_PRT
-A POSTROUTING -j LIBVIRT_PRT
-A LIBVIRT_PRT -s 192.168.122.0/24 -d 224.0.0.0/24 -j RETURN
-A LIBVIRT_PRT -s 192.168.122.0/24 ! -d 192.168.122.0/24 -p tcp -j MASQUERADE --to-ports 1024-65535
-A LIBVIRT_PRT -s 192.168.122.0/24 ! -d 192.168.122.0/24 -j MASQUERADE
"""


ALIVE = hostfacts.Dnsmasq("default", "/run/libvirt/network/default.pid", 42, True, True)


def test_libvirt_nat_rules_parsed_and_healthy_network_is_clean():
    rules = hostfacts.parse_iptables_nat("nft", LIBVIRT_NAT)
    assert len(rules) == 2 and rules[1].source == "192.168.122.0/24" and rules[1].negated_dest == "192.168.122.0/24"
    assert check_invariant("nat_network_health", _nat_snap(rules, ALIVE)) == []
    nft = hostfacts.parse_nft_nat("    ip saddr 192.168.122.0/24 ip daddr != 192.168.122.0/24 counter masquerade\n")
    assert check_invariant("nat_network_health", _nat_snap(nft, ALIVE)) == []


def test_missing_masquerade_and_dead_dnsmasq_give_the_exact_fix():
    dead = hostfacts.Dnsmasq("default", "/run/libvirt/network/default.pid", 42, False, False)
    found = {v.kind: v for v in check_invariant("nat_network_health", _nat_snap([], dead))}
    assert set(found) == {"masquerade_missing", "dnsmasq_down"}
    assert "iptables -t nat -A POSTROUTING -s 192.168.122.0/24 ! -d 192.168.122.0/24 -j MASQUERADE" \
        in found["masquerade_missing"].evidence["fix"]
    assert "virtnetworkd" in found["dnsmasq_down"].evidence["fix"]
    other = hostfacts.parse_iptables_nat("nft", "-A POSTROUTING -s 10.0.0.0/24 -j MASQUERADE\n")
    assert [v.kind for v in check_invariant("nat_network_health", _nat_snap(other, ALIVE))] == ["masquerade_missing"]


def test_dnsmasq_reader_on_a_real_process(tmp_path):
    """A live process that is not dnsmasq does not count; a missing pid file neither."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "n1.pid").write_text(f"{proc.pid}\n")
        d = hostfacts.read_dnsmasq("n1", str(tmp_path))
        assert d.pid == proc.pid and d.alive is False
        assert hostfacts.read_dnsmasq("n2", str(tmp_path)).pid is None
    finally:
        proc.kill()
        proc.wait()
