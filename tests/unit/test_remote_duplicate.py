"""remote_duplicate: a finding only from capture evidence, never healed."""
from __future__ import annotations

from snapshots import MAC1, bridge, check_invariant, nic, snapshot, tap, uplink

from netmedic.policies import healer_for


def test_remote_duplicate_only_from_capture_evidence():
    snap = snapshot(links=[bridge("br0", 2), uplink("eth0", 3, master=2), tap("vnet0", 10, master=2)],
                    nics=[nic("vm1", MAC1, "br0", "vnet0")])
    assert check_invariant("remote_duplicate", snap) == []  # no capture: no evidence, no finding
    snap.sightings = {("br0", MAC1): {"ports": ["eth0"], "incoming": 5, "reflected": 5, "remote": 0}}
    assert check_invariant("remote_duplicate", snap) == []  # reflections only
    snap.sightings = {("br0", MAC1): {"ports": ["eth0"], "incoming": 7, "reflected": 2, "remote": 5}}
    (v,) = check_invariant("remote_duplicate", snap)
    assert v.severity == "broken" and healer_for(v, {}) is None and "cannot fix" in v.evidence["fix"]
