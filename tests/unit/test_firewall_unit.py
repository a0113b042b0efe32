"""The firewall fact and its judgement without a kernel: libnftables' JSON parsed into chains and
masquerade rules, the drop verdict of a chain for a bridge's traffic (policy, rules, jumps, gotos, vmaps,
wildcards, negations, sets, opaque xt matches), the bridge names that never reach a rule, the nft_accept
healer's plan and release, IPv6 forwarding with accept_ra, and the kernel event parsers (netconf,
nf_tables) fed with the bytes the kernel sends."""
from __future__ import annotations

import dataclasses
import os
import socket
import struct

import pytest
from snapshots import MAC1, nic, seed_links, snapshot, sysctls

from netmedic import firewall
from netmedic.dispatcher import Dispatcher
from netmedic.facts import Firewall, NftChain, NftRule, literal_ifname, nft_accept_expr
from netmedic.healers import ip_forward, netfilter_accept, nft_accept
from netmedic.inventory import Network
from netmedic.model import Subject, Violation
from netmedic.policies import bridge_netfilter, ip_forwarding
from netmedic.sources import kernel

BNF = bridge_netfilter.PLUGIN
VM1 = nic("vm1", MAC1, "br0", "vnet0")


def m(key, right, op="=="):
    return {"match": {"op": op, "left": {"meta": {"key": key}}, "right": right}}


def rule(handle, *expr, comment=None):
    return NftRule(handle, tuple(expr), comment)


def base(rules=(), policy="accept", family="inet", table="filter", name="forward", hook="forward"):
    return NftChain(family, table, name, tuple(rules), hook=hook, prio=0, policy=policy, type="filter")


def regular(name, rules, family="inet", table="filter"):
    return NftChain(family, table, name, tuple(rules))


def fw(*chains, gen=7):
    return Firewall(gen, tuple(chains))


def snap(firewall_fact, bridge_nf="1", nics=(VM1,), records=None):
    s = snapshot(seed_links(), list(nics), sysctl=sysctls(bridge_nf=bridge_nf), records=records)
    return dataclasses.replace(s, firewall=firewall_fact)


def kinds(firewall_fact, **kw):
    return [(v.kind, [(c["family"], c["table"], c["chain"]) for c in v.evidence.get("chains", [])])
            for v in BNF.check(snap(firewall_fact, **kw), {})]


CT = {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}
SADDR = {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                   "right": {"prefix": {"addr": "198.51.100.0", "len": 24}}}}


# --- the verdict ---------------------------------------------------------------------------------------
def test_policy_drop_is_a_violation_naming_table_and_chain():
    v = BNF.check(snap(fw(base([rule(1, CT, {"accept": None})], policy="drop"))), {})
    assert [x.kind for x in v] == ["bridged_traffic_dropped_nft"]
    ch = v[0].evidence["chains"][0]
    assert ch["dropped_by"] == {"table": "inet filter", "chain": "forward", "policy": "drop"}
    assert "table inet filter chain forward (policy drop)" in v[0].message
    assert v[0].evidence["generation"] == 7


@pytest.mark.parametrize("accept", [
    [m("iifname", "br0"), m("oifname", "br0"), {"accept": None}],
    [m("iifname", "br*"), {"counter": None}, {"accept": None}],
    [m("iifname", {"set": ["virbr0", "br0"]}), {"accept": None}],
    [m("iifname", "lo", op="!="), {"accept": None}],
    [{"accept": None}],
    [m("nfproto", "ipv4"), {"accept": None}],
])
def test_an_accept_that_covers_the_bridge_means_no_violation(accept):
    assert kinds(fw(base([rule(1, *accept)], policy="drop"))) == []


@pytest.mark.parametrize("other", [
    [m("iifname", "br1"), {"accept": None}],
    [m("iifname", "br\\*"), {"accept": None}],  # an escaped star is a literal name
    [m("iifname", "br0", op="!="), {"accept": None}],
    [CT, {"accept": None}],  # only established traffic
    [SADDR, {"accept": None}],
    [m("nfproto", "ipv6"), {"accept": None}],
])
def test_accepts_that_do_not_cover_the_bridge_do_not_count(other):
    assert kinds(fw(base([rule(1, *other)], policy="drop"))) == [("bridged_traffic_dropped_nft",
                                                                   [("inet", "filter", "forward")])]


