"""netmedic/metrics.py: the figures from real engine Reports, the exposition prometheus_client renders,
the textfile written atomically, the policy's `metrics:` section, and a real daemon in a namespace
serving /metrics with the same figures as `netmedic status --json`."""
from __future__ import annotations

import json
import os
import sys
import time

import pytest
from conftest import fdb_entry, is_sticky_pin, nm_env

from netmedic import metrics
from netmedic.engine import Report
from netmedic.errors import PolicyError
from netmedic.model import Outcome, Plan, Subject, Violation
from netmedic.policies import config

prometheus_client = pytest.importorskip("prometheus_client")  # installed by scripts/prometheus-test-env.sh
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


def _samples(text: str) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _v(kind="poisoned", bridge="br0", domain="vm1", mac="52:54:00:00:00:01", inv="fdb_ownership"):
    return Violation(inv, kind, Subject(bridge=bridge, port="vnet0", domain=domain, mac=mac), "m", {})


def _outcome(v, result, healer="fdb_pin"):
    return Outcome(v, result, "", Plan(healer, v, (), "pin"))


def _report(trigger, outcomes, violations=None, errors=()):
    return Report("c1", trigger, violations if violations is not None else [o.violation for o in outcomes],
                  outcomes, [], list(errors))


def test_heals_violations_and_histograms_from_reports():
    m = metrics.Metrics()
    a, b, c = _v(), _v(kind="unpinned", domain="vm2", mac="52:54:00:00:00:02"), _v(bridge="br1", domain="vm3")
    m.pending_since = m.monotonic() - 0.02
    m.observe_pass(_report("event: x", [_outcome(a, "healed"), _outcome(b, "healed"),
                                        _outcome(c, "rolled_back")]), 0.004, ["br0", "br1"])
    s = _samples(m.render().decode())
    heal = ("netmedic_heals_total", (("healer", "fdb_pin"), ("invariant", "fdb_ownership"), ("result", "healed")))
    assert s[heal] == 2
    assert s[("netmedic_heals_total", (("healer", "fdb_pin"), ("invariant", "fdb_ownership"),
                                       ("result", "rolled_back")))] == 1
    assert s[("netmedic_rollbacks_total", (("healer", "fdb_pin"), ("invariant", "fdb_ownership")))] == 1
    # pre-created at 0: an alert's increase() sees the first failure of another healer
    assert s[("netmedic_heals_total", (("healer", "quarantine"), ("invariant", "unique_mac"),
                                       ("result", "failed")))] == 0
    # the healed ones are gone; the rolled-back one stands
    viol = {k: v for k, v in s.items() if k[0] == "netmedic_violations"}
    assert viol == {("netmedic_violations", (("bridge", "br1"), ("invariant", "fdb_ownership"),
                                             ("kind", "poisoned"))): 1}
    assert s[("netmedic_event_to_heal_seconds_count", ())] == 2
    assert 0.02 <= s[("netmedic_event_to_heal_seconds_sum", ())] / 2 < 5
    assert s[("netmedic_protect_seconds_count", ())] == 1  # the unpinned (new VM) one
    assert s[("netmedic_pass_duration_seconds_count", (("scope", "scoped"),))] == 1
    assert s[("netmedic_pass_duration_seconds_bucket", (("le", "0.005"), ("scope", "scoped")))] == 1
    assert s[("netmedic_pass_duration_seconds_bucket", (("le", "0.0025"), ("scope", "scoped")))] == 0

    # a pass scoped to br0 speaks for br0 only: br1's violation still stands; a full pass clears it
    m.observe_pass(_report("event: y", []), 0.001, ["br0"])
    assert m.summary()["violations"] == {"fdb_ownership/poisoned on br1": 1}
    # a pass narrowed to vm9 on br1 does not speak for vm3 on br1
    m.observe_pass(_report("event: z", []), 0.001, ["br1"], {"br1": ["vm9"]})
    assert m.summary()["violations"] == {"fdb_ownership/poisoned on br1": 1}
    m.observe_pass(_report("resync", []), 0.05)
    assert m.summary()["violations"] == {}
    s = _samples(m.render().decode())
    assert s[("netmedic_resyncs_total", (("reason", "periodic"),))] == 1
    assert s[("netmedic_event_to_heal_seconds_count", ())] == 2  # passes without an event time add none


