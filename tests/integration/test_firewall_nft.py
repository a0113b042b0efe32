"""bridge_netfilter over nf_tables rulesets loaded with `nft -f` (inside the test's own namespaces only):
an `inet` and an `ip` table whose forward base chain drops the bridge's traffic under br_netfilter (by
policy and by rule), and a `bridge` table that drops at layer 2. Judged by connectivity across the lab
bridge (VM -> br0 -> uplink -> gateway)."""
from __future__ import annotations

import json
import os

import pytest

INET_POLICY_DROP = """
table inet filter {
    chain forward {
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "lo" accept
    }
}
"""

IP_RULE_REJECT = """
table ip hostfw {
    chain chk { ip saddr 198.51.100.0/24 drop; }
    chain fwdchain {
        type filter hook forward priority 10; policy accept;
        ct state invalid drop
        jump chk
        iifname "br*" counter reject
    }
}
"""

BRIDGE_DROP = """
table bridge l2fw {
    chain forward {
        type filter hook forward priority 0; policy drop;
    }
}
"""

CONDITIONAL_ONLY = """
table inet filter {
    chain forward {
        type filter hook forward priority 0; policy accept;
        ip saddr 198.51.100.0/24 drop
        tcp dport 25 reject
    }
}
"""


def load(lab, tmp_path, text, name="ruleset.nft"):
    path = tmp_path / name
    path.write_text(text)
    lab.topo.run(lab.host, "nft", "-f", str(path))


def outcomes(report, kind=None):
    return [o for o in report["outcomes"] if o["violation"]["invariant"] == "bridge_netfilter"
            and (kind is None or o["violation"]["kind"] == kind)]


def nft_json(lab, *what) -> list:
    out = lab.topo.run(lab.host, "nft", "-j", "list", *what).stdout
    return json.loads(out)["nftables"]


def own_rules(lab, family, table, chain):
    return [i["rule"] for i in nft_json(lab, "chain", family, table, chain)
            if "rule" in i and (i["rule"].get("comment") or "").startswith("netmedic:")]


@pytest.mark.parametrize("family,table,chain,text", [
    ("inet", "filter", "forward", INET_POLICY_DROP),
    ("ip", "hostfw", "fwdchain", IP_RULE_REJECT),
])
def test_nft_forward_chain_drop_is_seen_healed_reinserted_released(quiet, tmp_path, family, table, chain, text):
    lab, topo = quiet, quiet.topo
    assert topo.sysctl(lab.host, "net.bridge.bridge-nf-call-iptables") == "1"
    assert lab.vm_reaches_gateway(count=2)
    load(lab, tmp_path, text)
    assert not lab.vm_reaches_gateway(count=2, timeout=0.3, all_replies=False)
    # iptables sees nothing wrong: the drop is nftables-native.
    assert "-P FORWARD ACCEPT" in topo.run(lab.host, "iptables-nft", "-S", "FORWARD").stdout or \
        topo.run(lab.host, "iptables-nft", "-S", "FORWARD", check=False).returncode != 0

    # The shipped default: observed and explained, nothing changed.
    nf = outcomes(lab.nm.heal_json(), "bridged_traffic_dropped_nft")
    assert nf and nf[0]["result"] == "observed"
    ev = nf[0]["violation"]["evidence"]["chains"]
    assert [(c["family"], c["table"], c["chain"]) for c in ev] == [(family, table, chain)]
    if family == "inet":
        assert ev[0]["dropped_by"] == {"table": "inet filter", "chain": "forward", "policy": "drop"}
    else:
        assert ev[0]["dropped_by"]["chain"] == "fwdchain" and "reject" in ev[0]["dropped_by"]["rule"]
    assert f"{table} chain {chain}" in nf[0]["violation"]["message"]
    assert not own_rules(lab, family, table, chain)
    assert not lab.vm_reaches_gateway(count=1, timeout=0.3)

    lab.nm.set_policy({"invariants": {"bridge_netfilter": {"mode": "enforce"}}})
    nf = outcomes(lab.nm.heal_json(), "bridged_traffic_dropped_nft")
    assert nf and nf[0]["result"] == "healed", nf
    mine = own_rules(lab, family, table, chain)
    assert len(mine) == 1 and mine[0]["comment"] == "netmedic: accept bridged traffic of br0"
    assert lab.vm_reaches_gateway(count=3)
    key = f"nft_rule:{family}:{table}:{chain}:br0"
    assert key in lab.nm.records()
    if family == "inet":  # the admin's policy is untouched
        base = [i["chain"] for i in nft_json(lab, "chain", family, table, chain) if "chain" in i][0]
        assert base["policy"] == "drop"
    assert not outcomes(lab.nm.heal_json())  # a second pass changes nothing

    # A reload of the firewall (the table re-created from its file) takes netmedic's rule away ...
    topo.run(lab.host, "nft", "delete", "table", family, table)
    load(lab, tmp_path, text)
    assert not lab.vm_reaches_gateway(count=1, timeout=0.3)
    nf = outcomes(lab.nm.heal_json(), "bridged_traffic_dropped_nft")
    assert nf and nf[0]["result"] == "healed"  # ... and it is inserted again
    assert len(own_rules(lab, family, table, chain)) == 1
    assert lab.vm_reaches_gateway(count=2)

    # The admin allows the bridge himself: netmedic's rule is no longer needed and goes.
    topo.run(lab.host, "nft", "insert", "rule", family, table, chain, "iifname", "br0", "accept")
    report = lab.nm.heal_json()
    assert [r["key"] for r in report["released"]] == [key]
    assert not own_rules(lab, family, table, chain)
    assert key not in lab.nm.records()
    assert lab.vm_reaches_gateway(count=2)


