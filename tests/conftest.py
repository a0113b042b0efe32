"""Shared fixtures. Integration tests build real kernel topologies (bridges, veths, fdb, tc) in
network namespaces they own (netmedic.lab.Topology, removed in teardown even on failure) and run the real
`netmedic` command inside them: they judge by connectivity and kernel state, not by netmedic's word."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import yaml

from netmedic.lab import Topology, build_seed_case

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_POLICY = os.path.join(ROOT, "policies", "default.yaml")


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_policy(path, overrides: dict = None) -> str:
    with open(DEFAULT_POLICY) as fh:
        data = yaml.safe_load(fh)
    data = _merge(data, overrides or {})
    data.setdefault("kill_switch_file", os.path.join(os.path.dirname(str(path)), "kill-switch"))
    with open(path, "w") as fh:
        yaml.safe_dump(data, fh)
    return str(path)


def nm_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Netmedic:
    """Runs the real netmedic command in one namespace, with files of the test's own."""

    def __init__(self, topo, ns, workdir, domain_dir, network_dir, policy=None):
        self.topo, self.ns, self.workdir = topo, ns, str(workdir)
        self.audit_log = os.path.join(self.workdir, "audit.jsonl")
        self.state_dir = os.path.join(self.workdir, "state")
        self.policy = policy or write_policy(os.path.join(self.workdir, "policy.yaml"),
                                             {"kill_switch_file": os.path.join(self.workdir, "kill-switch")})
        self.domain_dir, self.network_dir = domain_dir, network_dir

    def set_policy(self, overrides: dict) -> str:
        overrides = dict(overrides)
        overrides.setdefault("kill_switch_file", os.path.join(self.workdir, "kill-switch"))
        self.policy = write_policy(os.path.join(self.workdir, "policy.yaml"), overrides)
        return self.policy

    def argv(self, command, *extra):
        return [sys.executable, "-m", "netmedic", command, "--domain-xml-dir", self.domain_dir,
                "--network-xml-dir", self.network_dir, "--policy", self.policy,
                *([] if command == "check" else ["--audit-log", self.audit_log]),
                "--state-dir", self.state_dir, *extra]

    def run(self, command, *extra, timeout=60):
        return self.topo.run(self.ns, *self.argv(command, *extra), check=False, timeout=timeout, env=nm_env())

    def heal(self, *extra):
        return self.run("heal", *extra)

    def heal_json(self, *extra) -> dict:
        proc = self.run("heal", "--json", *extra)
        assert proc.returncode in (0, 1), proc.stderr
        return json.loads(proc.stdout)

    def check_json(self, *extra) -> dict:
        proc = self.run("check", "--json", *extra)
        assert proc.returncode in (0, 1), proc.stderr
        return json.loads(proc.stdout)

    def daemon(self, *extra):
        out = open(os.path.join(self.workdir, "daemon.log"), "w")
        return self.topo.spawn(self.ns, *self.argv("daemon", *extra), env=nm_env(), stdout=out,
                               stderr=subprocess.STDOUT)

    def audit(self, event=None) -> list:
        if not os.path.exists(self.audit_log):
            return []
        with open(self.audit_log) as fh:
            recs = [json.loads(line) for line in fh]
        return [r for r in recs if event is None or r["event"] == event]

    def records(self) -> dict:
        """netmedic's records as netmedic reads them (state.json and its intent journal)."""
        from netmedic.state import State

        return dict(State(self.state_dir).read().records)


@pytest.fixture
def topo():
    t = Topology("nmt")
    try:
        yield t
    finally:
        t.close()


def _seed(topo, tmp_path, reflect):
    lab = build_seed_case(topo, str(tmp_path / "lab"), reflect=reflect)
    lab.nm = Netmedic(topo, lab.host, tmp_path, lab.domain_xml_dir, lab.network_xml_dir)
    return lab


@pytest.fixture
def seed(topo, tmp_path):
    """The founding case: the switch reflects the VM's broadcasts back into the uplink."""
    return _seed(topo, tmp_path, reflect=True)


@pytest.fixture
def quiet(topo, tmp_path):
    """The same topology without the reflection (a healthy network to break in other ways)."""
    return _seed(topo, tmp_path, reflect=False)


def fdb_entry(topo, ns, bridge, mac):
    """The bridge's (master) fdb entry for mac, as `bridge -j fdb show` reports it."""
    for e in topo.fdb(ns, bridge):
        if e.get("mac", "").lower() == mac and "self" not in (e.get("flags") or []) and e.get("ifname") != bridge:
            return e
    return None


def is_sticky_pin(entry, port) -> bool:
    return (entry is not None and entry.get("ifname") == port and "sticky" in (entry.get("flags") or [])
            and entry.get("state") == "static")
