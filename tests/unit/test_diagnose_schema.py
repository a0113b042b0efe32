"""The diagnose JSON schema (docs/diagnose.schema.json) and the validator the diagnose tests use."""
from __future__ import annotations

from snapshots import MAC1


def test_the_schema_validator_rejects_what_the_schema_forbids():
    import pytest
    from diagnose_helpers import load_schema, validate

    schema = load_schema()
    hop = {"number": 1, "name": "nic", "title": "t", "verdict": "ok", "summary": "", "evidence": {}, "fix": None,
           "findings": [], "cause": None}
    good = {"schema_version": 2, "domain": "d", "path": "bridge",
            "nic": {"mac": MAC1, "tap": "vnet0", "bridge": "br0", "network": None},
            "verdict": "healthy", "headline": "h", "first_broken": None, "vm_ip": None, "probe": False,
            "hops": [dict(hop, number=i + 1) for i in range(10)], "errors": []}
    validate(good, schema)
    for bad in (dict(good, verdict="fine"), dict(good, hops=good["hops"][:3]), dict(good, extra=1),
                dict(good, hops=[dict(hop, verdict="maybe")] * 10), {k: v for k, v in good.items() if k != "nic"},
                dict(good, schema_version=1), dict(good, path="tunnel"),
                dict(good, hops=[dict(hop, cause={"invariant": "x"})] * 10)):
        with pytest.raises(AssertionError):
            validate(bad, schema)