def test_nft_rule_released_when_the_vm_is_gone(quiet, tmp_path):
    lab = quiet
    load(lab, tmp_path, INET_POLICY_DROP)
    lab.nm.set_policy({"invariants": {"bridge_netfilter": {"mode": "enforce"}}})
    assert outcomes(lab.nm.heal_json())[0]["result"] == "healed"
    assert own_rules(lab, "inet", "filter", "forward")
    os.unlink(os.path.join(lab.domain_xml_dir, f"{lab.domain}.xml"))
    report = lab.nm.heal_json()
    assert "nft_rule:inet:filter:forward:br0" in [r["key"] for r in report["released"]]
    assert not own_rules(lab, "inet", "filter", "forward")


def test_bridge_table_drop_is_explained_not_changed(quiet, tmp_path):
    lab, topo = quiet, quiet.topo
    topo.sysctl(lab.host, "net.bridge.bridge-nf-call-iptables", 0)  # an L2 drop needs no br_netfilter
    load(lab, tmp_path, BRIDGE_DROP)
    assert not lab.vm_reaches_gateway(count=2, timeout=0.3, all_replies=False)
    lab.nm.set_policy({"invariants": {"bridge_netfilter": {"mode": "enforce"}}})
    nf = outcomes(lab.nm.heal_json())
    assert [o["violation"]["kind"] for o in nf] == ["bridged_traffic_dropped_l2"]
    assert nf[0]["result"] == "no_remedy"
    assert "bridge-family" in nf[0]["reason"]
    ev = nf[0]["violation"]["evidence"]["chains"]
    assert ev == [{"family": "bridge", "table": "l2fw", "chain": "forward", "hook": "forward", "priority": 0,
                   "policy": "drop", "dropped_by": {"table": "bridge l2fw", "chain": "forward", "policy": "drop"}}]
    assert all("rule" not in i for i in nft_json(lab, "table", "bridge", "l2fw"))  # nothing written
    assert not lab.vm_reaches_gateway(count=1, timeout=0.3)


def test_conditional_drops_are_not_violations(quiet, tmp_path):
    lab = quiet
    load(lab, tmp_path, CONDITIONAL_ONLY)
    assert lab.vm_reaches_gateway(count=2)
    assert not outcomes(lab.nm.heal_json())


def test_diagnose_hop_7_names_the_table_and_chain(quiet, tmp_path):
    from diagnose_helpers import diagnose_json, first_broken, hop

    lab = quiet
    assert lab.nm.heal().returncode == 0  # the VM pinned and talking
    assert lab.vm_reaches_gateway(count=2)
    load(lab, tmp_path, INET_POLICY_DROP)
    report = diagnose_json(lab.nm, lab.domain, expect=(1,))
    assert first_broken(report) == 7
    ev = hop(report, 7)["evidence"]
    assert [(c["family"], c["table"], c["chain"], c["policy"]) for c in ev["nft_chains"]] == [
        ("inet", "filter", "forward", "drop")]
    assert "table inet filter chain forward" in hop(report, 7)["summary"] or \
        "table inet filter chain forward" in report["first_broken"]["finding"]
    assert 'nft insert rule inet filter forward iifname "br0" oifname "br0" accept' in report["first_broken"]["fix"]
