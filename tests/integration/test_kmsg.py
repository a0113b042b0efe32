"""The kernel log as a source of facts and events (netmedic.kmsg, netmedic.sources.kmsg).

A NIC hang cannot be caused here (no e1000e in a namespace), so its kernel-log lines are REPLAYED through
the source's seam: a regular file of /dev/kmsg records, named by the source's `path` or by the
NETMEDIC_KMSG environment variable, in place of /dev/kmsg. The lines are the drivers' own wording (e1000e's
e1000_print_hw_hang / e1000_reset_task, the stack's dev_watchdog, nf_conntrack's early_drop path). The
rest is real: the real /dev/kmsg is read, the daemon and the engine are the real ones, the bridge is a
kernel bridge in the test's namespace.
"""
from __future__ import annotations

import os
import time

from conftest import Netmedic  # noqa: F401  (the fixtures' helpers)
from test_field import FieldLab, _found, _wait

from netmedic import kmsg
from netmedic.audit import Audit
from netmedic.daemon import Daemon
from netmedic.engine import Engine
from netmedic.policies import config
from netmedic.sources.kmsg import KmsgSource
from netmedic.state import State

HANG = "e1000e 0000:00:19.0 eno1: Detected Hardware Unit Hang:"
RESET = "e1000e 0000:00:19.0 eno1: Reset adapter unexpectedly"
WATCHDOG = "NETDEV WATCHDOG: CPU: 1: eno1 (e1000e): transmit queue 0 timed out 5124 ms"
CT_FULL = "nf_conntrack: nf_conntrack: table full, dropping packet"
OWN = "br0: received packet on eno1 with own address as source address (addr:52:54:00:aa:00:01, vlan:0)"


def record(message, seq=1, ts=None, prio=4):
    ts = kmsg.uptime() if ts is None else ts
    return f"{prio},{seq},{int(ts * 1e6)},-;{message}\n"


def test_records_are_parsed_and_classified():
    assert kmsg.parse_record(record(HANG, 7, 12.5)).as_dict() == {
        "kind": "nic_hang", "device": "eno1", "message": HANG, "ts": 12.5, "seq": 7}
    assert kmsg.parse_record(record(RESET)).kind == "nic_reset"
    assert (kmsg.parse_record(record(WATCHDOG)).kind, kmsg.parse_record(record(WATCHDOG)).device) == \
        ("tx_timeout", "eno1")
    ev = kmsg.parse_record(record(CT_FULL))
    assert ev.kind == "conntrack_full" and ev.device is None
    ev = kmsg.parse_record(record(OWN))
    assert ev.kind == "own_address" and ev.device == "eno1"
    assert kmsg.parse_record(record("e1000e: eno1 NIC Link is Up 1000 Mbps Full Duplex")) is None
    assert kmsg.parse_record("not a record") is None
    # continuation lines (the record's dictionary) are skipped
    text = record(HANG) + " SUBSYSTEM=pci\n DEVICE=+pci:0000:00:19.0\n" + record("unrelated", 2)
    assert [e.kind for e in kmsg.parse_lines(text)] == ["nic_hang"]


def test_the_real_kernel_log_is_read_without_blocking():
    t0 = time.monotonic()
    events = kmsg.recent(window=1e9)  # the whole ring buffer of this host
    assert isinstance(events, list) and time.monotonic() - t0 < 5
    fd = os.open(kmsg.KMSG, os.O_RDONLY | os.O_NONBLOCK)
    try:
        first = os.read(fd, kmsg.MAX_READ).decode("utf-8", "replace")
    finally:
        os.close(fd)
    assert first.split(";", 1)[0].count(",") >= 3, first  # the record format parse_record reads


def test_recent_keeps_the_window(tmp_path):
    path = tmp_path / "kmsg"
    now = kmsg.uptime()
    path.write_text(record(HANG, 1, now - 900) + record(RESET, 2, now - 10))
    assert [e.kind for e in kmsg.recent(600, path=str(path), now=now)] == ["nic_reset"]


def _daemon(tmp_path):
    policy = config.parse(f"version: 1\nkill_switch_file: {tmp_path / 'kill'}\n", "policy.yaml")
    os.makedirs(tmp_path / "qemu", exist_ok=True)
    engine = Engine(policy, State(str(tmp_path / "state")), Audit(str(tmp_path / "audit.jsonl"), trigger="t"),
                    str(tmp_path / "qemu"), str(tmp_path / "net"))
    return Daemon(engine)