def test_conditional_drops_are_not_violations():
    assert kinds(fw(base([rule(1, SADDR, {"drop": None}), rule(2, CT, {"drop": None})]))) == []


def test_an_unconditional_reject_rule_is_a_violation_with_the_rule():
    v = BNF.check(snap(fw(base([rule(1, CT, {"accept": None}), rule(9, {"counter": None}, {"reject": None})]))), {})
    assert v[0].evidence["chains"][0]["dropped_by"] == {"table": "inet filter", "chain": "forward", "handle": 9,
                                                        "rule": "counter reject"}


def test_jumps_and_gotos_are_followed():
    zone = regular("zone_vms", [rule(3, m("oifname", "br0"), {"accept": None})])
    nozone = regular("zone_vms", [rule(3, m("oifname", "eth9"), {"accept": None})])
    dispatch = regular("zones", [rule(2, m("iifname", "br0"), {"goto": {"target": "zone_vms"}})])
    fwd = base([rule(1, {"jump": {"target": "zones"}}), rule(4, {"reject": None})])
    assert kinds(fw(fwd, dispatch, zone)) == []
    got = BNF.check(snap(fw(fwd, dispatch, nozone)), {})
    assert got[0].evidence["chains"][0]["dropped_by"]["handle"] == 4  # goto returned: the base chain goes on
    # a drop inside a jumped-to chain is named there
    deny = regular("deny", [rule(5, {"drop": None})])
    got = BNF.check(snap(fw(base([rule(1, {"jump": {"target": "deny"}})]), deny)), {})
    assert got[0].evidence["chains"][0]["dropped_by"]["chain"] == "deny"


def test_a_vmap_on_the_interface_is_followed():
    zone = regular("z", [rule(3, {"drop": None})])
    vm = {"vmap": {"key": {"meta": {"key": "iifname"}},
                   "data": {"set": [["br0", {"goto": {"target": "z"}}], ["eth0", {"accept": None}]]}}}
    assert kinds(fw(base([rule(1, vm)]), zone))[0][0] == "bridged_traffic_dropped_nft"
    vm2 = {"vmap": {"key": {"meta": {"key": "iifname"}}, "data": {"set": [["eth0", {"goto": {"target": "z"}}]]}}}
    assert kinds(fw(base([rule(1, vm2)]), zone)) == []


def test_an_opaque_xt_accept_gets_the_benefit_of_the_doubt():
    xt = {"xt": {"type": "match", "name": "physdev"}}
    assert kinds(fw(base([rule(1, xt, {"accept": None})], policy="drop", family="ip"))) == []


def test_without_br_netfilter_only_bridge_tables_count():
    drop = base([], policy="drop")
    l2 = base([], policy="drop", family="bridge", table="l2", name="fw")
    assert kinds(fw(drop, l2), bridge_nf="0") == [("bridged_traffic_dropped_l2", [("bridge", "l2", "fw")])]
    assert kinds(fw(drop), bridge_nf="0") == []


def test_bridge_tables_match_on_the_bridge_name_and_are_not_healed():
    ok = base([rule(1, m("ibrname", "br0"), {"accept": None})], policy="drop", family="bridge", table="l2",
              name="fw")
    assert kinds(fw(ok), bridge_nf="0") == []
    guard = base([rule(1, m("iifname", "vnet0", op="!="),
                       {"match": {"op": "==", "left": {"payload": {"protocol": "ether", "field": "saddr"}},
                                  "right": MAC1}}, {"drop": None})], family="bridge", table="g", name="pre",
                 hook="prerouting")
    assert kinds(fw(guard), bridge_nf="0") == []  # a reflection guard drops only reflected frames
    v = BNF.check(snap(fw(base([], policy="drop", family="bridge", table="l2", name="fw"))), {})
    assert BNF.remedy(v[0], {}) is None and "bridge-family" in BNF.hint(v[0])


def test_iptables_nft_forward_is_judged_once():
    from netmedic.facts import ForwardChain

    s = dataclasses.replace(snap(fw(base([], policy="drop", family="ip", table="filter", name="FORWARD"))),
                            forward_chains=[ForwardChain("nft", "DROP", ())])
    assert [v.kind for v in BNF.check(s, {})] == ["bridged_traffic_dropped"]


def test_firewalld_reload_guard_table_is_transient():
    assert kinds(fw(base([], policy="drop", table="firewalld_policy_drop", name="filter_forward"))) == []


