"""Engine.reconcile's decision logic, against a FAKE host.

FakeHost below is an in-memory stand-in for netmedic.ops.HostOps and netmedic.nl.Netlink (links(),
link(), fdb_get(), fdb_get_many(), execute()): it records every step the engine executes and applies it to its own
dicts. It is a fake on purpose: these tests cover what the engine decides (observe vs enforce, dry-run,
kill switch, scope, bounds, verification and rollback, records, audit), deterministically and without
root. Whether the steps do the right thing to a real kernel is what tests/integration/test_heal_*.py check, on real
bridges in network namespaces.
"""
from __future__ import annotations

import dataclasses
import json
import os

import pytest
from snapshots import (
    BLOCKING,
    FORWARDING,
    MAC1,
    MAC2,
    bridge,
    domain_xml,
    fdb,
    interface_xml,
    pinned,
    tap,
    uplink,
    write,
)

from netmedic import firewall, nl, ops
from netmedic.audit import Audit
from netmedic.engine import Engine
from netmedic.errors import HostError
from netmedic.facts import Firewall
from netmedic.policies import config
from netmedic.state import State


class FakeHost:
    """HostOps + Netlink in memory. `inert` ops are recorded but change nothing (a kernel that does not
    comply); `failing` ops raise HostError."""

    def __init__(self, links, fdb_entries=None, inert=(), failing=()):
        self._links = {lk.name: lk for lk in links}
        self.fdb = dict(fdb_entries or {})  # (bridge ifindex, mac) -> nl.FdbInfo
        self.inert = set(inert)
        self.failing = set(failing)
        self.executed = []  # every Step, in order
        self.fdb_lookups = []  # (bridge ifindex, mac)

    # --- the Netlink part ---------------------------------------------------------------------
    @property
    def nl(self):
        return self

    def links(self, master=None):
        return [lk for lk in self._links.values() if master is None or lk.master == master]

    def link(self, name_or_index):
        for lk in self._links.values():
            if lk.name == name_or_index or lk.index == name_or_index:
                return lk
        return None

    def fdb_get(self, bridge_index, mac, vlan=None):
        self.fdb_lookups.append((bridge_index, mac))
        return self.fdb.get((bridge_index, mac))

    def fdb_get_many(self, queries):
        return [self.fdb_get(b, mac, vlan) for b, mac, vlan in queries]

    def addresses(self):  # optional facts some invariants need: none on this host
        return {}

    def port_vlans(self):
        return {}

    # --- the HostOps part -------------------------------------------------------------------------
    def execute(self, step):
        self.executed.append(step)
        if step.op in self.failing:
            raise HostError(f"{step.description}: Operation not permitted (EPERM)")
        if step.op in self.inert:
            return
        a = step.args
        port = self.link(a.get("port"))
        if port is None or port.index != a.get("port_index"):
            raise HostError(f"{a.get('port')} (ifindex {a.get('port_index')}) no longer exists as planned")
        if step.op == "fdb_pin":
            self.fdb[(port.master, a["mac"])] = pinned(a["mac"], port.index, port.master)
        elif step.op == "fdb_delete":
            entry = self.fdb.get((port.master, a["mac"]))
            if entry is not None and entry.port_index == port.index:
                del self.fdb[(port.master, a["mac"])]
        elif step.op == "set_master":
            master = self.link(a["bridge"]).index if a.get("bridge") else None
            pinfo = nl.PortInfo(FORWARDING, True, True) if master else None
            self._replace(port, master=master, port=pinfo)
        elif step.op == "set_up":
            self._replace(port, up=a["up"], carrier=a["up"])
        elif step.op == "set_port":
            changes = {k: a[k] for k in ("state", "learning", "flood") if k in a}
            self._replace(port, port=dataclasses.replace(port.port, **changes))
        else:
            raise HostError(f"the fake does not do {step.op}")

    def _replace(self, link, **changes):
        self._links[link.name] = dataclasses.replace(link, **changes)

    def ops_done(self):
        return [(s.op, s.args) for s in self.executed]


SYSCTLS = {"net/ipv4/ip_forward": "1", "net/bridge/bridge-nf-call-iptables": "0"}


