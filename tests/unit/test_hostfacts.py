"""netmedic.hostfacts' readers on captured files: dnsmasq leases and the ARP table."""
from __future__ import annotations

from snapshots import MAC1

from netmedic import hostfacts


def test_leases_and_neighbours_from_captured_files(tmp_path):
    (tmp_path / "virbr0.status").write_text(
        '[{"ip-address": "192.168.122.50", "mac-address": "52:54:00:00:00:01", "hostname": "vm1", '
        '"expiry-time": 4102444800}, {"ip-address": "192.168.122.9", "mac-address": "52:54:00:00:00:01", '
        '"expiry-time": 5}]')
    (tmp_path / "broken.status").write_text("{not json")
    assert hostfacts.leases(MAC1, str(tmp_path)) == [("192.168.122.50", str(tmp_path / "virbr0.status"), "vm1")]
    arp = tmp_path / "arp"
    arp.write_text("IP address       HW type     Flags       HW address            Mask     Device\n"
                   "192.168.122.50   0x1         0x2         52:54:00:00:00:01     *        virbr0\n"
                   "192.168.122.51   0x1         0x0         52:54:00:00:00:01     *        virbr0\n")
    assert hostfacts.neighbours(MAC1, str(arp)) == [("192.168.122.50", "virbr0")]