def test_the_verdict_of_an_unchanged_ruleset_is_reused():
    f = fw(base([rule(i, SADDR, {"counter": None}) for i in range(50)], policy="drop"))
    first = bridge_netfilter.dropping_chains(f, "br0", True)
    first[0][0]["chain"] = "mutated by a caller"
    assert bridge_netfilter.dropping_chains(f, "br0", True)[0][0]["chain"] == "forward"


# --- names that never reach a rule -----------------------------------------------------------------------
@pytest.mark.parametrize("name,ok", [("br0", True), ("virbr1", True), ("br-ex_1.2", True), ("br+", False),
                                     ("br*", False), ("br\\0", False), ('br"0', False), ("a" * 16, False),
                                     ("", False), ("..", False)])
def test_literal_ifname(name, ok):
    assert literal_ifname(name) is ok


@pytest.mark.parametrize("healer,evidence,kind", [
    (netfilter_accept.PLUGIN, {"backend": "nft", "forward_policy": "DROP"}, "bridged_traffic_dropped"),
    (nft_accept.PLUGIN, {"chains": [{"family": "inet", "table": "t", "chain": "c"}]}, "bridged_traffic_dropped_nft"),
])
def test_pattern_bridge_names_never_reach_a_rule(healer, evidence, kind):
    v = Violation("bridge_netfilter", kind, Subject(bridge="br+"), "", evidence)
    plan, why = healer.plan(v, snap(fw()), {})
    assert plan is None and "pattern" in why
    with pytest.raises(Exception, match="pattern"):
        firewall.insert_accept("inet", "t", "c", "br*")


# --- nft_accept ----------------------------------------------------------------------------------------------
def test_nft_accept_plans_an_insert_in_each_dropping_chain_with_its_undo():
    f = fw(base([], policy="drop"), base([], policy="drop", family="ip", table="t2", name="fw2"))
    v = [x for x in BNF.check(snap(f), {}) if x.kind == "bridged_traffic_dropped_nft"][0]
    assert BNF.remedy(v, {}) == "nft_accept"
    plan, _ = nft_accept.PLUGIN.plan(v, snap(f), {})
    assert [(s.op, s.args) for s in plan.steps] == [
        ("nft_insert_accept", {"family": "inet", "table": "filter", "chain": "forward", "bridge": "br0"}),
        ("nft_insert_accept", {"family": "ip", "table": "t2", "chain": "fw2", "bridge": "br0"})]
    assert [s.undo.op for s in plan.steps] == ["nft_delete_accept"] * 2
    assert [r["key"] for r in plan.records] == ["nft_rule:inet:filter:forward:br0", "nft_rule:ip:t2:fw2:br0"]
    # the rule it inserts is one the invariant accepts
    own = rule(99, *nft_accept_expr("br0"), comment="netmedic: accept bridged traffic of br0")
    fixed = fw(base([own], policy="drop"), base([own], policy="drop", family="ip", table="t2", name="fw2"))
    assert BNF.check(snap(fixed), {}) == []


REC = {"kind": "nft_rule", "key": "nft_rule:inet:filter:forward:br0", "family": "inet", "table": "filter",
       "chain": "forward", "bridge": "br0"}
OWN = rule(99, *nft_accept_expr("br0"), comment="netmedic: accept bridged traffic of br0")


def test_nft_accept_release():
    rel = nft_accept.PLUGIN.release
    assert rel(REC, snap(fw(base([OWN], policy="drop")))) is None  # still needed
    assert rel(REC, snap(fw(base([], policy="drop")))) is None  # a reload took it: the pass inserts it again
    gone = rel(REC, snap(fw()))
    assert gone.steps == () and "gone" in gone.reason
    admin = rel(REC, snap(fw(base([OWN, rule(5, m("iifname", "br0"), {"accept": None})], policy="drop"))))
    assert "no longer drops" in admin.reason and [s.op for s in admin.steps] == ["nft_delete_accept"]
    novm = rel(REC, snap(fw(base([OWN], policy="drop")), nics=()))
    assert "no VM" in novm.reason and novm.steps[0].args == {"family": "inet", "table": "filter",
                                                             "chain": "forward", "bridge": "br0"}
    assert rel(REC, dataclasses.replace(snap(None), firewall=None)) is None  # not read: nothing known


