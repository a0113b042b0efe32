"""The shipped alert rules and dashboard against a real Prometheus scraping two netmedic daemons.

Two "hypervisors": namespace A is the seed case (bridge br0, the VM's tap vnet0, an uplink to a switch),
namespace B a second host running a clone of A's VM (same MAC, on its own br0/vnet0). Each runs its own
`netmedic daemon` on run-state XML of the test's own, serving /metrics on an address of its namespace. A
third namespace runs the real `prometheus` (Debian's package, installed by scripts/prometheus-test-env.sh)
with a temporary config and data directory, 1 s scrape and evaluation intervals, and the shipped rule file;
it reaches A and B through veths (198.51.100.0/30 and 198.51.100.4/30).

NetmedicVmMacOnSeveralHosts waits `for: 15m` (a live migration's overlap, see the rule file): the shipped
file is loaded as it is and the alert must be pending; a copy of the same rules with every `for:` cut to 1 s
(its own group, netmedic-fast) must reach firing. promtool checks and unit-tests the rule file here too.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml
from conftest import ROOT, Netmedic

from netmedic import lab as netlab

PROM_DIR = os.path.join(ROOT, "packaging", "prometheus")
RULES = os.path.join(PROM_DIR, "netmedic-alerts.yml")
RULE_TESTS = os.path.join(PROM_DIR, "netmedic-alerts.test.yml")
DASHBOARD = os.path.join(PROM_DIR, "netmedic-dashboard.json")
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(not (PROMETHEUS and PROMTOOL),
                                      reason="prometheus/promtool missing: run scripts/prometheus-test-env.sh")
CLONE_MAC = "52:54:00:12:34:56"  # the seed VM's MAC, used by B's clone too


@needs_prometheus
def test_promtool_checks_and_unit_tests_the_rules():
    res = subprocess.run([PROMTOOL, "check", "rules", RULES], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run([PROMTOOL, "test", "rules", os.path.basename(RULE_TESTS)], cwd=PROM_DIR,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr


def test_every_alert_has_firing_and_quiet_unit_tests():
    with open(RULES) as fh:
        alerts = {r["alert"] for g in yaml.safe_load(fh)["groups"] for r in g["rules"] if "alert" in r}
    with open(RULE_TESTS) as fh:
        tests = yaml.safe_load(fh)["tests"]
    firing, quiet = set(), set()
    for t in tests:
        for a in t.get("alert_rule_test", []):
            (firing if a.get("exp_alerts") else quiet).add(a["alertname"])
    assert alerts and alerts == firing == quiet, (alerts, firing, quiet)
    assert "NetmedicVmMacOnSeveralHosts" in alerts


def _dashboard_queries() -> list:
    with open(DASHBOARD) as fh:
        dash = json.load(fh)
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def _grafana(expr: str) -> str:
    """The dashboard's Grafana variables as Grafana would fill them in (all hosts, a 1 m rate window)."""
    return expr.replace("$__rate_interval", "1m").replace("$instance", ".+")


API_CLIENT = r"""
import json, sys, urllib.parse, urllib.request
out = []
for path, params in json.load(sys.stdin):
    url = sys.argv[1] + path + ("?" + urllib.parse.urlencode(params) if params else "")
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            out.append(json.loads(r.read().decode()))
    except urllib.error.HTTPError as e:  # an API error is JSON; a server still starting answers 503 in text
        body = e.read().decode(errors="replace")
        try:
            out.append(json.loads(body or "{}") or {"status": "error", "error": str(e)})
        except ValueError:
            out.append({"status": "error", "error": f"{e}: {body[:200]}"})
    except OSError as e:
        out.append({"status": "unreachable", "error": str(e)})
json.dump(out, sys.stdout)
"""


