"""The policy file: the shipped files parse; every broken file is refused with ONE line that names the
file, the line and the field; modes, per-bridge modes, scope, limits and the kill switch mean what the
docs say. No root, no kernel."""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest

from netmedic.errors import PolicyError
from netmedic.policies import INVARIANTS, config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED = os.path.join(ROOT, "policies", "default.yaml")


def write_policy(tmp_path, text, name="policy.yaml") -> str:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return str(path)


def refused(tmp_path, text) -> tuple:
    """(path, PolicyError) for a policy that must not load."""
    path = write_policy(tmp_path, text)
    with pytest.raises(PolicyError) as info:
        config.load(path)
    return path, info.value


# --- shipped files ----------------------------------------------------------------------------
def test_shipped_default_parses_with_the_documented_modes():
    policy = config.load(SHIPPED)
    assert policy.source == SHIPPED
    assert set(policy.invariants) == set(INVARIANTS)
    modes = {name: p.mode for name, p in policy.invariants.items()}
    # Fixes that cannot hurt are enforced; intrusive ones (firewall, quarantine) only observed.
    assert modes.items() >= {"port_forwarding": "enforce", "unique_mac": "observe", "fdb_ownership": "enforce",
                             "ip_forwarding": "enforce", "bridge_netfilter": "observe"}.items()
    assert all(p.enabled for p in policy.invariants.values())
    assert policy.dry_run is False
    assert policy.kill_switch_file == "/etc/netmedic/kill-switch"
    assert policy.limits == config.Limits()  # the file spells out the built-in defaults
    assert policy.scope == config.Scope()
    assert policy.invariants["fdb_ownership"].options == {"require_pin": True, "remedy": "auto"}
    assert policy.invariants["port_forwarding"].options == {"learning": "any", "flood": "any"}


def test_shipped_default_is_the_fallback_when_no_policy_is_installed(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "DEFAULT_POLICY_PATH", str(tmp_path / "absent.yaml"))
    assert config.load(None).source == config.SHIPPED_DEFAULT
    assert os.path.samefile(config.SHIPPED_DEFAULT, SHIPPED)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "policies", "**", "*.yaml"),
                                                  recursive=True)), ids=os.path.basename)
def test_every_shipped_policy_file_parses(path):
    policy = config.load(path)
    assert set(policy.invariants) == set(INVARIANTS)


def _doc_examples() -> list:
    """Policy examples in docs/: *.yaml files and ```yaml blocks of *.md that are whole policies."""
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.y*ml"), recursive=True)):
        with open(path, encoding="utf-8") as fh:
            out.append((os.path.relpath(path, ROOT), fh.read()))
    for path in sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)):
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        for i, block in enumerate(re.findall(r"^```ya?ml[^\n]*\n(.*?)^```", text, re.M | re.S)):
            if re.search(r"^version:\s*1\s*$", block, re.M):  # a whole policy, not a fragment
                out.append((f"{os.path.relpath(path, ROOT)}#{i}", block))
    return out


def test_policy_examples_in_the_docs_parse():
    for name, text in _doc_examples():
        try:
            config.parse(text, name)
        except PolicyError as exc:  # pragma: no cover - the failure message is the point
            pytest.fail(f"docs example {name} does not parse: {exc}")


