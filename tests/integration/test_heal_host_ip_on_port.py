"""host_ip_on_port on a real kernel: an address on an enslaved port is reported, never moved."""
from __future__ import annotations


def test_host_ip_on_port_is_reported_never_moved(quiet):
    lab, topo = quiet, quiet.topo
    topo.addr(lab.host, lab.uplink, "198.51.100.5/24")
    report = lab.nm.check_json()
    found = [v for v in report["violations"] if v["invariant"] == "host_ip_on_port"]
    assert len(found) == 1 and found[0]["subject"] == {"bridge": "br0", "port": "uplink0"}
    assert found[0]["evidence"]["addresses"] == ["198.51.100.5/24"] and found[0]["fix"] is None
    lab.nm.heal_json()
    addrs = [a["local"] for a in topo.link(lab.host, lab.uplink).get("addr_info", [])] or \
        topo.run(lab.host, "ip", "-br", "addr", "show", "dev", lab.uplink).stdout
    assert "198.51.100.5" in str(addrs), "netmedic must not move the address"
    # the uplink is a veth: no bond, no aggregation finding on the real path
    assert not [v for v in report["violations"] if v["invariant"] == "uplink_aggregation"]
