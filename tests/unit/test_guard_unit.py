"""fdb_ownership's choice of mechanism and the reflection_guard healer, on captured snapshots (pure: no
host). The real-kernel side is tests/test_guard.py."""
from __future__ import annotations

import dataclasses

from snapshots import MAC1, fdb, nic, pinned, seed_links, snapshot

from netmedic.facts import BridgeGuard, GuardTable
from netmedic.healers import HEALERS
from netmedic.policies import INVARIANTS, healer_for

INV = INVARIANTS["fdb_ownership"]
GUARDER = HEALERS["reflection_guard"]
VM1 = nic("vm1", MAC1, "br0", "vnet0")
OPTS = {"require_pin": True, "remedy": "auto"}


def snap(kernel=None, guard=None, **kw):
    s = snapshot(seed_links(), [VM1], **kw)
    return dataclasses.replace(s, kernel=dict(kernel or {}), guard=guard)


def guarded(drops=0, macs=(MAC1,), owners=((MAC1, "vnet0"),)) -> GuardTable:
    return GuardTable(present=True, hooked=True, owners=frozenset(owners),
                      bridges={"br0": BridgeGuard("br0", frozenset(macs), True, drops, drops * 60)})


def kinds(violations) -> list:
    return [(v.kind, INV.remedy(v, OPTS)) for v in violations]


def test_auto_pins_until_the_kernel_answers_then_follows_it():
    unknown, sticky, plain = snap(), snap({"fdb_sticky": True}), snap({"fdb_sticky": False})
    assert kinds(INV.check(unknown, OPTS)) == [("unpinned", "fdb_pin")]
    assert INV.choice(unknown, OPTS) == {"remedy": "auto", "chosen": "pin-sticky", "detected": False,
                                         "why": INV.choice(unknown, OPTS)["why"]}
    assert INV.choice(sticky, OPTS)["chosen"] == "pin-sticky" and INV.choice(sticky, OPTS)["detected"]
    assert kinds(INV.check(plain, OPTS)) == [("unguarded", "reflection_guard")]
    assert INV.choice(plain, OPTS)["chosen"] == "guard" and INV.choice(plain, OPTS)["detected"]


def test_each_forced_mechanism_asks_for_its_own_hold():
    entry = {("br0", MAC1): pinned(MAC1, 10, 2)}
    assert kinds(INV.check(snap(fdb=entry), {**OPTS, "remedy": "guard"})) == [("unguarded", "reflection_guard")]
    assert INV.check(snap(fdb=entry, guard=guarded()), {**OPTS, "remedy": "guard"}) == []
    both = {**OPTS, "remedy": "pin-and-guard"}
    assert kinds(INV.check(snap(), both)) == [("unpinned", "fdb_pin"), ("unguarded", "reflection_guard")]
    assert INV.check(snap(fdb=entry, guard=guarded()), both) == []
    # pin-and-guard where the kernel drops the sticky flag: the guard alone (a pin cannot hold there).
    assert kinds(INV.check(snap({"fdb_sticky": False}), both)) == [("unguarded", "reflection_guard")]


def test_poisoned_goes_to_the_chosen_mechanism():
    poisoned = {("br0", MAC1): fdb(MAC1, port_index=3, bridge_index=2)}
    v = INV.check(snap({"fdb_sticky": False}, fdb=poisoned), OPTS)
    assert kinds(v) == [("poisoned", "reflection_guard")] and v[0].evidence["mechanism"] == "guard"
    assert healer_for(v[0], OPTS) == "reflection_guard"
    plan, why = GUARDER.plan(v[0], snap({"fdb_sticky": False}, fdb=poisoned), OPTS)
    assert [(s.op, s.args) for s in plan.steps] == [
        ("guard_add", {"bridge": "br0", "mac": MAC1, "port": "vnet0"}),
        ("fdb_delete", {"port": "bond0", "port_index": 3, "mac": MAC1})]
    assert plan.steps[0].undo.op == "guard_remove"
    assert plan.records[0]["key"] == f"reflection_guard:br0:{MAC1}"
    assert plan.claims == (("mac", "br0", MAC1, "vnet0"),)
    v = INV.check(snap({"fdb_sticky": True}, fdb=poisoned), OPTS)
    assert kinds(v) == [("poisoned", "fdb_pin")]


def test_guard_drops_are_reported_not_healed():
    s = snap(fdb={("br0", MAC1): fdb(MAC1, port_index=10, bridge_index=2)}, guard=guarded(drops=7))
    v = INV.check(s, {**OPTS, "remedy": "guard"})
    assert [(x.kind, x.severity, x.subject.as_dict()) for x in v] == [("guard_drops", "risk", {"bridge": "br0"})]
    assert v[0].evidence["drops"] == 7 and INV.remedy(v[0], OPTS) is None and "reflect" in INV.hint(v[0])


def test_guard_verify_and_release():
    poisoned = {("br0", MAC1): fdb(MAC1, port_index=3, bridge_index=2)}
    v = INV.check(snap({"fdb_sticky": False}, fdb=poisoned), OPTS)[0]
    assert GUARDER.verify(snap(fdb=poisoned, guard=guarded()), v) is False  # still learned on the bond
    assert GUARDER.verify(snap(guard=guarded()), v) is True  # absent: the VM's next frame teaches the tap
    assert GUARDER.verify(snap(guard=guarded(owners=())), v) is False  # the tap is not allowed: not guarded
    rec = {"kind": "reflection_guard", "key": f"reflection_guard:br0:{MAC1}", "bridge": "br0", "port": "vnet0",
           "mac": MAC1, "domain": "vm1"}
    assert GUARDER.release(rec, snap(guard=guarded())) is None  # the VM runs
    rel = GUARDER.release(rec, snap(guard=guarded()), force=True)  # the hook's stop path
    assert [(s.op, s.args) for s in rel.steps] == [("guard_remove", {"bridge": "br0", "mac": MAC1, "port": "vnet0"})]
    stopped = dataclasses.replace(snapshot(seed_links(), []), guard=GuardTable(present=False))
    assert GUARDER.release(rec, stopped).steps == ()  # a flushed ruleset took it already


def test_a_pin_read_back_without_the_sticky_flag_does_not_verify():
    v = INV.check(snap(), OPTS)[0]
    plain_static = dataclasses.replace(pinned(MAC1, 10, 2), flags=0)
    assert HEALERS["fdb_pin"].verify(snap(fdb={("br0", MAC1): plain_static}), v) is False
    assert HEALERS["fdb_pin"].verify(snap(fdb={("br0", MAC1): pinned(MAC1, 10, 2)}), v) is None
    plan, why = HEALERS["fdb_pin"].plan(v, snap({"fdb_sticky": False}), {**OPTS, "remedy": "pin-sticky"})
    assert plan is None and "sticky" in why


def test_status_shows_the_remedy_chosen():
    from netmedic.status import render_status

    status = {"running": True, "pid": 1, "sources": {}, "remedies": {"fdb_ownership": {
        "remedy": "auto", "chosen": "guard", "why": "the kernel does not keep the sticky flag"}}}
    text = render_status(status, "/run/netmedic/status.json")
    assert "remedies:" in text and "fdb_ownership" in text and "auto -> guard" in text
    assert "does not keep the sticky flag" in text