# --- broken files: one line naming file, line and field -----------------------------------------
BROKEN = [
    # id, text, line, field, words in the message
    ("invalid-yaml", "version: 1\nmode: enforce\n  dry_run: true\n", 3, None, "invalid YAML"),
    ("unclosed-flow", "version: 1\nscope:\n  bridges: [br0\nlimits: {}\n", 4, None, "invalid YAML"),
    ("tab-indent", "version: 1\n\tmode: enforce\n", 2, None, "invalid YAML"),
    ("unknown-top-key", "version: 1\n\nheal_everything: true\n", 3, "heal_everything", "unknown key"),
    ("unknown-invariant", "version: 1\ninvariants:\n  fdb_ownership: {}\n  mac_magic:\n    enabled: true\n",
     4, "invariants.mac_magic", "unknown invariant"),
    ("unknown-option", "version: 1\ninvariants:\n  fdb_ownership:\n    mode: enforce\n    pin_harder: true\n",
     5, "invariants.fdb_ownership.pin_harder", "unknown option"),
    ("option-of-other-invariant", "version: 1\ninvariants:\n  unique_mac:\n    require_pin: true\n",
     4, "invariants.unique_mac.require_pin", "unknown option"),
    ("bad-top-mode", "version: 1\nmode: heal\n", 2, "mode", "must be one of observe, enforce"),
    ("bad-invariant-mode", "version: 1\ninvariants:\n  ip_forwarding:\n    mode: yolo\n",
     4, "invariants.ip_forwarding.mode", "must be one of observe, enforce"),
    ("bad-bridge-mode", "version: 1\ninvariants:\n  fdb_ownership:\n    bridges:\n      br0: enforce\n"
     "      br-storage: maybe\n", 6, "invariants.fdb_ownership.bridges.br-storage", "observe, enforce or off"),
    ("bridges-not-a-mapping", "version: 1\ninvariants:\n  fdb_ownership:\n    bridges: [br0]\n",
     4, "invariants.fdb_ownership.bridges", "must be a mapping"),
    ("limit-wrong-type", "version: 1\nlimits:\n  rate:\n    actions: many\n", 4, "limits.rate.actions",
     "must be an integer >= 0"),
    ("limit-float-for-count", "version: 1\nlimits:\n  breaker: {trips: 2.5}\n", 3, "limits.breaker.trips",
     "must be an integer"),
    ("limit-negative", "version: 1\nlimits:\n  attempts:\n    backoff_max: -5\n", 4,
     "limits.attempts.backoff_max", ">= 0"),
    ("limit-zero-trips", "version: 1\nlimits:\n  breaker: {trips: 0}\n", 3, "limits.breaker.trips", ">= 1"),
    ("limit-zero-attempts", "version: 1\nlimits:\n  attempts:\n    max: 0\n", 4, "limits.attempts.max", ">= 1"),
    ("limit-nan", "version: 1\nlimits:\n  rate: {window: .nan}\n", 3, "limits.rate.window", ">= 0"),
    ("limit-bool", "version: 1\nlimits:\n  rate: {actions: true}\n", 3, "limits.rate.actions", ">= 0"),
    ("limit-unknown-group", "version: 1\nlimits:\n  speed: {max: 1}\n", 3, "limits.speed", "unknown limit"),
    ("limit-unknown-key", "version: 1\nlimits:\n  rate: {per_second: 1}\n", 3, "limits.rate.per_second",
     "unknown key"),
    ("invariant-limit", "version: 1\ninvariants:\n  fdb_ownership:\n    limits:\n      rate:\n"
     "        window: soon\n", 6, "invariants.fdb_ownership.limits.rate.window", "must be a number"),
    ("version-2", "# comment\nversion: 2\n", 2, "version", "unsupported policy version 2"),
    ("version-string", "version: '1'\n", 1, "version", "unsupported policy version"),
    ("version-true", "version: true\n", 1, "version", "unsupported policy version True"),
    ("duplicate-top-key", "version: 1\ndry_run: false\nmode: observe\ndry_run: true\n", 4, "dry_run",
     "duplicate key"),
    ("duplicate-nested-key", "version: 1\ninvariants:\n  fdb_ownership:\n    mode: observe\n"
     "    enabled: true\n    mode: enforce\n", 6, "invariants.fdb_ownership.mode", "duplicate key"),
    ("dry-run-not-bool", "version: 1\ndry_run: maybe\n", 2, "dry_run", "must be true or false"),
    ("option-not-bool", "version: 1\ninvariants:\n  fdb_ownership:\n    require_pin: 'yes please'\n", 4,
     "invariants.fdb_ownership.require_pin", "must be a bool"),
    ("option-bad-choice", "version: 1\ninvariants:\n  port_forwarding:\n    learning: sometimes\n", 4,
     "invariants.port_forwarding.learning", "must be one of any, on, off"),
    ("scope-unknown-key", "version: 1\nscope:\n  vlans: [1]\n", 3, "scope.vlans", "unknown key"),
    ("scope-not-globs", "version: 1\nscope:\n  bridges: [1, 2]\n", 3, "scope.bridges", "list of names"),
    ("resync-zero", "version: 1\nresync_interval: 0\n", 2, "resync_interval", "> 0"),
    ("kill-switch-not-path", "version: 1\nkill_switch_file: [a]\n", 2, "kill_switch_file", "must be a path"),
    ("not-a-mapping", "- version: 1\n", 1, None, "must be a mapping"),
    ("python-tag", "version: 1\ndry_run: !!python/object/apply:os.system ['true']\n", 2, "dry_run",
     "unsupported YAML tag"),
    ("python-tag-mapping", "version: 1\nscope: !!python/object:argparse.Namespace {bridges: [br0]}\n", 2,
     "scope", "unsupported YAML tag"),
    ("python-scalar-tag", "version: 1\nmode: !!python/name:os.system\n", 2, "mode", "invalid value"),
    ("bad-int-tag", "version: 1\nresync_interval: !!int soon\n", 2, "resync_interval", "invalid value"),
    ("recursive-alias", "version: 1\nscope: &s\n  bridges: *s\n", 3, "scope.bridges", "aliases"),
]


