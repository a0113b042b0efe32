"""host_ip_on_port on captured snapshots: an address on an enslaved port (link-local ones ignored)."""
from __future__ import annotations

from snapshots import MAC1, bridge, check_invariant, nic, snapshot, tap, uplink


def test_address_on_an_enslaved_port_ignores_link_local():
    links = [bridge("br0", 2), uplink("eth0", 3, master=2, kind=None), tap("vnet0", 10, master=2)]
    snap = snapshot(links=links, nics=[nic("vm1", MAC1, "br0", "vnet0")])
    snap.addresses = {3: ["198.51.100.5/24", "2001:db8::5/64", "fe80::1/64"], 10: ["fe80::2/64"],
                      2: ["198.51.100.1/24"]}
    (v,) = check_invariant("host_ip_on_port", snap)
    assert v.subject.port == "eth0" and v.evidence["addresses"] == ["198.51.100.5/24", "2001:db8::5/64"]
    assert "ip addr add 198.51.100.5/24 dev br0" in v.evidence["fix"]
    snap.addresses = None
    assert check_invariant("host_ip_on_port", snap) == []