@pytest.fixture(autouse=True)
def no_host_reads(monkeypatch):
    """observe() reads sysctls from /proc/sys and iptables: answer from memory instead."""
    monkeypatch.setattr(ops, "read_sysctl", lambda key: SYSCTLS.get(key))

    def no_iptables():
        raise AssertionError("iptables must not be read: no bridge has br_netfilter on")

    monkeypatch.setattr(ops, "read_forward_chains", no_iptables)
    # nf_tables: an empty ruleset (the real one of the namespace the unit tests run in is not theirs).
    monkeypatch.setattr(firewall, "read", lambda force=False, legacy=True: Firewall(1))


class Clock:
    def __init__(self):
        self.now = 1_700_000_000.0

    def __call__(self):
        return self.now


def make_policy(tmp_path, extra: str = "", mode=None):
    text = (f"version: 1\nkill_switch_file: {tmp_path / 'kill-switch'}\n"
            "limits:\n  verify: {retries: 3, interval: 0}\n" + extra)
    return config.parse(text, "test-policy.yaml").with_mode(mode)


def make_engine(tmp_path, host, domains, policy=None, dry_run=False, audit=True, clock=None):
    ddir = tmp_path / "qemu"
    os.makedirs(ddir, exist_ok=True)
    for name, ifaces in domains.items():
        write(ddir, f"{name}.xml", domain_xml(name, ifaces))
    engine = Engine(policy or make_policy(tmp_path), State(str(tmp_path / "state")),
                    Audit(str(tmp_path / "audit.jsonl"), trigger="test") if audit else None,
                    str(ddir), str(tmp_path / "network"), ops=host, dry_run=dry_run,
                    clock=clock or Clock(), sleep=lambda s: None)
    return engine


