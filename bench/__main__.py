"""`python -m bench [--quick] [--only FIG,...] [--out FILE] [--json FILE] [--seed-seconds S]`

Figures (docs/benchmarks.md explains each): reconcile, events, protect, footprint, scrape, guard, seed, hook,
virsh, firewall. `events`, `protect`, `footprint` and `scrape` share one daemon run on the big host; `guard`
(time to protect with the reflection guard) runs a daemon of its own there, with `remedy: guard`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import yaml

from bench import host as hostmod
from bench import report
from bench.stats import summary
from netmedic.lab import PROBER, Topology, build_seed_case, tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURES = ("reconcile", "events", "protect", "footprint", "scrape", "guard", "seed", "hook", "virsh", "firewall")
METRICS_LISTEN = "127.0.0.1:29110"  # every daemon serves its metrics, as on a host Prometheus scrapes
FULL = {"vms": 1000, "bridges": 4, "fdb": 50000, "repeat": 5, "protect": 8, "heal": 3, "idle": 62, "idle_windows": 3,
        "storm_rate": 20000, "storm_seconds": 10, "rates": [5000, 10000, 20000, 40000, 0],
        "seed_seconds": 60, "hook_vms": 200, "hook_repeat": 7, "virsh_repeat": 10, "scrape_repeat": 50,
        "fw_trials": 100, "fw_repeat": 7}
QUICK = {"vms": 40, "bridges": 2, "fdb": 2000, "repeat": 2, "protect": 3, "heal": 2, "idle": 3, "idle_windows": 1,
         "storm_rate": 5000, "storm_seconds": 2, "rates": [5000, 0], "seed_seconds": 3, "hook_vms": 20,
         "hook_repeat": 2, "virsh_repeat": 2, "scrape_repeat": 10, "fw_trials": 5, "fw_repeat": 2}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def bench_policy(path: str, workdir: str) -> str:
    """The shipped default policy with the rate limits and breaker lifted: the benchmark heals the same
    subjects many times a minute on purpose (the bounds are not what is measured)."""
    with open(os.path.join(ROOT, "policies", "default.yaml")) as fh:
        data = yaml.safe_load(fh)
    data["limits"]["rate"] = {"actions": 10000, "window": 60}  # the ranges policy check allows
    data["limits"]["global_rate"] = {"actions": 100000, "window": 60}
    data["limits"]["breaker"] = {"trips": 1000, "window": 600, "cooldown": 1}
    data["kill_switch_file"] = os.path.join(workdir, "kill-switch")
    data["metrics"] = {"listen": METRICS_LISTEN}  # on each namespace's own loopback
    return write_policy(path, data)


def write_policy(path: str, data: dict) -> str:
    """Write a policy and load it as the daemon will: a value out of range fails the run here, instead of
    the daemon falling back to the shipped default and the figure measuring something else."""
    from netmedic.policies import config

    with open(path, "w") as fh:
        yaml.safe_dump(data, fh)
    config.load(path)
    return path


def worker(topo, ns, fig: str, cfg: dict, workdir: str, timeout: float = 900) -> dict:
    path = os.path.join(workdir, f"{fig}.json")
    with open(path, "w") as fh:
        json.dump(cfg, fh)
    res = topo.run(ns, sys.executable, "-m", "bench.worker", fig, path, env=env(), timeout=timeout,
                   check=False)
    if res.returncode != 0:
        raise RuntimeError(f"bench worker {fig} failed: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


class Proc:
    """RSS and CPU time of one process (by PID, from /proc)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.tck = os.sysconf("SC_CLK_TCK")

    def cpu(self) -> float:
        with open(f"/proc/{self.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.tck

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0


class Daemon:
    def __init__(self, topo, ns, workdir, domain_dir, network_dir, policy, *extra):
        self.audit_log = os.path.join(workdir, "daemon-audit.jsonl")
        argv = [sys.executable, "-m", "netmedic", "daemon", "--domain-xml-dir", domain_dir,
                "--network-xml-dir", network_dir, "--policy", policy, "--audit-log", self.audit_log,
                "--state-dir", os.path.join(workdir, "daemon-state"), *extra]
        self.out = open(os.path.join(workdir, "daemon.log"), "w")
        self.proc = topo.spawn(ns, *argv, env=env(), stdout=self.out, stderr=subprocess.STDOUT)
        self.stat = Proc(self.proc.pid)
        self.t0 = time.monotonic()

    def audit(self, event=None) -> list:
        if not os.path.exists(self.audit_log):
            return []
        with open(self.audit_log) as fh:
            recs = [json.loads(line) for line in fh if line.strip()]
        return [r for r in recs if event is None or r.get("event") == event]

    def wait_started(self, timeout: float = 300) -> float:
        while not any(r.get("trigger") == "startup" for r in self.audit("reconciled")):
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}")
            if time.monotonic() - self.t0 > timeout:
                raise RuntimeError("daemon did not finish its startup reconcile")
            time.sleep(0.1)
        time.sleep(0.5)  # the dispatcher's set_links() after the startup reconcile
        return time.monotonic() - self.t0

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(30)
        finally:
            self.out.close()