def test_source_seam_audits_and_asks_for_a_pass(tmp_path):
    """Lines replayed through the source's seam (a file in place of /dev/kmsg), into a real Daemon."""
    path = tmp_path / "kmsg"
    path.write_text(record("old line before the daemon started", 1) + record(HANG, 2))
    daemon = _daemon(tmp_path)
    src = KmsgSource(path=str(path))  # follows from the end: the old lines are not events
    try:
        assert src.fileno() is None and src.status()["state"] == "following"
        assert src.poll(daemon, 100.0) == 100.0 + src.POLL
        assert src.seen == 0 and not daemon.dispatcher.due()
        with open(path, "a") as fh:
            fh.write(record(RESET, 3) + record("e1000e: eno1 NIC Link is Up", 4) + record(CT_FULL, 5))
        src.poll(daemon, 101.0)
        assert src.seen == 2 and src.status()["last"]["kind"] == "conntrack_full"
        bridges, _narrow, reasons = daemon.dispatcher.take_scoped()
        assert bridges is None and reasons == ["kernel nic_reset eno1", "kernel conntrack_full"]  # all bridges
        lines = [line for line in open(tmp_path / "audit.jsonl") if '"kernel_event"' in line]
        assert len(lines) == 2 and "Reset adapter unexpectedly" in lines[0]
        assert [e["source"] for e in daemon.last_events] == ["kmsg", "kmsg"]
    finally:
        src.close()


def test_nic_hang_is_reported_at_its_bridge_by_check(topo, tmp_path, monkeypatch):
    lab = FieldLab(topo, tmp_path)
    topo.run(lab.host, "ip", "link", "set", "dev", "uplink0", "down")
    topo.run(lab.host, "ip", "link", "set", "dev", "uplink0", "name", "eno1")
    topo.set_up(lab.host, "eno1")
    lab.start_vm("vm1")
    path = tmp_path / "kmsg"
    path.write_text(record(HANG, 1) + record(RESET, 2) + record(CT_FULL, 3))
    monkeypatch.setenv(kmsg.ENV_PATH, str(path))
    report = lab.nm.check_json()
    found = _found(report, "kernel_log")
    assert len(found) == 1 and found[0]["kind"] == "nic_hang"
    assert found[0]["subject"] == {"bridge": "br0", "port": "eno1"}
    ev = found[0]["evidence"]
    assert ev["kinds"] == ["nic_hang", "nic_reset"] and ev["kernel_log"] == [HANG, RESET]
    assert "ethtool -K eno1 tso off gso off" in ev["fix"]
    ct = _found(report, "conntrack_capacity")
    assert len(ct) == 1 and ct[0]["kind"] == "table_full" and ct[0]["evidence"]["kernel_log"] == [CT_FULL]
    # the table has room now (and its size is the host's): reported, never "healed" here
    lab.nm.set_policy({"invariants": {"conntrack_capacity": {"mode": "enforce"}}})
    out = [o for o in lab.nm.heal_json()["outcomes"] if o["violation"]["invariant"] == "conntrack_capacity"]
    assert out[0]["result"] == "skipped"
    path.write_text("")
    assert not _found(lab.nm.check_json(), "kernel_log")


def test_daemon_follows_the_kernel_log(topo, tmp_path, monkeypatch):
    lab = FieldLab(topo, tmp_path)
    lab.start_vm("vm1")
    path = tmp_path / "kmsg"
    path.write_text(record("boot noise", 1))
    monkeypatch.setenv(kmsg.ENV_PATH, str(path))
    lab.nm.set_policy({"invariants": {"kernel_log": {"own_address": "report"}}})
    daemon = lab.nm.daemon("--resync", "3600")
    try:
        assert _wait(lambda: any(r.get("trigger") == "startup" for r in lab.nm.audit("reconciled")))
        assert not [r for r in lab.nm.audit("detected") if r["invariant"] == "kernel_log"]
        started = [r for r in lab.nm.audit("daemon_started")]
        assert started and started[0]["sources"].get("kmsg") == "following"
        with open(path, "a") as fh:
            fh.write(record(OWN.replace("eno1", "uplink0"), 2))
        assert _wait(lambda: [r for r in lab.nm.audit("detected") if r["invariant"] == "kernel_log"], 5)
        ev = [r for r in lab.nm.audit("kernel_event")]
        assert ev and ev[0]["kind"] == "own_address" and ev[0]["device"] == "uplink0"
        det = [r for r in lab.nm.audit("detected") if r["invariant"] == "kernel_log"][0]
        assert det["kind"] == "own_address" and det["subject"] == {"bridge": "br0", "port": "uplink0"}
    finally:
        daemon.terminate()
        daemon.wait(10)


def test_recent_reads_only_what_was_logged_since_and_notices_a_rewrite(tmp_path):
    path = tmp_path / "kmsg-incremental"
    now = kmsg.uptime()
    path.write_text(record(HANG, 1, now - 5))
    assert [e.seq for e in kmsg.recent(600, path=str(path), now=now)] == [1]
    with open(path, "a") as fh:
        fh.write(record(RESET, 2, now - 1))
    assert [e.seq for e in kmsg.recent(600, path=str(path), now=now)] == [1, 2]
    path.write_text("")  # a replayed log replaced by an empty one
    assert kmsg.recent(600, path=str(path), now=now) == []
