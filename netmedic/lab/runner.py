"""`netmedic lab [SCENARIO]`: the main job on a machine with no hypervisor.

Builds a real fault in network namespaces of its own (kernel bridge, veths, fdb, tc), shows the VM cut
off and the evidence, starts the netmedic daemon inside the lab's host namespace, shows the VM reaching
its gateway again with the audit trail, and removes everything it built.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

from netmedic.lab.seed import build_seed_case
from netmedic.lab.topology import Topology

SCENARIOS = {
    "seed": "the founding case: the uplink reflects the VM's broadcasts (a round-robin bond does), the "
            "bridge learns the VM's MAC on the uplink, the VM is cut off",
    "detached-tap": "the VM's bridge is deleted and re-created (NetworkManager, ifreload): its tap is "
                    "left detached",
}


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def netmedic_argv(*args: str) -> list:
    return [sys.executable, "-m", "netmedic", *args]


def _env() -> dict:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _pings(topo, lab, count: int) -> int:
    return sum(topo.ping(lab.vm, lab.gw_ip, count=1, timeout=0.5) for _ in range(count))


def _wait_reachable(topo, lab, seconds: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if topo.ping(lab.vm, lab.gw_ip, count=1, timeout=0.3):
            return time.monotonic() - t0
    return -1.0


def _fdb_line(topo, lab) -> str:
    for e in topo.fdb(lab.host, lab.bridge):
        if e.get("mac") == lab.vm_mac:
            return f"{e.get('mac')} dev {e.get('ifname')} {' '.join(e.get('flags', []))} {e.get('state', '')}".strip()
    return f"{lab.vm_mac}: no entry"


def main(scenario: str = "seed", keep: bool = False) -> int:
    if scenario == "list":
        for name, text in SCENARIOS.items():
            _say(f"{name:14} {text}")
        return 0
    if scenario not in SCENARIOS:
        print(f"netmedic: error: unknown lab scenario {scenario!r} (known: {', '.join(SCENARIOS)})",
              file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("netmedic: error: the lab creates network namespaces: run it as root", file=sys.stderr)
        return 2
    workdir = tempfile.mkdtemp(prefix="netmedic-lab-")
    topo = Topology("nmlab")
    daemon = None
    try:
        lab = build_seed_case(topo, workdir, reflect=(scenario == "seed"))
        audit_log = os.path.join(workdir, "audit.jsonl")
        common = ["--domain-xml-dir", lab.domain_xml_dir, "--network-xml-dir", lab.network_xml_dir,
                  "--state-dir", os.path.join(workdir, "state"), "--audit-log", audit_log]
        _say(f"== netmedic lab: {scenario} — {SCENARIOS[scenario]}")
        _say(f"   namespaces: host {lab.host}, vm {lab.vm}, switch {lab.switch}, gateway {lab.gw}")
        _say(f"   VM {lab.domain} {lab.vm_ip} ({lab.vm_mac}) on {lab.bridge} via tap {lab.tap}; "
             f"uplink {lab.uplink}; gateway {lab.gw_ip}")
        if scenario == "detached-tap":
            _say(f"\n-- 1. the VM reaches its gateway: {_pings(topo, lab, 3)}/3 replies")
            _say(f"   {lab.bridge} is deleted and re-created (as NetworkManager does on re-activation)")
            topo.run(lab.host, "ip", "link", "del", lab.bridge)
            topo.bridge(lab.host, lab.bridge)
            topo.enslave(lab.host, lab.uplink, lab.bridge)
        else:
            _say(f"\n-- 1. the switch reflects broadcasts back into {lab.uplink}; the VM pings its gateway")
        ok = _pings(topo, lab, 5)
        _say(f"   {ok}/5 replies — fdb: {_fdb_line(topo, lab)}")

        _say("\n-- 2. what netmedic sees (netmedic check, read-only):")
        proc = topo.run(lab.host, *netmedic_argv("check", *common), check=False, env=_env())
        for line in proc.stdout.splitlines():
            _say("   " + line)

        _say("\n-- 3. start the netmedic daemon in the host namespace")
        daemon = topo.spawn(lab.host, *netmedic_argv("daemon", *common), env=_env(),
                            stdout=open(os.path.join(workdir, "daemon.out"), "w"),
                            stderr=open(os.path.join(workdir, "daemon.err"), "w"))
        took = _wait_reachable(topo, lab, 10.0)
        if took < 0:
            _say("   the VM did NOT reach its gateway within 10 s")
            _say(open(os.path.join(workdir, "daemon.err")).read()[-2000:])
            return 1
        _say(f"   the VM reaches its gateway {took:.2f} s after the daemon started")
        ok = _pings(topo, lab, 10)
        _say(f"   {ok}/10 replies while the fault continues — fdb: {_fdb_line(topo, lab)}")

        _say("\n-- 4. the audit trail (" + audit_log + "):")
        with open(audit_log) as fh:
            for line in fh:
                rec = json.loads(line)
                if rec.get("event") in ("detected", "healed", "rolled_back", "failed", "breaker_open"):
                    _say(f"   {rec['ts']} {rec['event']:9} {rec.get('invariant', '')}/{rec.get('kind', '')} "
                         f"{rec.get('action') or rec.get('message', '')}")
        return 0 if ok == 10 else 1
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
            try:
                daemon.wait(5)
            except Exception:
                daemon.kill()
        if keep:
            _say(f"\n(kept: namespaces {', '.join(topo.namespaces)}; files in {workdir})")
        else:
            topo.close()
            shutil.rmtree(workdir, ignore_errors=True)
            _say("\n-- removed every namespace and file the lab created")