class Sampler(threading.Thread):
    """Samples a process's RSS every 0.2 s while running."""

    def __init__(self, proc: Proc):
        super().__init__(daemon=True)
        self.proc, self.rss, self.stopping = proc, [], False

    def run(self):
        while not self.stopping:
            try:
                self.rss.append(self.proc.rss_mb())
            except OSError:
                return
            time.sleep(0.2)


def pinned(topo, ns, bridge: str, taps: dict) -> set:
    """MACs of `taps` (mac -> tap) that are static sticky on their tap in `bridge`'s fdb."""
    out = set()
    for e in topo.fdb(ns, bridge):
        mac = e.get("mac", "").lower()
        if taps.get(mac) == e.get("ifname") and "sticky" in (e.get("flags") or []) and e.get("state") == "static":
            out.add(mac)
    return out


# ---------------------------------------------------------------------------------------------------------
def fig_reconcile(topo, h, sc, workdir, policy) -> dict:
    log(f"reconcile: {sc['repeat']} rounds of baseline / Engine.reconcile / `netmedic heal`")
    cfg = {"bridges": h.bridges, "policy": policy, "domain_dir": h.domain_dir, "network_dir": h.network_dir,
           "audit_log": os.path.join(workdir, "reconcile-audit.jsonl"),
           "state_dir": os.path.join(workdir, "reconcile-state"), "repeat": sc["repeat"]}
    r = worker(topo, h.ns, "reconcile", cfg, workdir)
    r["summary"] = {k: summary(r[k]) for k in ("baseline", "baseline_cpu", "engine", "engine_cpu", "command",
                                                 "command_cpu")}
    return r


def storm_lines(h, workdir, name, inject_every, first_vm=0) -> tuple:
    from bench.worker import _lines_file

    cfg = {"vms": [(v.mac, v.bridge, v.tap) for v in h.vms[first_vm:]], "bridges": h.bridges,
           "lan_macs": h.lan_macs, "uplinks": h.uplinks, "lans": h.lans}
    return _lines_file(cfg, os.path.join(workdir, name), inject_every)