@pytest.mark.parametrize("text,line,field,words", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_policy_is_one_line_naming_file_line_and_field(tmp_path, text, line, field, words):
    path, err = refused(tmp_path, text)
    msg = str(err)
    assert "\n" not in msg
    assert msg.startswith(f"{path}:{line}: "), msg
    assert (err.source, err.line, err.field) == (path, line, field)
    if field is not None:
        assert f"field '{field}'" in msg
    assert words in msg


def test_python_object_tag_is_refused_not_constructed(tmp_path):
    # The safe loader must refuse it; a crash (ConstructorError) would be a traceback in the CLI.
    marker = tmp_path / "ran"
    _path, err = refused(tmp_path, f"version: 1\ndry_run: !!python/object/apply:os.system ['touch {marker}']\n")
    assert err.line == 2
    assert not marker.exists()


def test_alias_amplification_is_refused(tmp_path):
    lines = ["version: 1", "a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 10) + "]")
    _path, err = refused(tmp_path, "\n".join(lines) + "\n")
    assert "aliases" in str(err) and err.line == 3  # b: [*a, ...]: the first repeat of a


def test_non_utf8_policy_names_file_and_line(tmp_path):
    path, err = refused(tmp_path, b"version: 1\n# caf\xe9 au lait\ndry_run: false\n")
    assert str(err).startswith(f"{path}:2: ")
    assert "not UTF-8" in str(err)
    assert "\n" not in str(err)


def test_missing_policy_file_names_the_file(tmp_path):
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(PolicyError) as info:
        config.load(path)
    assert str(info.value) == f"{path}: cannot read policy: No such file or directory"


def test_policy_path_that_is_a_directory(tmp_path):
    with pytest.raises(PolicyError) as info:
        config.load(str(tmp_path))
    assert str(info.value).startswith(f"{tmp_path}: cannot read policy: ")


def test_empty_policy_means_the_built_in_defaults(tmp_path):
    policy = config.load(write_policy(tmp_path, "# nothing but a comment\n"))
    assert {n: p.mode for n, p in policy.invariants.items()} == {n: m.DEFAULT_MODE for n, m in INVARIANTS.items()}
    assert policy.limits == config.Limits()


# --- what a valid policy means ----------------------------------------------------------------
def test_yaml_on_off_words_are_the_option_words_not_booleans():
    # YAML 1.1 reads unquoted on/off as booleans; the docs tell admins to write them unquoted.
    policy = config.parse("version: 1\ninvariants:\n  port_forwarding:\n    learning: on\n    flood: off\n"
                          "  fdb_ownership:\n    bridges: {br-storage: off}\n", "p.yaml")
    assert policy.invariants["port_forwarding"].options == {"learning": "on", "flood": "off"}
    assert policy.invariants["fdb_ownership"].mode_for("br-storage") == "off"


def test_top_level_mode_applies_to_invariants_without_their_own():
    policy = config.parse("version: 1\nmode: enforce\ninvariants:\n  ip_forwarding:\n    mode: observe\n")
    assert policy.invariants["unique_mac"].mode == "enforce"  # its default is observe
    assert policy.invariants["bridge_netfilter"].mode == "enforce"
    assert policy.invariants["ip_forwarding"].mode == "observe"  # its own setting wins


def test_disabled_invariant_is_off_everywhere():
    policy = config.parse("version: 1\ninvariants:\n  unique_mac:\n    enabled: false\n"
                          "    bridges: {br0: enforce}\n")
    assert policy.invariants["unique_mac"].mode_for("br0") == "off"
    assert policy.invariants["unique_mac"].mode_for(None) == "off"


def test_per_bridge_mode_first_matching_glob_wins():
    policy = config.parse("version: 1\ninvariants:\n  fdb_ownership:\n    mode: enforce\n    bridges:\n"
                          "      br-stor*: off\n      br-*: observe\n      virbr?: observe\n")
    inv = policy.invariants["fdb_ownership"]
    assert inv.bridge_modes == (("br-stor*", "off"), ("br-*", "observe"), ("virbr?", "observe"))
    assert inv.mode_for("br-storage") == "off"  # matches both globs: the first one wins
    assert inv.mode_for("br-lan") == "observe"
    assert inv.mode_for("virbr0") == "observe"
    assert inv.mode_for("virbr10") == "enforce"  # '?' is one character
    assert inv.mode_for("br0") == "enforce"  # no glob: the invariant's mode
    assert inv.mode_for(None) == "enforce"  # host-wide subjects

    reordered = config.parse("version: 1\ninvariants:\n  fdb_ownership:\n    bridges:\n"
                             "      br-*: observe\n      br-stor*: off\n")
    assert reordered.invariants["fdb_ownership"].mode_for("br-storage") == "observe"


def test_with_mode_overrides_every_invariant_and_bridge_but_not_off():
    policy = config.parse("version: 1\ninvariants:\n  fdb_ownership:\n    bridges:\n      br-lab: observe\n"
                          "      br-storage: off\n  bridge_netfilter:\n    enabled: false\n")
    assert policy.with_mode(None) is policy
    forced = policy.with_mode("enforce")
    assert {n: p.mode for n, p in forced.invariants.items()} == dict.fromkeys(INVARIANTS, "enforce")
    fdb = forced.invariants["fdb_ownership"]
    assert fdb.mode_for("br-lab") == "enforce"
    assert fdb.mode_for("br-storage") == "off"  # an explicit 'off' is a scope decision, not a mode
    assert forced.invariants["bridge_netfilter"].mode_for("br0") == "off"  # still disabled
    observed = policy.with_mode("observe")
    assert {p.mode_for("br-lab") for n, p in observed.invariants.items() if p.enabled} == {"observe"}
    # the original is untouched (frozen dataclasses, replaced)
    assert policy.invariants["fdb_ownership"].mode_for("br-lab") == "observe"
    assert policy.invariants["fdb_ownership"].mode == "enforce"


def test_scope_include_and_exclude_globs():
    policy = config.parse("version: 1\nscope:\n  bridges: ['br*', virbr0]\n  exclude_bridges: [br-mgmt]\n"
                          "  domains: '*'\n  exclude_domains: ['test-*']\n")
    assert policy.scope.bridges == ("br*", "virbr0")
    assert policy.scope.domains == ("*",)  # a single string is a list of one
    assert policy.in_scope("br0", "web1")
    assert policy.in_scope("virbr0", "web1")
    assert not policy.in_scope("virbr1", "web1")  # not included
    assert not policy.in_scope("br-mgmt", "web1")  # excluded
    assert not policy.in_scope("br0", "test-7")  # domain excluded
    assert policy.in_scope(None, "web1")  # host-wide subject (no bridge): only the domain counts
    assert policy.in_scope("br0", None)
    assert not policy.in_scope(None, "test-1")


def test_empty_scope_list_matches_nothing():
    policy = config.parse("version: 1\nscope:\n  bridges: []\n")
    assert not policy.in_scope("br0", "vm")


def test_limits_per_invariant_override_the_global_ones():
    policy = config.parse("version: 1\nlimits:\n  rate: {actions: 3, window: 10}\n  breaker: {trips: 2}\n"
                          "invariants:\n  fdb_ownership:\n    limits:\n      rate: {actions: 1}\n")
    assert policy.limits.rate_actions == 3 and policy.limits.rate_window == 10.0
    assert isinstance(policy.limits.rate_window, float) and isinstance(policy.limits.rate_actions, int)
    fdb = policy.invariants["fdb_ownership"].limits
    assert fdb.rate_actions == 1  # its own
    assert fdb.rate_window == 10.0 and fdb.breaker_trips == 2  # inherited from the global limits
    assert policy.invariants["unique_mac"].limits == policy.limits


def test_kill_switch_file_detection(tmp_path):
    kill = tmp_path / "kill-switch"
    policy = config.parse(f"version: 1\nkill_switch_file: {kill}\n")
    assert policy.kill_switch_file == str(kill)
    assert not policy.killed()
    kill.write_text("")
    assert policy.killed()
    kill.unlink()
    assert not policy.killed()
    assert not config.parse("version: 1\nkill_switch_file: ''\n").killed()  # '' disables the switch


# --- the CLI ------------------------------------------------------------------------------------
def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netmedic", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_cli_policy_check_default_ok():
    proc = run_cli("policy", "check", "policies/default.yaml")
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout
    assert "fdb_ownership=enforce" in proc.stdout and "bridge_netfilter=observe" in proc.stdout
    assert proc.stderr == ""


@pytest.mark.parametrize("text,line", [
    ("version: 1\ninvariants:\n  fdb_ownership:\n    mode: heal\n", 4),
    ("version: 1\nmode: enforce\n  dry_run: true\n", 3),
    ("version: 1\ndry_run: !!python/object/apply:os.system ['true']\n", 2),
], ids=["bad-mode", "invalid-yaml", "python-tag"])
def test_cli_policy_check_broken_file_one_stderr_line(tmp_path, text, line):
    path = write_policy(tmp_path, text)
    proc = run_cli("policy", "check", path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"netmedic: error: {path}:{line}: ")
    assert "Traceback" not in proc.stderr


def test_cli_policy_check_missing_file(tmp_path):
    path = str(tmp_path / "absent.yaml")
    proc = run_cli("policy", "check", path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"netmedic: error: {path}: cannot read policy: No such file or directory"]
