"""nat_network_health on a real kernel (a NAT network of the test's own): its observe-only findings, and a
masquerade rule in iptables-legacy counts."""
from __future__ import annotations

import pytest
from diagnose_helpers import MASQ, build_natnet


@pytest.fixture
def natnet(topo, tmp_path):
    return build_natnet(topo, tmp_path)


def test_nat_network_health_findings(natnet):
    nm, topo = natnet.nm, natnet.topo
    assert not [v for v in nm.check_json()["violations"] if v["invariant"] == "nat_network_health"]
    topo.run(natnet.host, "iptables-nft", *["-D" if a == "-A" else a for a in MASQ])
    natnet.dnsmasq.terminate()
    natnet.dnsmasq.wait(10)
    found = {v["kind"]: v for v in nm.check_json()["violations"] if v["invariant"] == "nat_network_health"}
    assert set(found) == {"masquerade_missing", "dnsmasq_down"}
    assert found["masquerade_missing"]["subject"] == {"bridge": "virbr1", "network": "nat1"}
    assert found["masquerade_missing"]["evidence"]["subnet"] == "203.0.113.0/24"
    assert found["dnsmasq_down"]["evidence"]["pid"] == natnet.dnsmasq.pid
    report = nm.heal_json()
    results = {o["violation"]["kind"]: o["result"] for o in report["outcomes"]
               if o["violation"]["invariant"] == "nat_network_health"}
    assert results == {"masquerade_missing": "no_remedy", "dnsmasq_down": "no_remedy"}


def test_masquerade_in_legacy_iptables_counts(topo, tmp_path):
    n = build_natnet(topo, tmp_path, masquerade=False)
    topo.run(n.host, "iptables-legacy", *MASQ)
    assert not [v for v in n.nm.check_json()["violations"] if v["invariant"] == "nat_network_health"]