# --- libnftables JSON ----------------------------------------------------------------------------------------
RULESET = {"nftables": [
    {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
    {"table": {"family": "ip", "name": "nat", "handle": 2}},
    {"chain": {"family": "ip", "table": "nat", "name": "POSTROUTING", "handle": 1, "type": "nat",
               "hook": "postrouting", "prio": 100, "policy": "accept"}},
    {"rule": {"family": "ip", "table": "nat", "chain": "POSTROUTING", "handle": 2, "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                   "right": {"prefix": {"addr": "203.0.113.0", "len": 24}}}},
        {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                   "right": {"prefix": {"addr": "203.0.113.0", "len": 24}}}},
        {"counter": {"packets": 0, "bytes": 0}}, {"xt": {"type": "target", "name": "MASQUERADE"}}]}},
    {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 1, "type": "filter",
               "hook": "forward", "prio": 0, "policy": "drop"}},
    {"chain": {"family": "inet", "table": "filter", "name": "helper", "handle": 2}},
    {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 3, "comment": "x",
              "expr": [{"jump": {"target": "helper"}}]}},
    {"rule": {"family": "ip", "table": "libvirt_network", "chain": "guest_nat", "handle": 4,
              "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                                  "right": {"prefix": {"addr": "198.51.100.0", "len": 24}}}},
                       {"masquerade": None}]}},
    {"chain": {"family": "ip", "table": "libvirt_network", "name": "guest_nat", "handle": 9}},
]}


def test_parse_ruleset():
    chains, nat = firewall.parse_ruleset(RULESET)
    f = Firewall(1, chains, (), nat)
    fwd = f.chain("inet", "filter", "forward")
    assert fwd.base and fwd.policy == "drop" and fwd.hook == "forward" and fwd.prio == 0
    assert fwd.rules == (NftRule(3, ({"jump": {"target": "helper"}},), "x"),)
    assert not f.chain("inet", "filter", "helper").base
    assert [(r.backend, r.source, r.negated_dest) for r in nat] == [
        ("nft", "203.0.113.0/24", "203.0.113.0/24"), ("nft-native", "198.51.100.0/24", None)]
    assert nat[0].rule == ("table ip nat chain POSTROUTING: ip saddr 203.0.113.0/24 ip daddr != 203.0.113.0/24 "
                           "counter xt target MASQUERADE")


def test_a_generation_message_is_parsed():
    attrs = struct.pack("=HH", 8, firewall.NFTA_GEN_ID) + struct.pack(">I", 42) + \
        struct.pack("=HH", 8, firewall.NFTA_GEN_PROC_PID) + struct.pack(">I", 1234) + \
        struct.pack("=HH", 8, firewall.NFTA_GEN_PROC_NAME) + b"nft\0"
    body = struct.pack("=BBH", 0, 0, 0) + attrs
    msg = struct.pack("=IHHII", 16 + len(body), (10 << 8) | firewall.NFT_MSG_NEWGEN, 0, 0, 0) + body
    assert firewall.parse_gen(msg) == (42, 1234, "nft")
    assert kernel.parse_nft(msg) == [(firewall.NFT_MSG_NEWGEN, 42, 1234, "nft")]


# --- kernel events -----------------------------------------------------------------------------------------
def netconf(family, ifindex, *attrs):
    body = struct.pack("=Bxxx", family) + struct.pack("=HHi", 8, kernel.NETCONFA_IFINDEX, ifindex)
    for atype, value in attrs:
        body += struct.pack("=HHi", 8, atype, value)
    return struct.pack("=IHHII", 16 + len(body), kernel.RTM_NEWNETCONF, 0, 0, 0) + body


def test_netconf_events_parsed():
    data = netconf(socket.AF_INET, -1, (kernel.NETCONFA_FORWARDING, 0)) + \
        netconf(socket.AF_INET6, 7, (kernel.NETCONFA_FORWARDING, 1), (3, 1))
    assert kernel.parse_netconf(data) == [("ipv4", -1, 0, True), ("ipv6", 7, 1, False)]


class FakeDaemon:
    def __init__(self, networks=()):
        self.dispatcher = Dispatcher(clock=lambda: 0.0)
        self._known_networks = {n.name: n for n in networks}
        self.events = []

    def note_event(self, source, detail):
        self.events.append((source, detail))


