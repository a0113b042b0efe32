"""A third party's invariant and healer, shipped in a package of their own and found through the
entry points, run in a real pass of the real `netmedic` command on a real bridge."""
from __future__ import annotations

import os

import pytest
from plugin_toy import toy_package

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.netns
def test_a_third_party_invariant_and_healer_run_in_a_real_pass(quiet, tmp_path):
    lab = quiet
    site = toy_package(tmp_path)
    lab.nm.set_policy({"invariants": {"toy_no_learning": {"enabled": True, "mode": "enforce"}}})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, site]))
    argv = lab.nm.argv("heal", "--json")
    proc = lab.topo.run(lab.host, *argv, check=False, env=env, timeout=60)
    assert proc.returncode in (0, 1), proc.stderr
    assert "warning" not in proc.stderr, proc.stderr
    slave = lab.topo.link(lab.host, lab.tap)["linkinfo"]["info_slave_data"]
    assert slave["learning"] is False  # the kernel's word, not netmedic's
    healed = [r for r in lab.nm.audit("healed") if r["invariant"] == "toy_no_learning"]
    assert healed and healed[0]["healer"] == "toy_learning_off"
    # Without the package, the same policy names an unknown invariant: refused with the file and field.
    proc = lab.topo.run(lab.host, *lab.nm.argv("check"), check=False, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 2 and "invariants.toy_no_learning" in proc.stderr