def test_repeated_heals_failed_pass_and_errors():
    m = metrics.Metrics()
    a = _v()
    for _ in range(3):
        m.observe_pass(_report("event: x", [_outcome(a, "healed")]), 0.001, ["br0"])
    s = _samples(m.render().decode())
    assert s[("netmedic_subject_heals_last_hour_max", (("invariant", "fdb_ownership"),))] == 3
    assert s[("netmedic_daemon_degraded", ())] == 0 and s[("netmedic_last_error_timestamp_seconds", ())] == 0
    m.observe_pass(None, 0.001)
    s = _samples(m.render().decode())
    assert s[("netmedic_daemon_degraded", ())] == 1
    assert s[("netmedic_passes_total", (("outcome", "failed"), ("scope", "full")))] == 1
    assert abs(s[("netmedic_last_error_timestamp_seconds", ())] - time.time()) < 5
    m.observe_pass(_report("resync", []), 0.001)
    assert _samples(m.render().decode())[("netmedic_daemon_degraded", ())] == 0


def test_events_are_bounded_and_overflows_counted():
    m = metrics.Metrics()
    m.event("netlink", 5)
    m.overflow()
    for i in range(metrics.MAX_SOURCES + 10):
        m.event(f"client{i}")
    s = _samples(m.render().decode())
    assert s[("netmedic_events_total", (("source", "netlink"),))] == 5
    assert s[("netmedic_netlink_overflows_total", ())] == 1
    assert len([k for k in s if k[0] == "netmedic_events_total"]) <= metrics.MAX_SOURCES + 1
    assert s[("netmedic_events_total", (("source", "other"),))] >= 10


def test_vm_nic_info_exact_labels():
    from netmedic.inventory import Domain, Inventory, VmNic

    m = metrics.Metrics()
    nic = VmNic("vm1", "u1", "52:54:00:aa:bb:cc", "bridge", "br0", "vnet3")
    m.set_inventory(Inventory({"vm1": Domain("vm1", "u1", (nic,))}, {}, []))
    fams = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    (sample,) = fams["netmedic_vm_nic_info"].samples
    assert sample.labels == {"domain": "vm1", "mac": "52:54:00:aa:bb:cc", "bridge": "br0", "tap": "vnet3"}
    assert sample.value == 1 and fams["netmedic_vm_nic_info"].type == "gauge"


def test_textfile_is_written_atomically(tmp_path):
    m = metrics.Metrics()
    path = str(tmp_path / "netmedic.prom")
    m.configure("", path)
    m.event("socket")
    m.write_textfile()
    assert sorted(os.listdir(tmp_path)) == ["netmedic.prom"]  # no temporary left behind
    with open(path) as fh:
        assert _samples(fh.read())[("netmedic_events_total", (("source", "socket"),))] == 1
    # the temporary is in the same directory (a rename, not a copy across filesystems) and not *.prom
    seen = []
    real = os.replace
    try:
        os.replace = lambda a, b: (seen.append((a, b)), real(a, b))
        m.write_textfile()
    finally:
        os.replace = real
    (tmp, dst), = seen
    assert os.path.dirname(tmp) == str(tmp_path) and not tmp.endswith(".prom") and dst == path
    # an unwritable directory: an error shown by status, the daemon goes on
    m.configure("", str(tmp_path / "missing" / "x.prom"))
    m.write_textfile()
    assert "missing" in m.summary()["serving"]["error"]


def test_policy_metrics_section():
    p = config.parse('metrics: {listen: "127.0.0.1:29110", textfile: /var/lib/node/netmedic.prom}', "p.yaml")
    assert (p.metrics_listen, p.metrics_textfile) == ("127.0.0.1:29110", "/var/lib/node/netmedic.prom")
    assert config.parse('metrics: {listen: "[::1]:29110"}', "p.yaml").metrics_listen == "[::1]:29110"
    assert config.load(None).metrics_listen == ""  # off by default
    for text, field in (('metrics: {listen: "localhost:29110"}', "metrics.listen"),
                        ('metrics: {listen: "127.0.0.1:0"}', "metrics.listen"),
                        ('metrics: {listen: "::1:29110"}', "metrics.listen"),
                        ("metrics: {textfile: relative.prom}", "metrics.textfile"),
                        ("metrics: {textfile: /tmp/x.txt}", "metrics.textfile"),
                        ("metrics: {port: 1}", "metrics.port"),
                        ("metrics: 5", "metrics")):
        with pytest.raises(PolicyError) as err:
            config.parse("version: 1\n" + text, "p.yaml")
        assert f"p.yaml:2: field '{field}'" in str(err.value), str(err.value)


def _scrape(topo, ns, url) -> str:
    code = ("import sys, urllib.request\n"
            "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())")
    return topo.run(ns, sys.executable, "-c", code, url, timeout=20).stdout


