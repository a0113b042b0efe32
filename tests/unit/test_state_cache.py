"""netmedic.state: the one JSON file, read again only when someone else wrote it, written only on change
(tests/integration/test_resilience.py covers malformed files and failed writes)."""
from __future__ import annotations

import json
import os

from netmedic.state import State


def test_written_only_on_change_and_reused_while_nobody_else_writes(tmp_path, monkeypatch):
    s = State(str(tmp_path))
    with s.locked():
        s.records["k"] = {"kind": "fdb_pin", "key": "k"}
        s.kernel["fdb_sticky"] = True
    st = os.stat(s.path)
    with s.locked():
        pass  # nothing changed: the file is not rewritten
    assert os.stat(s.path).st_mtime_ns == st.st_mtime_ns
    loads = []
    real = json.loads
    monkeypatch.setattr(json, "loads", lambda text, *a, **k: loads.append(1) or real(text, *a, **k))
    with s.locked(write=False):
        assert s.records == {"k": {"kind": "fdb_pin", "key": "k"}} and s.kernel == {"fdb_sticky": True}
    assert loads == [], "the file this object wrote was parsed again"
    monkeypatch.setattr(json, "loads", real)


def test_another_writer_and_unsaved_changes(tmp_path):
    a, b = State(str(tmp_path)), State(str(tmp_path))
    with a.locked():
        a.records["one"] = {"kind": "fdb_pin", "key": "one"}
    with b.locked():
        b.records["two"] = {"kind": "fdb_pin", "key": "two"}
    with a.locked(write=False):
        assert sorted(a.records) == ["one", "two"]  # b's write is seen
        a.records["three"] = {"kind": "fdb_pin", "key": "three"}  # not saved (read-only use) ...
    with a.locked(write=False):
        assert sorted(a.records) == ["one", "two"]  # ... so not kept either
    assert sorted(State(str(tmp_path)).read().records) == ["one", "two"]
