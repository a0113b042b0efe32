"""Keeps bench/ from rotting: a quick run of the reconcile figure at a small scale. Asserts on the
structure and the counts the run produces, never on timings (the machine is shared and noisy)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_quick_reconcile(tmp_path):
    out, raw = tmp_path / "benchmarks.md", tmp_path / "results.json"
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "reconcile", "--out", str(out),
                           "--json", str(raw)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(raw.read_text())
    rec = res["reconcile"]
    n = res["scale"]["repeat"]
    assert res["host"]["vms"] == res["scale"]["vms"] == rec["vm_nics"]
    # the VM pins plus the LAN entries the setup asked for, plus the ports' own (local) entries
    assert rec["fdb_entries"] >= res["scale"]["fdb"]
    for key in ("baseline", "engine", "command"):
        assert len(rec[key]) == n and all(t > 0 for t in rec[key])
        assert rec["summary"][key]["n"] == n
    assert rec["violations"] == [0] * n, "the host is protected already: a pass must find nothing"
    assert rec["changed"] == [False] * n and rec["command_rc"] == [0] * n and not rec["errors"]
    for key in ("nproc", "kernel", "python", "pyroute2", "structlog", "date"):
        assert res["machine"][key]
    text = out.read_text()
    assert "| figure | setup | baseline (same run) | result | ratio | target | met? |" in text
    assert "full reconcile, in-process" in text and "`netmedic heal` command" in text
    # every namespace the run made is gone
    assert res["namespaces"], "the run must say which namespaces it made"
    for ns in res["namespaces"]:
        assert not os.path.exists(os.path.join("/run/netns", ns)), f"{ns} was left behind"


def test_bench_quick_daemon_and_hook(tmp_path):
    """The daemon figures and the hook figure at a small scale: every protected VM pinned, every
    detached tap re-pinned, every MAC moved in the storms healed, the flood overflowed the small buffer
    and ended in resyncs, and with a daemon running every hook phase was handled by the daemon."""
    out, raw = tmp_path / "benchmarks.md", tmp_path / "results.json"
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "events,protect,footprint,hook",
                           "--out", str(out), "--json", str(raw)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(raw.read_text())
    dmn = res["daemon"]
    assert dmn["daemon_alive"] and dmn["daemon_rc"] == 0
    assert len(dmn["protect"]["samples"]) == res["scale"]["protect"] and not dmn["protect"]["missed"]
    assert not dmn["heal"]["missed"] and len(dmn["heal"]["all_healed"]) == res["scale"]["heal"]
    for key in ("storm", "flood"):
        st = dmn[key]
        assert st["injected"] > 0 and st["healed"] == st["injected"], (key, st)
    assert dmn["flood"]["overflows"] > 0 and dmn["flood"]["overflow_resyncs"] > 0, dmn["flood"]
    for c in res["consume"]["rates"]:
        assert c["detected"] == c["injected"], c
    hk = res["hook"]
    assert all(rc == 0 for m in ("daemon", "no_daemon") for rcs in hk[m]["rc"].values() for rc in rcs)
    # prepare/start/started/stopped/release, each round: all five done by the daemon
    assert hk["daemon"]["handled_by_daemon"] == 5 * res["scale"]["hook_repeat"]
    text = out.read_text()
    assert "time to protect" in text and "hook cost: `start` (daemon)" in text
    for ns in res["namespaces"]:
        assert not os.path.exists(os.path.join("/run/netns", ns)), f"{ns} was left behind"


def test_bench_quick_guard(tmp_path):
    """Time to protect with the reflection guard: a daemon with `remedy: guard` guards every new VM (the
    nf_tables event of its set element is seen for each), by the reflection_guard healer."""
    out, raw = tmp_path / "benchmarks.md", tmp_path / "results.json"
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "guard", "--out", str(out),
                           "--json", str(raw)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(raw.read_text())
    g = res["guard"]
    assert g["daemon_alive"] and g["daemon_rc"] == 0 and "reflection_guard" in g["healers"] and "fdb_pin" not in g["healers"]
    assert len(g["protect"]["samples"]) == res["scale"]["protect"] and not g["protect"]["missed"]
    assert "time to protect, reflection guard" in out.read_text()
    for ns in res["namespaces"]:
        assert not os.path.exists(os.path.join("/run/netns", ns)), f"{ns} was left behind"


def test_bench_quick_firewall(tmp_path):
    """The firewall figure at a small scale: every change healed (a heal seen for every trial), and the
    no-op pass over the unchanged 5,000-rule ruleset read no ruleset. Structure, not timings."""
    out, raw = tmp_path / "benchmarks.md", tmp_path / "results.json"
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "firewall", "--out", str(out),
                           "--json", str(raw)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(raw.read_text())
    fw = res["firewall"]
    for kind in ("ip_forward", "iface_forward", "iptables_nft", "nft_inet"):
        assert len(fw[kind]) == res["scale"]["fw_trials"] and not fw["failed"][kind], (kind, fw)
        assert all(t > 0 for t in fw[kind])
    noop = fw["noop"]
    assert noop["reads_when_unchanged"] == 0 and noop["rules"] == 5000
    assert len(noop["unchanged"]) == len(noop["read"]) == res["scale"]["fw_repeat"]
    assert "heal time: nftables `table inet` forward chain" in out.read_text()
    for ns in res["namespaces"]:
        assert not os.path.exists(os.path.join("/run/netns", ns)), f"{ns} was left behind"