def _get(topo, ns, url) -> bytes:
    code = ("import sys, urllib.request\n"
            "try:\n    sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())\n"
            "except OSError:\n    sys.stdout.write('refused')")
    return topo.run(ns, sys.executable, "-c", code, url, timeout=20).stdout.encode()


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_daemon_serves_metrics_and_status_shows_them(seed, tmp_path):
    """The seed case: the daemon pins the VM at startup, the reflection then cannot poison it; a tap
    detached is re-attached. /metrics (on the namespace's loopback) and `netmedic status --json` agree."""
    lab, topo = seed, seed.topo
    lab.nm.set_policy({"metrics": {"listen": "127.0.0.1:29110", "textfile": str(tmp_path / "nm.prom")}})
    sock = str(tmp_path / "run" / "netmedic.sock")
    daemon = lab.nm.daemon("--resync", "3600", "--socket", sock, "--no-dbus")
    try:
        assert _wait(lambda: is_sticky_pin(fdb_entry(topo, lab.host, lab.bridge, lab.vm_mac), lab.tap))
        topo.release(lab.host, lab.tap)
        assert _wait(lambda: topo.link(lab.host, lab.tap).get("master") == lab.bridge
                     and is_sticky_pin(fdb_entry(topo, lab.host, lab.bridge, lab.vm_mac), lab.tap))

        def healed(s):
            return sum(v for k, v in s.items() if k[0] == "netmedic_heals_total" and ("result", "healed") in k[1])

        assert _wait(lambda: healed(_samples(_scrape(topo, lab.host, "http://127.0.0.1:29110/metrics"))) >= 2)
        time.sleep(1.2)  # one more tick: the status file and the scrape hold the same passes
        s = _samples(_scrape(topo, lab.host, "http://127.0.0.1:29110/metrics"))
        assert s[("netmedic_vm_nic_info", (("bridge", lab.bridge), ("domain", lab.domain), ("mac", lab.vm_mac),
                                           ("tap", lab.tap)))] == 1
        assert s[("netmedic_heals_total", (("healer", "fdb_pin"), ("invariant", "fdb_ownership"),
                                           ("result", "healed")))] >= 1
        assert s[("netmedic_heals_total", (("healer", "reattach"), ("invariant", "port_forwarding"),
                                           ("result", "healed")))] >= 1
        assert s[("netmedic_events_total", (("source", "netlink"),))] > 0
        assert s[("netmedic_event_source_up", (("source", "netlink"), ("state", "listening")))] == 1
        assert s[("netmedic_event_to_heal_seconds_count", ())] >= 1
        assert s[("netmedic_daemon_degraded", ())] == 0 and s[("netmedic_kill_switch_active", ())] == 0

        proc = topo.run(lab.host, sys.executable, "-m", "netmedic", "status", "--json", "--socket", sock,
                        env=nm_env(), check=False)
        assert proc.returncode == 0, proc.stderr
        st = json.loads(proc.stdout)["metrics"]
        assert st["vm_nics"] == 1 and st["degraded"] is False
        assert st["heals"]["fdb_ownership/fdb_pin"]["healed"] == s[
            ("netmedic_heals_total", (("healer", "fdb_pin"), ("invariant", "fdb_ownership"), ("result", "healed")))]
        assert st["serving"]["listen"] == "127.0.0.1:29110"
        text = topo.run(lab.host, sys.executable, "-m", "netmedic", "status", "--socket", sock, env=nm_env(),
                        check=False).stdout
        assert "metrics: http://127.0.0.1:29110/metrics" in text and "fdb_ownership/fdb_pin" in text
        # the textfile: the same figures, written by the daemon
        def textfile():
            try:
                with open(tmp_path / "nm.prom") as fh:
                    return _samples(fh.read())
            except OSError:
                return {}

        assert _wait(lambda: ("netmedic_vm_nic_info", (("bridge", lab.bridge), ("domain", lab.domain),
                                                        ("mac", lab.vm_mac), ("tap", lab.tap))) in textfile(), 3)
        # the kill switch shows within a tick
        open(os.path.join(lab.nm.workdir, "kill-switch"), "w").close()
        assert _wait(lambda: _samples(_scrape(topo, lab.host, "http://127.0.0.1:29110/metrics"))
                     [("netmedic_kill_switch_active", ())] == 1, 5)
        # a policy reload moves the listener; the old address is closed
        lab.nm.set_policy({"metrics": {"listen": "127.0.0.1:29111"}})
        assert _wait(lambda: b"netmedic_build_info" in _get(topo, lab.host, "http://127.0.0.1:29111/metrics"), 5)
        assert _get(topo, lab.host, "http://127.0.0.1:29110/metrics") == b"refused"
    finally:
        daemon.terminate()
        daemon.wait(15)
