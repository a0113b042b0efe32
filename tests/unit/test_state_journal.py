"""The state's intent journal: what a heal is about to create is appended and fsync'd before the host
changes (a few hundred bytes, not the whole state), folded into state.json by the next save, and read
back as pending records when a process died in between."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from netmedic.state import State

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PIN = {"kind": "fdb_pin", "key": "fdb_pin:br0:52:54:00:00:00:01", "bridge": "br0", "port": "vnet0",
       "mac": "52:54:00:00:00:01", "domain": "vm1"}


def test_an_intent_survives_a_process_that_never_saved(tmp_path):
    """A process writes its intent and dies (os._exit: no save, no cleanup) before the host change."""
    code = ("import json, os, sys\nfrom netmedic.state import State\n"
            "st = State(sys.argv[1]); rec = dict(json.loads(sys.argv[2]), pending=True)\n"
            "with st.locked():\n    st.records[rec['key']] = rec\n    st.intend([rec])\n    os._exit(9)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path), json.dumps(PIN)], cwd=ROOT, timeout=60)
    assert proc.returncode == 9
    assert not os.path.exists(os.path.join(str(tmp_path), "state.json"))
    again = State(str(tmp_path)).read()
    assert again.records[PIN["key"]]["pending"] is True and again.records[PIN["key"]]["port"] == "vnet0"


def test_a_save_folds_the_journal_and_an_accounted_intent_never_comes_back(tmp_path):
    st = State(str(tmp_path))
    with st.locked():
        st.records[PIN["key"]] = dict(PIN, pending=True)
        st.intend([st.records[PIN["key"]]])
        del st.records[PIN["key"]]  # the heal was rolled back: the intent abandoned
    assert not os.path.exists(st.journal)  # folded by the save
    assert State(str(tmp_path)).read().records == {}
    # A journal left by a crash between the save and the unlink: its intents are already accounted for.
    with open(st.journal, "w") as fh:
        fh.write(json.dumps({"seq": 1, "record": PIN}) + "\n")
    assert State(str(tmp_path)).read().records == {}


def test_a_torn_journal_line_is_skipped(tmp_path):
    st = State(str(tmp_path))
    with open(st.journal, "w") as fh:
        fh.write('{"seq": 99999999999999999999, "record": {"kind": "fdb_pin", "key": "k", "port": "vnet0"}}\n{"seq": 1')
    assert list(State(str(tmp_path)).read().records) == ["k"]