def audit_lines(tmp_path) -> list:
    with open(tmp_path / "audit.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def saved_state(tmp_path) -> dict:
    with open(tmp_path / "state" / "state.json", encoding="utf-8") as fh:
        return json.load(fh)


VM1 = {"vm1": [interface_xml(MAC1, bridge="br0", tap="vnet0")]}


def poisoned_host(**kw) -> FakeHost:
    """The founding case: vm1's MAC learned on the uplink bond0 instead of its tap vnet0."""
    links = [bridge("br0", 2), uplink("bond0", 3, master=2), tap("vnet0", 10, master=2)]
    return FakeHost(links, {(2, MAC1): fdb(MAC1, 3, 2)}, **kw)


def results(report) -> list:
    return [(o.violation.invariant, o.violation.kind, o.result) for o in report.outcomes]


# --- modes -------------------------------------------------------------------------------------------
def test_enforce_heals_and_records_the_pin(tmp_path):
    host = poisoned_host()
    engine = make_engine(tmp_path, host, VM1)
    report = engine.reconcile(trigger="test")
    assert results(report) == [("fdb_ownership", "poisoned", "healed")]
    assert host.ops_done() == [("fdb_pin", {"port": "vnet0", "port_index": 10, "mac": MAC1})]
    assert host.fdb[(2, MAC1)] == pinned(MAC1, 10, 2)
    assert report.changed and report.errors == []
    key = f"fdb_pin:br0:{MAC1}"
    rec = saved_state(tmp_path)["records"][key]
    assert {k: rec[k] for k in ("kind", "bridge", "port", "mac", "domain")} == \
        {"kind": "fdb_pin", "bridge": "br0", "port": "vnet0", "mac": MAC1, "domain": "vm1"}
    assert rec["correlation_id"] == report.correlation_id
    assert report.outcomes[0].after == {"fdb_entry": {"port": "vnet0", "static": True, "sticky": True}}

    again = engine.reconcile(trigger="test")  # level-triggered and idempotent
    assert again.violations == [] and again.outcomes == [] and not again.changed
    assert len(host.executed) == 1


def test_observe_mode_applies_nothing(tmp_path):
    host = poisoned_host()
    engine = make_engine(tmp_path, host, VM1, policy=make_policy(tmp_path, mode="observe"))
    report = engine.reconcile()
    assert results(report) == [("fdb_ownership", "poisoned", "observed")]
    assert report.outcomes[0].plan is not None  # the fix is planned and shown
    assert host.executed == []
    assert host.fdb[(2, MAC1)].port_index == 3
    assert not report.changed
    assert saved_state(tmp_path)["records"] == {}


def test_per_bridge_observe_applies_nothing_there(tmp_path):
    host = poisoned_host()
    policy = make_policy(tmp_path, "invariants:\n  fdb_ownership:\n    bridges: {'br*': observe}\n")
    report = make_engine(tmp_path, host, VM1, policy=policy).reconcile()
    assert results(report) == [("fdb_ownership", "poisoned", "observed")] and host.executed == []


@pytest.mark.parametrize("how", ["flag", "policy"])
def test_dry_run_applies_nothing_and_reports_planned(tmp_path, how):
    host = poisoned_host()
    policy = make_policy(tmp_path, "dry_run: true\n" if how == "policy" else "")
    engine = make_engine(tmp_path, host, VM1, policy=policy, dry_run=(how == "flag"))
    report = engine.reconcile()
    assert report.dry_run
    assert results(report) == [("fdb_ownership", "poisoned", "planned")]
    assert report.outcomes[0].reason == "dry-run: not applied"
    assert [s.op for s in report.outcomes[0].plan.steps] == ["fdb_pin"]
    assert host.executed == []
    assert not os.path.exists(tmp_path / "state" / "state.json")  # dry-run writes no state either


def test_kill_switch_present_skips(tmp_path):
    host = poisoned_host()
    engine = make_engine(tmp_path, host, VM1)
    (tmp_path / "kill-switch").write_text("")
    report = engine.reconcile()
    assert results(report) == [("fdb_ownership", "poisoned", "skipped")]
    assert "kill switch" in report.outcomes[0].reason
    assert host.executed == []
    os.unlink(tmp_path / "kill-switch")
    assert results(engine.reconcile()) == [("fdb_ownership", "poisoned", "healed")]


@pytest.mark.parametrize("scope", ["  exclude_bridges: [br0]\n", "  bridges: ['virbr*']\n",
                                   "  exclude_domains: ['vm*']\n"], ids=["exclude-bridge", "include", "domain"])
def test_scope_exclusion_means_not_even_reported(tmp_path, scope):
    host = poisoned_host()
    links = [bridge("br0", 2), uplink("bond0", 3, master=2), tap("vnet0", 10, master=2, state=BLOCKING)]
    host._links = {lk.name: lk for lk in links}  # a port_forwarding violation as well
    engine = make_engine(tmp_path, host, VM1, policy=make_policy(tmp_path, "scope:\n" + scope))
    report = engine.reconcile()
    assert report.violations == [] and report.outcomes == []
    assert host.executed == []
    assert host.fdb_lookups == []  # the fdb of an out-of-scope VM is not even read
    events = [e["event"] for e in audit_lines(tmp_path)]
    assert "detected" not in events and "planned" not in events


def test_bridge_mode_off_is_not_reported(tmp_path):
    host = poisoned_host()
    policy = make_policy(tmp_path, "invariants:\n  fdb_ownership:\n    bridges: {br0: 'off'}\n")
    report = make_engine(tmp_path, host, VM1, policy=policy).reconcile()
    assert report.violations == [] and host.executed == []


def test_violation_without_a_remedy(tmp_path):
    links = [bridge("br0", 2), bridge("br1", 5), tap("vnet0", 10, master=5)]
    host = FakeHost(links)
    report = make_engine(tmp_path, host, VM1).reconcile()
    assert results(report) == [("port_forwarding", "wrong_bridge", "no_remedy")]
    assert report.outcomes[0].reason.startswith("no automatic remedy: ")
    assert host.executed == []


def test_healer_refusal_is_skipped_with_its_reason(tmp_path):
    host = poisoned_host()
    host.fdb[(2, MAC1)] = fdb(MAC1, 3, 2, static=True)  # a static entry an admin made
    report = make_engine(tmp_path, host, VM1).reconcile()
    assert results(report) == [("fdb_ownership", "poisoned", "skipped")]
    assert "not made by netmedic" in report.outcomes[0].reason
    assert host.executed == []


# --- verification, rollback, failure ---------------------------------------------------------------
def detached_down_host(**kw) -> FakeHost:
    links = [bridge("br0", 2), uplink("bond0", 3, master=2), tap("vnet0", 10, master=None, up=False)]
    return FakeHost(links, **kw)


def test_reattach_heals_then_the_pin_follows_in_the_same_pass(tmp_path):
    host = detached_down_host()
    report = make_engine(tmp_path, host, VM1).reconcile()
    assert results(report) == [("port_forwarding", "detached", "healed"),
                               ("fdb_ownership", "unpinned", "healed")]
    assert [s.op for s in host.executed] == ["set_master", "set_up", "fdb_pin"]
    assert [v.kind for v in report.violations] == ["detached"]  # the first observation only


def test_verification_failure_rolls_back_in_reverse(tmp_path):
    host = detached_down_host(inert={"set_master"})  # the kernel ignores the enslave
    engine = make_engine(tmp_path, host, VM1)
    report = engine.reconcile()
    assert results(report) == [("port_forwarding", "detached", "rolled_back")]
    ids = {"port": "vnet0", "port_index": 10}
    assert host.ops_done() == [
        ("set_master", {**ids, "bridge": "br0", "bridge_index": 2}),
        ("set_up", {**ids, "up": True}),
        ("set_up", {**ids, "up": False}),  # undo of the last step first
        ("set_master", {**ids, "bridge": None}),
    ]
    assert not host.link("vnet0").up  # back as it was
    assert report.changed
    assert saved_state(tmp_path)["records"] == {}
    key = report.outcomes[0].violation.key
    assert saved_state(tmp_path)["guard"][key]["failures"] == 1
    assert report.retry_at == engine.clock() + 2.0  # the first backoff
    lines = audit_lines(tmp_path)
    assert [(e["event"], e.get("step")) for e in lines if e["event"] == "rollback_step"] == \
        [("rollback_step", "set vnet0 down"), ("rollback_step", "release vnet0 from br0")]
    (rolled,) = [e for e in lines if e["event"] == "rolled_back"]
    assert rolled["result"] == "rolled_back" and rolled["reason"].startswith("verification failed")

    again = engine.reconcile()  # within the backoff: not tried again
    assert results(again) == [("port_forwarding", "detached", "skipped")]
    assert again.outcomes[0].reason.startswith("backing off")
    assert len(host.executed) == 4


def test_apply_error_undoes_the_steps_already_applied(tmp_path):
    host = detached_down_host(failing={"set_up"})
    report = make_engine(tmp_path, host, VM1).reconcile()
    assert results(report) == [("port_forwarding", "detached", "failed")]
    assert "Operation not permitted" in report.outcomes[0].reason
    assert [(s.op, s.args.get("bridge", s.args.get("up"))) for s in host.executed] == \
        [("set_master", "br0"), ("set_up", True), ("set_master", None)]
    assert host.link("vnet0").master is None


def test_breaker_opens_after_repeated_fixes_and_alerts_once(tmp_path):
    """Fixes undone within breaker.hold (here 60 s: every 30 s another agent removes the pin) are a
    fight: the breaker opens once, audited; a trial after the pause re-opens it while the fight goes on."""
    clock = Clock()
    host = poisoned_host()
    policy = make_policy(tmp_path, "  breaker: {trips: 2, window: 600, cooldown: 1800, hold: 60}\n")
    engine = make_engine(tmp_path, host, VM1, policy=policy, clock=clock)
    outcomes = []
    for _ in range(4):
        host.fdb[(2, MAC1)] = fdb(MAC1, 3, 2)  # the uplink reflects the MAC again (e.g. pin removed)
        outcomes.append(engine.reconcile().outcomes[0].result)
        clock.now += 10
    assert outcomes == ["healed", "healed", "skipped", "skipped"]
    assert [s.op for s in host.executed] == ["fdb_pin", "fdb_pin"]
    alerts = [e for e in audit_lines(tmp_path) if e["event"] == "breaker_open"]
    assert len(alerts) == 1 and alerts[0]["level"] == "alert"
    clock.now += 30
    assert engine.reconcile().outcomes[0].result == "healed"  # the first pause is over: one trial fix
    host.fdb[(2, MAC1)] = fdb(MAC1, 3, 2)  # still fought
    clock.now += 10
    assert engine.reconcile().outcomes[0].result == "skipped"  # open again at once, no second alert
    assert len([e for e in audit_lines(tmp_path) if e["event"] == "breaker_open"]) == 1
    assert [s.op for s in host.executed] == ["fdb_pin"] * 3
    # The fight stops: the next trial fix holds past breaker.hold, and the close is audited once.
    clock.now += 3600
    assert engine.reconcile().outcomes[0].result == "healed"  # trial (the pin is gone again: 4th fix)
    clock.now += 120  # held for longer than hold
    host.fdb[(2, MAC1)] = fdb(MAC1, 3, 2)  # a routine event later: not a fight any more
    assert engine.reconcile().outcomes[0].result == "healed"
    closed = [e for e in audit_lines(tmp_path) if e["event"] == "breaker_closed"]
    assert len(closed) == 1 and closed[0]["invariant"] == "fdb_ownership"


def test_vm_restarts_are_not_flapping(tmp_path):
    """Each start of a VM pins its MAC (a fix of `unpinned`); each stop removes the pin with the tap.
    Restarting the same VM more often than breaker.trips within the window is not a flapping subject:
    the stop forgets what was counted against it (found by the virsh benchmark: the 5th start within 10
    minutes went unprotected for the breaker's 30 min cooldown)."""
    clock = Clock()
    host = poisoned_host()
    policy = make_policy(tmp_path, "  breaker: {trips: 2, window: 600, cooldown: 1800}\n")
    engine = make_engine(tmp_path, host, VM1, policy=policy, clock=clock)
    for _ in range(5):
        host.fdb[(2, MAC1)] = fdb(MAC1, 3, 2)  # the VM (re)started: its MAC is not pinned
        assert engine.reconcile().outcomes[0].result == "healed"
        assert [r["mac"] for r in engine.release_domain("vm1", trigger="hook:qemu stopped end")] == [MAC1]
        clock.now += 30
    assert [s.op for s in host.executed] == ["fdb_pin", "fdb_delete"] * 5
    assert not [e for e in audit_lines(tmp_path) if e["event"] == "breaker_open"]


def test_narrowed_pass_sees_the_members_of_the_bond_a_mac_was_learned_on(tmp_path):
    """A pass narrowed to one VM does not dump the bridge's ports; when that VM's MAC was learned on a
    round-robin bond, the bond comes in through the fdb entry, and its members with it, so that
    uplink_aggregation's evidence is the same as in a pass over the whole bridge."""
    from snapshots import link

    links = [bridge("br0", 2), uplink("bond0", 3, master=2, bond_mode=0), link("eth0", 4, master=3),
             link("eth1", 5, master=3), tap("vnet0", 10, master=2)]
    host = FakeHost(links, {(2, MAC1): fdb(MAC1, 3, 2)})
    engine = make_engine(tmp_path, host, VM1, policy=make_policy(tmp_path, mode="observe"))
    evidence = {}
    for kw in ({"bridges": ["br0"], "domains": {"br0": ["vm1"]}}, {"bridges": ["br0"]}):
        report = engine.reconcile(**kw)
        found = [o.violation for o in report.outcomes if o.violation.invariant == "uplink_aggregation"]
        assert found, results(report)
        evidence[kw.get("domains") is None] = found[0].evidence["members"]
    assert evidence == {False: ["eth0", "eth1"], True: ["eth0", "eth1"]}


# --- netmedic's records -----------------------------------------------------------------------------------
def pin_record(mac, port, domain):
    return {"kind": "fdb_pin", "key": f"fdb_pin:br0:{mac}", "bridge": "br0", "port": port, "mac": mac,
            "domain": domain, "created": "2026-01-01T00:00:00Z"}


def seed_state(tmp_path, records):
    os.makedirs(tmp_path / "state", exist_ok=True)
    with open(tmp_path / "state" / "state.json", "w") as fh:
        json.dump({"version": 1, "records": {r["key"]: r for r in records}, "guard": {}}, fh)


def test_stale_pin_of_a_stopped_vm_is_released(tmp_path):
    links = [bridge("br0", 2), uplink("bond0", 3, master=2), tap("vnet0", 10, master=2),
             tap("vnet1", 11, master=2)]  # vnet1: the stopped VM's tap, still there for a moment
    host = FakeHost(links, {(2, MAC1): pinned(MAC1, 10, 2), (2, MAC2): pinned(MAC2, 11, 2)})
    seed_state(tmp_path, [pin_record(MAC1, "vnet0", "vm1"), pin_record(MAC2, "vnet1", "gone")])
    report = make_engine(tmp_path, host, VM1).reconcile()
    assert report.outcomes == []
    assert host.ops_done() == [("fdb_delete", {"port": "vnet1", "port_index": 11, "mac": MAC2})]
    assert (2, MAC2) not in host.fdb and (2, MAC1) in host.fdb
    assert [(r["key"], r["result"]) for r in report.released] == [(f"fdb_pin:br0:{MAC2}", "released")]
    assert list(saved_state(tmp_path)["records"]) == [f"fdb_pin:br0:{MAC1}"]  # the running VM's pin stays
    released = [e for e in audit_lines(tmp_path) if e["event"] == "released"]
    assert len(released) == 1 and released[0]["subject"]["domain"] == "gone"


def test_stale_pin_that_is_no_longer_netmedics_entry_is_forgotten_untouched(tmp_path):
    links = [bridge("br0", 2), uplink("bond0", 3, master=2), tap("vnet0", 10, master=2), tap("vnet1", 11, master=2)]
    host = FakeHost(links, {(2, MAC1): pinned(MAC1, 10, 2), (2, MAC2): fdb(MAC2, 3, 2, static=True)})
    seed_state(tmp_path, [pin_record(MAC2, "vnet1", "gone")])
    report = make_engine(tmp_path, host, VM1).reconcile()
    assert host.executed == []  # someone else's entry now: left alone
    assert [r["result"] for r in report.released] == ["released"]
    assert saved_state(tmp_path)["records"] == {}


def test_stale_pin_is_only_planned_in_dry_run(tmp_path):
    links = [bridge("br0", 2), tap("vnet0", 10, master=2), tap("vnet1", 11, master=2)]
    host = FakeHost(links, {(2, MAC1): pinned(MAC1, 10, 2), (2, MAC2): pinned(MAC2, 11, 2)})
    seed_state(tmp_path, [pin_record(MAC2, "vnet1", "gone")])
    report = make_engine(tmp_path, host, VM1, dry_run=True).reconcile()
    assert [r["result"] for r in report.released] == ["planned"]
    assert host.executed == []
    assert list(saved_state(tmp_path)["records"]) == [f"fdb_pin:br0:{MAC2}"]


# --- the audit log ------------------------------------------------------------------------------------------
def test_audit_log_is_one_json_object_per_line(tmp_path):
    host = poisoned_host()
    engine = make_engine(tmp_path, host, VM1)
    first = engine.reconcile(trigger="test")
    host.fdb[(2, MAC1)] = fdb(MAC1, 3, 2)
    second = engine.reconcile(trigger="test")
    engine.audit.close()
    with open(tmp_path / "audit.jsonl", encoding="utf-8") as fh:
        raw = fh.read()
    assert raw.endswith("\n")
    lines = [json.loads(line) for line in raw.splitlines()]  # every line is one JSON object
    assert all(isinstance(e, dict) for e in lines)
    for e in lines:
        assert list(e)[:2] == ["ts", "event"]
        assert e["ts"].endswith("Z") or e["ts"].endswith("+00:00")
        assert e["correlation_id"] in (first.correlation_id, second.correlation_id)
        assert e["trigger"] == "test" and e["pid"] == os.getpid()
    assert first.correlation_id != second.correlation_id
    by_event = {}
    for e in lines:
        by_event.setdefault(e["event"], []).append(e)
    for event in ("detected", "healed"):
        for e in by_event[event]:
            assert e["invariant"] == "fdb_ownership"
            assert e["subject"] == {"bridge": "br0", "port": "vnet0", "domain": "vm1", "mac": MAC1}
    (detected, *_) = by_event["detected"]
    assert detected["kind"] == "poisoned" and detected["evidence"]["fdb_entry"]["port"] == "bond0"
    healed = by_event["healed"]
    assert [e["correlation_id"] for e in healed] == [first.correlation_id, second.correlation_id]
    assert healed[0]["steps"] == [f"pin {MAC1} static sticky on vnet0"]
    assert healed[0]["result"] == "healed" and healed[0]["healer"] == "fdb_pin"
    assert len(by_event["reconciled"]) == 2


def test_observe_mode_audits_a_violation_once_while_it_persists(tmp_path):
    host = poisoned_host()
    engine = make_engine(tmp_path, host, VM1, policy=make_policy(tmp_path, mode="observe"))
    engine.reconcile()
    engine.reconcile()
    events = [e["event"] for e in audit_lines(tmp_path)]
    assert events.count("detected") == 1 and events.count("planned") == 1


def test_stale_pin_on_an_out_of_scope_bridge_is_not_touched(tmp_path):
    links = [bridge("br0", 2), tap("vnet0", 10, master=2), bridge("br9", 9), tap("vnet1", 11, master=9)]
    host = FakeHost(links, {(2, MAC1): pinned(MAC1, 10, 2), (9, MAC2): pinned(MAC2, 11, 9)})
    rec = {**pin_record(MAC2, "vnet1", "gone"), "key": f"fdb_pin:br9:{MAC2}", "bridge": "br9"}
    seed_state(tmp_path, [rec])
    policy = make_policy(tmp_path, "scope:\n  exclude_bridges: [br9]\n")
    report = make_engine(tmp_path, host, VM1, policy=policy).reconcile()
    assert host.executed == [] and host.fdb_lookups == [(2, MAC1)]
    assert report.released == []


# --- duplicate MACs: quarantine and its release ----------------------------------------------------------
CLONES = {"original": [interface_xml(MAC2, bridge="br0", tap="vnet1")],
          "clone": [interface_xml(MAC2, bridge="br0", tap="vnet2")]}


def clone_host() -> FakeHost:
    links = [bridge("br0", 2), tap("vnet1", 11, master=2), tap("vnet2", 12, master=2)]
    return FakeHost(links, {(2, MAC2): pinned(MAC2, 11, 2)})


def test_enforced_quarantine_holds_and_port_forwarding_leaves_it_alone(tmp_path):
    host = clone_host()
    policy = make_policy(tmp_path, "invariants:\n  unique_mac:\n    mode: enforce\n")
    engine = make_engine(tmp_path, host, CLONES, policy=policy)
    report = engine.reconcile()
    # verified: the port is quarantined; the round after it, port_forwarding's fix is held back by the engine
    assert results(report) == [("unique_mac", "duplicate_vm_mac", "healed"),
                               ("port_forwarding", "not_forwarding", "skipped")]
    assert report.outcomes[1].reason.startswith("precedence:")
    assert host.ops_done() == [("set_port", {"port": "vnet2", "port_index": 12, "state": nl.BR_STATE_LISTENING})]
    rec = saved_state(tmp_path)["records"]["quarantine:vnet2"]
    assert rec["prior_state"] == FORWARDING and rec["domain"] == "clone"
    # Next pass: the duplicate persists (that is the point); nothing flips the port back.
    again = engine.reconcile()
    assert results(again) == [("port_forwarding", "not_forwarding", "skipped"),
                              ("unique_mac", "duplicate_vm_mac", "skipped")]
    assert "held by netmedic's quarantine" in again.outcomes[0].reason  # the engine's precedence rule
    assert "already quarantined" in again.outcomes[1].reason
    assert len(host.executed) == 1


def test_quarantine_is_released_when_the_duplicate_is_gone(tmp_path):
    links = [bridge("br0", 2), tap("vnet1", 11, master=2), tap("vnet2", 12, master=2, state=nl.BR_STATE_LISTENING)]
    host = FakeHost(links, {(2, MAC2): pinned(MAC2, 11, 2)})
    seed_state(tmp_path, [{"kind": "quarantine", "key": "quarantine:vnet2", "bridge": "br0", "port": "vnet2",
                           "mac": MAC2, "domain": "clone", "prior_state": FORWARDING}])
    # the clone got a new MAC: its NIC is MAC1 on vnet2 now
    domains = {"original": CLONES["original"], "clone": [interface_xml(MAC1, bridge="br0", tap="vnet2")]}
    report = make_engine(tmp_path, host, domains).reconcile()
    assert host.ops_done()[0] == ("set_port", {"port": "vnet2", "port_index": 12, "state": FORWARDING})
    assert [(r["key"], r["result"]) for r in report.released] == [("quarantine:vnet2", "released")]
    assert host.link("vnet2").port.state == FORWARDING
    assert "quarantine:vnet2" not in saved_state(tmp_path)["records"]


def test_pin_of_a_vm_whose_xml_is_unreadable_is_kept(tmp_path):
    links = [bridge("br0", 2), tap("vnet0", 10, master=2), tap("vnet1", 11, master=2)]
    host = FakeHost(links, {(2, MAC1): pinned(MAC1, 10, 2), (2, MAC2): pinned(MAC2, 11, 2)})
    seed_state(tmp_path, [pin_record(MAC1, "vnet0", "vm1"), pin_record(MAC2, "vnet1", "vm2")])
    bad = interface_xml(MAC2, bridge="br0", tap="vnet1", vlans=[5000])  # vm2 runs; its file is now invalid
    report = make_engine(tmp_path, host, {**VM1, "vm2": [bad]}).reconcile()
    assert [os.path.basename(e.split(":")[0]) for e in report.errors] == ["vm2.xml"]
    assert host.executed == []
    assert sorted(saved_state(tmp_path)["records"]) == [f"fdb_pin:br0:{MAC1}", f"fdb_pin:br0:{MAC2}"]