class Prom:
    """The test's Prometheus in its namespace; `api()` asks it many things in one process there."""

    def __init__(self, topo, ns, workdir, targets, rule_files):
        self.topo, self.ns = topo, ns
        self.data = os.path.join(workdir, "prom-data")
        os.makedirs(self.data)
        cfg = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
               "rule_files": rule_files,
               "scrape_configs": [{"job_name": "netmedic", "static_configs": [{"targets": targets}]}]}
        self.config = os.path.join(workdir, "prometheus.yml")
        with open(self.config, "w") as fh:
            yaml.safe_dump(cfg, fh)
        self.log = open(os.path.join(workdir, "prometheus.log"), "w")
        self.proc = topo.spawn(ns, PROMETHEUS, f"--config.file={self.config}", f"--storage.tsdb.path={self.data}",
                               "--web.listen-address=127.0.0.1:9090", "--storage.tsdb.retention.time=1h",
                               stdout=self.log, stderr=subprocess.STDOUT)

    def api(self, *calls) -> list:
        res = self.topo.run(self.ns, sys.executable, "-c", API_CLIENT, "http://127.0.0.1:9090",
                            input=json.dumps(calls), timeout=60)
        return json.loads(res.stdout)

    def query(self, expr: str) -> list:
        (r,) = self.api(["/api/v1/query", {"query": expr}])
        assert r.get("status") == "success", (expr, r)
        return r["data"]["result"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # by its PID
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        shutil.rmtree(self.data, ignore_errors=True)  # its TSDB; the config and log stay for a failure's reader


def _wait(pred, timeout=30.0, step=0.5):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            return got
        time.sleep(step)


@needs_prometheus
def test_two_hosts_scraped_by_a_real_prometheus(seed, tmp_path):
    lab, topo = seed, seed.topo
    # host B: its own bridge and the clone's tap (a veth to the clone's namespace), its own run-state XML
    hb, vmb = topo.netns("hvb", ipv6=False), topo.netns("vmb", ipv6=False)
    topo.bridge(hb, "br0")
    topo.veth(hb, "vnet0", vmb, "eth0", mac_a=netlab.tap_mac_for(CLONE_MAC), mac_b=CLONE_MAC)
    topo.enslave(hb, "vnet0", "br0")
    wb = tmp_path / "hostb"
    (wb / "domains").mkdir(parents=True)
    (wb / "networks").mkdir()
    netlab.write_domain_xml(str(wb / "domains"), "seedvm-clone", [{"mac": CLONE_MAC, "bridge": "br0", "tap": "vnet0"}])
    nmb = Netmedic(topo, hb, wb, str(wb / "domains"), str(wb / "networks"))
    # the monitoring namespace, one veth to each host
    mon = topo.netns("mon", ipv6=False)
    topo.veth(mon, "toa", lab.host, "mgmt0")
    topo.veth(mon, "tob", hb, "mgmt0")
    for ns, dev, cidr in ((mon, "toa", "198.51.100.1/30"), (lab.host, "mgmt0", "198.51.100.2/30"),
                          (mon, "tob", "198.51.100.5/30"), (hb, "mgmt0", "198.51.100.6/30")):
        topo.addr(ns, dev, cidr)
    lab.nm.set_policy({"metrics": {"listen": "198.51.100.2:29110"}})
    nmb.set_policy({"metrics": {"listen": "198.51.100.6:29110"}})
    # the shipped rules as they are, and the same rules with every `for:` cut to 1 s in a group of their own
    with open(RULES) as fh:
        fast = yaml.safe_load(fh)
    for g in fast["groups"]:
        g["name"] += "-fast"
        for r in g["rules"]:
            if "for" in r:
                r["for"] = "1s"
    fast_rules = str(tmp_path / "netmedic-alerts-fast.yml")
    with open(fast_rules, "w") as fh:
        yaml.safe_dump(fast, fh)

    da = lab.nm.daemon("--resync", "3600", "--no-dbus")
    db = nmb.daemon("--resync", "3600", "--no-dbus")
    prom = Prom(topo, mon, str(tmp_path), ["198.51.100.2:29110", "198.51.100.6:29110"], [RULES, fast_rules])
    try:
        # both targets up
        def targets_up():
            (r,) = prom.api(["/api/v1/targets", {}])
            if r.get("status") != "success":
                return None
            active = r["data"]["activeTargets"]
            return len(active) == 2 and all(t["health"] == "up" for t in active) and active
        assert _wait(targets_up, 60), prom.api(["/api/v1/targets", {}])

        # the rule files load without error: every rule of both groups evaluates with health ok
        def rules():
            (r,) = prom.api(["/api/v1/rules", {}])
            return r["data"]["groups"] if r.get("status") == "success" else []
        groups = _wait(lambda: (lambda gs: gs if len(gs) == 2 and all(x.get("health") == "ok" for g in gs
                                                                       for x in g["rules"]) else None)(rules()), 30)
        by_name = {g["name"]: g for g in groups or []}
        assert set(by_name) == {"netmedic", "netmedic-fast"}, rules()
        for g in by_name.values():
            for rule in g["rules"]:
                assert rule["health"] == "ok" and not rule.get("lastError"), rule

        # the clone: the MAC on both hosts -> pending under the shipped 15 min, firing with the 1 s copy
        def mac_alert():
            (r,) = prom.api(["/api/v1/alerts", {}])
            return [a for a in r["data"]["alerts"] if a["labels"].get("alertname") == "NetmedicVmMacOnSeveralHosts"
                    and a["labels"].get("mac") == CLONE_MAC and a["state"] == "firing"]
        assert _wait(mac_alert, 30), prom.api(["/api/v1/alerts", {}])
        states = {g["name"]: {a["state"] for r in g["rules"] if r["name"] == "NetmedicVmMacOnSeveralHosts"
                              for a in r.get("alerts", [])} for g in rules()}
        assert states == {"netmedic": {"pending"}, "netmedic-fast": {"firing"}}, states
        hosts = prom.query(f'netmedic_vm_nic_info{{mac="{CLONE_MAC}"}}')
        assert sorted((h["metric"]["instance"], h["metric"]["domain"]) for h in hosts) == [
            ("198.51.100.2:29110", lab.domain), ("198.51.100.6:29110", "seedvm-clone")]
        # no host is down or degraded, no source down: those alerts stay quiet even without their `for:`
        (r,) = prom.api(["/api/v1/alerts", {}])
        quiet = {a["labels"]["alertname"] for a in r["data"]["alerts"]}
        assert not quiet & {"NetmedicDaemonDown", "NetmedicDaemonDegraded", "NetmedicEventSourceDown",
                            "NetmedicHealsFailing", "NetmedicBreakerOpen"}, r["data"]["alerts"]

        # a fault healed on host A (its tap detached from br0) shows in A's heal counters, not in B's
        reattach = 'netmedic_heals_total{healer="reattach",result="healed"}'

        def healed():
            return {x["metric"]["instance"]: float(x["value"][1]) for x in prom.query(reattach)}
        before = _wait(lambda: healed() if len(healed()) == 2 else None, 15)
        assert before == {"198.51.100.2:29110": 0.0, "198.51.100.6:29110": 0.0}, before
        topo.release(lab.host, lab.tap)
        assert _wait(lambda: topo.link(lab.host, lab.tap).get("master") == lab.bridge, 10, 0.05)
        after = _wait(lambda: (lambda h: h if h.get("198.51.100.2:29110", 0) >= 1 else None)(healed()), 20)
        assert after and after["198.51.100.6:29110"] == 0.0, after
        inc = prom.query(f'sum by (instance) (increase({reattach}[1m]))')
        assert {x["metric"]["instance"] for x in inc if float(x["value"][1]) > 0} == {"198.51.100.2:29110"}

        # every dashboard query is valid PromQL for this server (and the fleet panels have data)
        queries = _dashboard_queries()
        answers = prom.api(*[["/api/v1/query", {"query": _grafana(e)}] for _t, e in queries])
        bad = [(t, e, a) for (t, e), a in zip(queries, answers) if a.get("status") != "success"]
        assert not bad, bad
        data = {t: a["data"]["result"] for (t, _e), a in zip(queries, answers)}
        assert [x["metric"]["mac"] for x in data["VM MACs on several hosts"]] == [CLONE_MAC]
        assert data["Hosts: health"]
    finally:
        prom.stop()
        for d in (da, db):
            d.terminate()
            d.wait(15)
    assert prom.proc.returncode is not None