def run_storm(topo, h, d, lines, injected, rate, seconds, heal_timeout) -> dict:
    """Drive `bridge -batch` at `rate` lines/s for `seconds` against the daemon's host; then wait until
    every injected VM MAC is pinned on its tap again."""
    n_overflow0 = len(d.audit("netlink_overflow"))
    sampler = Sampler(d.stat)
    sampler.start()
    cpu0, t0 = d.stat.cpu(), time.monotonic()
    pacer = subprocess.Popen([sys.executable, "-m", "bench.pace", lines, str(rate), str(seconds)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
    batch = subprocess.Popen([tool("bridge"), "-n", h.ns, "-force", "-batch", "-"], stdin=pacer.stdout,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pacer.stdout.close()
    batch.wait(seconds + 120)
    pacer.wait(30)
    gen = json.loads(pacer.stderr.read().decode().strip().splitlines()[-1])
    storm_cpu, storm_wall = d.stat.cpu() - cpu0, time.monotonic() - t0
    inj = [m for m, line in injected if line < gen["lines"]]
    by_mac = {v.mac: v for v in h.vms}
    taps_by_bridge: dict = {}
    for m in inj:
        taps_by_bridge.setdefault(by_mac[m].bridge, {})[m] = by_mac[m].tap
    t_end = time.monotonic()
    healed: set = set()
    while time.monotonic() - t_end < heal_timeout:
        healed = set()
        for br, taps in taps_by_bridge.items():
            healed |= pinned(topo, h.ns, br, taps)
        if len(healed) == len(inj):
            break
        time.sleep(0.5)
    heal_wait = time.monotonic() - t_end
    sampler.stopping = True
    sampler.join()
    overflow = d.audit("netlink_overflow")[n_overflow0:]
    detected = {r.get("subject", {}).get("mac") for r in d.audit("detected") if r.get("kind") == "poisoned"}
    resyncs = [r for r in d.audit("reconciled") if "netlink overflow" in r.get("trigger", "")]
    return {"rate": rate, "generated": gen["lines"], "gen_seconds": gen["seconds"],
            "gen_rate": gen["lines"] / gen["seconds"], "injected": len(inj),
            "healed": len(healed), "detected_poisoned": sum(1 for m in inj if m in detected),
            "seconds_to_all_healed_after_storm": heal_wait if len(healed) == len(inj) else None,
            "overflows": len(overflow), "overflow_resyncs": len(resyncs),
            "daemon_cpu_pct": 100 * storm_cpu / storm_wall, "rss_max_mb": max(sampler.rss or [0])}


def fig_daemon(topo, h, sc, workdir, policy, only) -> dict:
    """One daemon on the big host: footprint idle, time to protect, time to heal a detached tap, the
    event storm (sustained, then beyond the socket's capacity), footprint under the storm."""
    out: dict = {}
    # a small extra bridge for protect/heal: the VMs made here come and go without touching the others
    pbr = "pbr"
    hostmod._batch(topo, "ip", h.ns, [f"link add name {pbr} type bridge stp_state 0 forward_delay 0",
                                      f"link set {pbr} up"], os.path.join(workdir, "pbr.batch"))
    log("daemon: starting on the big host")
    d = Daemon(topo, h.ns, workdir, h.domain_dir, h.network_dir, policy, "--resync", "60")
    try:
        startup = d.wait_started()
        cpu_start = d.stat.cpu()
        out["startup"] = {"seconds": startup, "cpu_seconds": cpu_start,
                          "reconcile_ms": [r.get("duration_ms") for r in d.audit("reconciled")][0]}
        if "scrape" in only:
            log(f"scrape: GET /metrics × {sc['scrape_repeat']}")
            out["scrape"] = worker(topo, h.ns, "scrape", {"url": f"http://{METRICS_LISTEN}/metrics",
                                                           "pid": d.proc.pid, "repeat": sc["scrape_repeat"]}, workdir)
            out["scrape"]["vms"] = len(h.vms)
        if "footprint" in only:
            # back-to-back windows of 62 s: with the resync every 60 s (+ the pass), each holds one resync
            log(f"footprint: idle for {sc['idle_windows']} × {sc['idle']} s")
            windows = []
            for _ in range(sc["idle_windows"]):
                n_resync0 = len([x for x in d.audit("reconciled") if x.get("trigger") == "resync"])
                rss0, c0, t0 = d.stat.rss_mb(), d.stat.cpu(), time.monotonic()
                time.sleep(sc["idle"])
                window = time.monotonic() - t0
                resyncs = [x for x in d.audit("reconciled") if x.get("trigger") == "resync"][n_resync0:]
                windows.append({"cpu_pct": 100 * (d.stat.cpu() - c0) / window, "window_s": round(window, 1),
                                "rss_mb": max(rss0, d.stat.rss_mb()), "resyncs": len(resyncs),
                                "resync_ms": [x.get("duration_ms") for x in resyncs]})
            cpu = [w["cpu_pct"] for w in windows]
            out["idle"] = {"rss_mb": max(w["rss_mb"] for w in windows), "windows": windows,
                           "cpu_pct_window": statistics.median(cpu), "window_s": windows[0]["window_s"],
                           "resyncs_in_window": min(w["resyncs"] for w in windows),
                           "resync_ms": [ms for w in windows for ms in w["resync_ms"]]}
            if out["idle"]["resyncs_in_window"]:  # each window holds the periodic resync: measured as is
                out["idle"]["cpu_pct_with_resync"] = out["idle"]["cpu_pct_window"]
            else:  # a short window (--quick): one resync per 60 s, bounded by the startup's CPU
                out["idle"]["resync_cpu_bound_s"] = cpu_start
                out["idle"]["cpu_pct_with_resync"] = out["idle"]["cpu_pct_window"] + 100 * cpu_start / 60.0
        if "protect" in only:
            log(f"protect: {sc['protect']} new VMs on {pbr}")
            macs = [hostmod.vm_mac(i, 0x70) for i in range(sc["protect"])]
            cfg = {"bridge": pbr, "domain_dir": h.domain_dir, "macs": macs, "repeat": sc["protect"], "gap": 0.3}
            out["protect"] = worker(topo, h.ns, "protect", cfg, workdir)
            log(f"heal: re-create {pbr} {sc['heal']} times")
            cfg = {"bridge": pbr, "taps": [[f"pt{i}", m] for i, m in enumerate(macs)], "repeat": sc["heal"],
                   "gap": 0.5}
            out["heal"] = worker(topo, h.ns, "heal", cfg, workdir)
        if "events" in only:
            n = int(sc["storm_rate"] * sc["storm_seconds"])
            inject_every = max(50, n // 20)
            lines, injected = storm_lines(h, workdir, "daemon-storm.lines", inject_every)
            log(f"events: daemon under {sc['storm_rate']}/s for {sc['storm_seconds']} s")
            out["storm"] = run_storm(topo, h, d, lines, injected, sc["storm_rate"], sc["storm_seconds"],
                                     heal_timeout=30 if sc is QUICK else 90)
            log(f"storm: {out['storm']}")
        out["daemon_alive"] = d.proc.poll() is None
    finally:
        out["daemon_rc"] = d.stop()
    if "events" in only:
        # Beyond the socket's capacity: with its default 4 MiB buffer the daemon keeps up with the fastest
        # generator this machine has, so a daemon with a small buffer stands in for a bigger storm.
        rcvbuf = 128 * 1024
        wd = os.path.join(workdir, "flood")
        os.makedirs(wd, exist_ok=True)
        d = Daemon(topo, h.ns, wd, h.domain_dir, h.network_dir, policy, "--resync", "60",
                   "--netlink-rcvbuf", str(rcvbuf))
        try:
            d.wait_started()
            n = int(sc["storm_rate"] * sc["storm_seconds"])
            inject_every = max(50, n // 20)
            lines, injected = storm_lines(h, workdir, "daemon-flood.lines", inject_every, first_vm=len(h.vms) // 2)
            log(f"events: daemon (netlink buffer {rcvbuf // 1024} KiB) under a flood beyond its capacity")
            out["flood"] = run_storm(topo, h, d, lines, injected, 0, min(5, sc["storm_seconds"]),
                                     heal_timeout=30 if sc is QUICK else 120)
            out["flood"]["rcvbuf"] = rcvbuf
        finally:
            d.stop()
    return out


def fig_guard(topo, h, sc, workdir, policy) -> dict:
    """Time to protect a new VM with the reflection guard (fdb_ownership remedy: guard): a daemon of its
    own on the big host (its startup guards every VM there), new VMs on a small extra bridge."""
    with open(policy) as fh:
        data = yaml.safe_load(fh)
    data["invariants"]["fdb_ownership"]["remedy"] = "guard"
    gpolicy = write_policy(os.path.join(workdir, "policy-guard.yaml"), data)
    gbr = "gbr"
    hostmod._batch(topo, "ip", h.ns, [f"link add name {gbr} type bridge stp_state 0 forward_delay 0",
                                      f"link set {gbr} up"], os.path.join(workdir, "gbr.batch"))
    wd = os.path.join(workdir, "guard")
    os.makedirs(wd, exist_ok=True)
    log("guard: starting a daemon with remedy: guard on the big host")
    d = Daemon(topo, h.ns, wd, h.domain_dir, h.network_dir, gpolicy, "--resync", "60")
    out: dict = {}
    try:
        out["startup_seconds"] = d.wait_started()
        log(f"guard: {sc['protect']} new VMs on {gbr}")
        macs = [hostmod.vm_mac(i, 0x71) for i in range(sc["protect"])]
        cfg = {"bridge": gbr, "domain_dir": h.domain_dir, "macs": macs, "repeat": sc["protect"], "gap": 0.3}
        out["protect"] = worker(topo, h.ns, "protect_guard", cfg, workdir)
        out["healers"] = sorted({r.get("healer") for r in d.audit("healed")
                                 if r.get("subject", {}).get("bridge") == gbr})
        out["daemon_alive"] = d.proc.poll() is None
    finally:
        out["daemon_rc"] = d.stop()
    return out


def fig_consume(topo, h, sc, workdir) -> dict:
    log(f"events: Listener + Dispatcher at rates {sc['rates']} (0 = flat out)")
    cfg = {"rates": sc["rates"], "duration": 3 if sc is FULL else 2,
           "duration_for": {str(sc["storm_rate"]): sc["storm_seconds"]}, "workdir": workdir,
           "inject_every": 1000, "rcvbuf": 4 * 1024 * 1024, "bridges": h.bridges, "lan_macs": h.lan_macs,
           "uplinks": h.uplinks, "lans": h.lans, "vms": [(v.mac, v.bridge, v.tap) for v in h.vms],
           "all_vms": [(v.mac, v.bridge, v.tap) for v in h.vms]}
    return worker(topo, h.ns, "consume", cfg, workdir)


def fig_seed(sc, workdir, seconds) -> dict:
    """The founding case with reflection on: without netmedic (baseline), then with the daemon running
    when the VM starts (tap enslaved + domain XML written), the VM pinging its gateway every 10 ms."""
    out = {}
    with Topology("nmbs") as topo:
        _seed_baseline(topo, workdir, seconds, out)
    with Topology("nmbs") as topo:
        _seed_netmedic(topo, workdir, seconds, out)
    return out


def _seed_baseline(topo, workdir, seconds, out) -> None:
    lab = build_seed_case(topo, os.path.join(workdir, "seed-base"), reflect=True)
    base_n = max(100, int(min(seconds, 5) / 0.01))
    res = topo.run(lab.vm, sys.executable, "-I", "-S", "-c", PROBER, lab.gw_ip, str(base_n), "0.05",
                   "0.01", timeout=base_n * 0.1 + 30)
    sent, got = (int(x) for x in res.stdout.split())
    out["baseline"] = {"sent": sent, "lost": sent - got}


def _seed_netmedic(topo, workdir, seconds, out) -> None:
    lab = build_seed_case(topo, os.path.join(workdir, "seed-nm"), reflect=True)
    xml = os.path.join(lab.domain_xml_dir, f"{lab.domain}.xml")
    saved = os.path.join(workdir, "seedvm.xml")
    shutil.move(xml, saved)  # the VM is not running yet: no run-state XML, tap not a port
    topo.release(lab.host, lab.tap)
    policy = bench_policy(os.path.join(workdir, "seed-policy.yaml"), workdir)
    wd = os.path.join(workdir, "seed-daemon")
    os.makedirs(wd, exist_ok=True)
    d = Daemon(topo, lab.host, wd, lab.domain_xml_dir, lab.network_xml_dir, policy)
    try:
        d.wait_started()
        t0 = time.monotonic()
        shutil.copy(saved, xml)  # "virsh start": libvirt writes the status XML, the tap joins the bridge
        topo.enslave(lab.host, lab.tap, lab.bridge)
        taps = {lab.vm_mac: lab.tap}
        while not pinned(topo, lab.host, lab.bridge, taps):
            if time.monotonic() - t0 > 10:
                raise RuntimeError("seed: the daemon did not pin the VM's MAC within 10 s")
            time.sleep(0.01)
        out["pinned_after_s"] = time.monotonic() - t0
        n = int(seconds / 0.01)
        res = topo.run(lab.vm, sys.executable, "-I", "-S", "-c", PROBER, lab.gw_ip, str(n), "0.2",
                       "0.01", timeout=n * 0.05 + 60)
        sent, got = (int(x) for x in res.stdout.split())
        out["netmedic"] = {"sent": sent, "lost": sent - got, "seconds": seconds,
                           "reflected": topo.reflected_packets(lab.switch, lab.switch_port)}
    finally:
        d.stop()


def fig_hook(topo, sc, workdir, policy) -> dict:
    """The rendered qemu hook, per operation, on a host with sc['hook_vms'] running domains: as installed
    (the daemon runs: the fast path), and without a daemon (the hook does the work itself)."""
    script = os.path.join(ROOT, "hooks", "scripts", "qemu")
    if not os.path.exists(script):
        return {"skipped": "hooks/scripts/qemu does not exist"}
    from netmedic.hooks import render_script

    log(f"hook: {sc['hook_vms']} domains, {sc['hook_repeat']} rounds per operation, with and without daemon")
    h = hostmod.build_host(topo, "hk", os.path.join(workdir, "hook-host"), sc["hook_vms"], 2,
                           sc["hook_vms"] * 10, prefix="hb", mac_base=0x30)
    python = "/usr/bin/python3"
    vm = h.vms[0]
    out: dict = {"python": subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                                          capture_output=True, text=True).stdout.strip(), "vms": sc["hook_vms"]}
    for mode in ("daemon", "no_daemon"):
        wd = os.path.join(workdir, f"hook-{mode}")
        os.makedirs(wd, exist_ok=True)
        sock = os.path.join(wd, "run", "netmedic.sock")
        hook_env = {"NETMEDIC_POLICY": policy, "NETMEDIC_AUDIT_LOG": os.path.join(wd, "hook-audit.jsonl"),
                    "NETMEDIC_STATE_DIR": os.path.join(wd, "daemon-state"),
                    "NETMEDIC_DOMAIN_XML_DIR": h.domain_dir, "NETMEDIC_NETWORK_XML_DIR": h.network_dir,
                    "NETMEDIC_SOCKET": sock}
        path = os.path.join(wd, "hook-qemu")
        with open(path, "w") as fh:
            fh.write(render_script("qemu", python, env=hook_env, pythonpath=ROOT))
        os.chmod(path, 0o755)
        d = None
        if mode == "daemon":  # the daemon's audit log is the hook's (the daemon audits the phases it does)
            d = Daemon(topo, h.ns, wd, h.domain_dir, h.network_dir, policy, "--socket", sock, "--resync", "3600",
                       "--audit-log", hook_env["NETMEDIC_AUDIT_LOG"])
            d.audit_log = hook_env["NETMEDIC_AUDIT_LOG"]
            d.wait_started()
        try:
            cfg = {"python": python, "script": path, "domain": vm.domain, "repeat": sc["hook_repeat"],
                   "domain_xml": os.path.join(h.domain_dir, f"{vm.domain}.xml"),
                   "env": {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "HOME": "/root"}}
            r = worker(topo, h.ns, "hook", cfg, workdir)
            if d is not None:  # the last phases only told the daemon: let it finish them
                deadline = time.monotonic() + 10
                while len(d.audit("hook")) < 5 * sc["hook_repeat"] and time.monotonic() < deadline:
                    time.sleep(0.05)
                lines = d.audit("hook")
                r["handled_by_daemon"] = sum(1 for x in lines if x.get("handled_by") == "daemon")
                r["daemon_ms"] = {op: [x["duration_ms"] for x in lines if x.get("phase", "").startswith(op + " ")]
                                  for op in ("prepare", "start", "started", "stopped", "release")}
        finally:
            if d is not None:
                d.stop()
        r["summary"] = {k: summary(v) for k, v in r.items() if isinstance(v, list)}
        out[mode] = r
    return out


def machine() -> dict:
    def version(mod):
        try:
            from importlib.metadata import version as v

            return v(mod)
        except Exception:  # noqa: BLE001
            return "?"

    load = os.getloadavg()
    return {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "pyroute2": version("pyroute2"), "structlog": version("structlog"),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "loadavg_start": [round(x, 2) for x in load],
            "calibration": calibration()}


def calibration(rounds: int = 7) -> dict:
    """The machine's speed today, for comparing runs of different days (absolute figures have no baseline of
    their own): a Python start-up (`python3 -c pass`, the unit of the hook figures) and a fixed pure-Python
    workload, medians of `rounds`. A figure that moved by the same factor as these moved with the machine."""
    def work():
        t0 = time.perf_counter()
        d: dict = {}
        for i in range(300000):
            d[i & 4095] = d.get(i & 4095, 0) + i * i
        return time.perf_counter() - t0

    start, loop = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run(["/usr/bin/python3", "-c", "pass"], check=True)
        start.append(time.perf_counter() - t0)
        loop.append(work())
    return {"python_start_ms": round(statistics.median(start) * 1000, 1),
            "python_loop_ms": round(statistics.median(loop) * 1000, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small scale, few repetitions: a sanity run")
    p.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated subset of {','.join(FIGURES)}")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"), help="markdown report")
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temporary files (audit logs, ...)")
    p.add_argument("--seed-seconds", type=float, default=None,
                   help="seed case: seconds of reflection and pinging (default 60; --quick: 3)")
    args = p.parse_args(argv)
    only = [f.strip() for f in args.only.split(",") if f.strip()]
    bad = set(only) - set(FIGURES)
    if bad:
        p.error(f"unknown figure(s): {', '.join(sorted(bad))}")
    if os.geteuid() != 0:
        p.error("the benchmarks need root (network namespaces)")
    sc = QUICK if args.quick else FULL
    seed_seconds = args.seed_seconds or sc["seed_seconds"]
    results: dict = {"machine": machine(), "quick": args.quick, "scale": sc, "only": only}
    t_start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="netmedic-bench-")
    topo = Topology("nmb")
    try:
        policy = bench_policy(os.path.join(workdir, "policy.yaml"), workdir)
        need_host = set(only) & {"reconcile", "events", "protect", "footprint", "scrape", "guard"}
        h = None
        if need_host:
            log(f"building the host: {sc['vms']} taps on {sc['bridges']} bridges, {sc['fdb']} fdb entries")
            h = hostmod.build_host(topo, "host", os.path.join(workdir, "host"), sc["vms"], sc["bridges"], sc["fdb"])
            results["host"] = {"build_seconds": h.build_seconds, "vms": len(h.vms), "bridges": h.bridges}
            log(f"host built in {h.build_seconds:.1f} s")
        if "reconcile" in only:
            results["reconcile"] = fig_reconcile(topo, h, sc, workdir, policy)
        if "events" in only:
            results["consume"] = fig_consume(topo, h, sc, workdir)
        if set(only) & {"events", "protect", "footprint", "scrape"}:
            results["daemon"] = fig_daemon(topo, h, sc, workdir, policy, only)
        if "guard" in only:
            results["guard"] = fig_guard(topo, h, sc, workdir, policy)
        if "hook" in only:
            results["hook"] = fig_hook(topo, sc, workdir, policy)
        if "virsh" in only:
            from bench import virsh

            log("virsh: `virsh start` of a 4-NIC VM with and without the hook (real libvirtd)")
            results["virsh"] = virsh.fig_virsh(sc, workdir)
        if "firewall" in only:
            from bench import firewall

            log("firewall: forwarding / firewall change -> heal, and a no-op pass over a 5,000-rule ruleset")
            results["firewall"] = firewall.fig_firewall(topo, sc, workdir, policy)
        if "seed" in only:
            log(f"seed: reflection on, pinging every 10 ms for {seed_seconds:g} s")
            results["seed"] = fig_seed(sc, workdir, seed_seconds)
    finally:
        results["namespaces"] = topo.namespaces
        try:
            topo.close()
        finally:
            if args.keep_workdir:
                log(f"kept {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    results["seconds"] = time.monotonic() - t_start
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=str)
    text = report.render(results)
    with open(args.out, "w") as fh:
        fh.write(text)
    log(f"done in {results['seconds']:.0f} s: {args.out}")
    print(report.table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
