"""`netmedic check` (root: it reads netlink and sysctls) with a hostile domain file: one line naming the
file, line and field, exit 2, no traceback."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from snapshots import write

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


XXE = """<?xml version="1.0"?>
<!-- looks like a run-state file -->
<!DOCTYPE domain [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<domain><name>&secret;</name></domain>
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="`netmedic check` reads netlink and sysctls (root)")
def test_cli_check_with_a_hostile_domain_file(tmp_path):
    ddir, ndir = tmp_path / "qemu", tmp_path / "network"
    hostile = write(ddir, "evil.xml", XXE)
    os.makedirs(ndir)
    proc = subprocess.run([sys.executable, "-m", "netmedic", "check", "--domain-xml-dir", str(ddir),
                           "--network-xml-dir", str(ndir), "--policy", "policies/default.yaml",
                           "--state-dir", str(tmp_path / "state")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2, (proc.stdout, proc.stderr)  # no VMs, so no violations: the input error
    errors = [line for line in proc.stderr.splitlines() if line.startswith("netmedic: error: ")]
    assert errors == [f"netmedic: error: {hostile}:3: DOCTYPE/ENTITY declarations are refused "
                      "(entity expansion)"]
    assert "root:" not in proc.stdout + proc.stderr