NAT = Network(name="nat1", bridge="virbr1", forward_mode="nat", forward_dev="eth1", ips=("203.0.113.1/24",))
ISO = Network(name="iso", bridge="virbr9", forward_mode=None, forward_dev=None)


def test_netconf_source_scopes_its_passes():
    src = kernel.NetconfSource.__new__(kernel.NetconfSource)
    src.events = src.passes = 0
    d = FakeDaemon([NAT, ISO])
    d.dispatcher.index_name = {5: "virbr1", 6: "eth1", 7: "vnet0"}
    src.handle(d, [netconf(socket.AF_INET, 7, (kernel.NETCONFA_FORWARDING, 0))])  # not a network's
    src.handle(d, [netconf(socket.AF_INET, 6, (kernel.NETCONFA_FORWARDING, 1))])  # turned on
    src.handle(d, [netconf(socket.AF_INET, 6, (kernel.NETCONFA_FORWARDING, 0), (3, 0))])  # a new device's dump
    assert d.dispatcher.take() == ([], [])
    src.handle(d, [netconf(socket.AF_INET6, 6, (kernel.NETCONFA_FORWARDING, 0))])
    assert d.dispatcher.take() == (["virbr1"], ["netconf: ipv6 eth1 forwarding off"])
    src.handle(d, [netconf(socket.AF_INET, -1, (kernel.NETCONFA_FORWARDING, 0))])
    assert d.dispatcher.take() == (["virbr1"], ["netconf: ipv4 all forwarding off"])


def gen_msg(pid, gen=5, name="nft"):
    attrs = struct.pack("=HH", 8, 1) + struct.pack(">I", gen) + struct.pack("=HH", 8, 2) + struct.pack(">I", pid)
    body = struct.pack("=BBH", 0, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), (10 << 8) | kernel.NFT_MSG_NEWGEN, 0, 0, 0) + body


def table_msg():
    body = struct.pack("=BBH", 1, 0, 0)
    return struct.pack("=IHHII", 20, (10 << 8) | 0, 0, 0, 0) + body


def test_nftables_source_skips_its_own_transactions():
    src = kernel.NftablesSource.__new__(kernel.NftablesSource)
    src.events = src.passes = 0
    src.pid = os.getpid()
    d = FakeDaemon([NAT])
    d.dispatcher.set_inventory([VM1])
    src.handle(d, [table_msg(), gen_msg(os.getpid())])
    assert d.dispatcher.take() == ([], [])
    src.handle(d, [table_msg(), gen_msg(4242, gen=6, name="")])
    bridges, reasons = d.dispatcher.take()
    assert bridges == ["br0", "virbr1"] and reasons[0].startswith("nftables: generation 6")


# --- IPv6 forwarding -----------------------------------------------------------------------------------------
def test_ipv6_forwarding_off_turns_accept_ra_to_2_first():
    from snapshots import bridge, link

    net = Network(name="nat6", bridge="virbr1", forward_mode="nat", forward_dev="eth1",
                  ips=("203.0.113.1/24", "2001:db8:13::1/64"))
    sc = {"net/ipv4/ip_forward": "1", "net/ipv6/conf/all/forwarding": "0", "net/ipv6/conf/virbr1/forwarding": "0",
          "net/ipv6/conf/eth1/forwarding": "1", "net/ipv6/conf/eth1/accept_ra": "1"}
    s = snapshot([bridge("virbr1", 5), link("eth1", 6)], networks=[net], sysctl=sc)
    v = ip_forwarding.PLUGIN.check(s, {})
    assert [x.kind for x in v] == ["ipv6_forwarding_off"]
    plan, _ = ip_forward.PLUGIN.plan(v[0], s, {})
    assert [(st.args["key"], st.args["value"]) for st in plan.steps] == [
        ("net/ipv6/conf/eth1/accept_ra", "2"), ("net/ipv6/conf/virbr1/forwarding", "1"),
        ("net/ipv6/conf/all/forwarding", "1")]
    assert plan.steps[0].undo.args == {"key": "net/ipv6/conf/eth1/accept_ra", "value": "1"}
    # an IPv4-only network is not judged on IPv6
    v4 = dataclasses.replace(net, ips=("203.0.113.1/24",))
    assert ip_forwarding.PLUGIN.check(snapshot([bridge("virbr1", 5), link("eth1", 6)], networks=[v4], sysctl=sc),
                                      {}) == []
