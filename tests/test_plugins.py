"""The plugin interface (netmedic.plugin): invariants never touch the host, the core names no plugin,
and a third party's invariant and healer, shipped in a package of their own and found through the
entry points, run in a real pass."""
from __future__ import annotations

import ast
import os
import sys
import textwrap

import pytest

from netmedic import plugin
from netmedic.healers import HEALERS
from netmedic.policies import INVARIANTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What a plugin module may import: the stdlib and the pure parts of netmedic.
PURE = {"netmedic.model", "netmedic.plugin", "netmedic.facts", "netmedic.nl.data", "netmedic.policies.config",
        "netmedic.errors"}
# The core that must name no invariant and no healer (it works through the interface).
CORE = ["netmedic/engine.py", "netmedic/daemon.py", "netmedic/observe.py", "hooks"]
# Words that are a plugin's name and also something else (file, word): why it is not the plugin.
NOT_A_PLUGIN = {("netmedic/observe.py", "ip_forward"): "the sysctl net.ipv4.ip_forward"}


def _modules(folder):
    """The plugin modules of a folder (policies/config.py is the policy loader, not a plugin)."""
    return sorted(os.path.join(ROOT, folder, f) for f in os.listdir(os.path.join(ROOT, folder))
                  if f.endswith(".py") and f not in ("__init__.py", "config.py"))


def _imports(path):
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            if node.module == "netmedic" or all(m in PURE for m in subs):
                yield from subs  # `from netmedic.nl import data`: the submodule is what is used
            else:
                yield node.module


@pytest.mark.parametrize("path", _modules("policies") + _modules("healers"), ids=os.path.basename)
def test_plugin_modules_import_nothing_that_touches_the_host(path):
    bad = []
    for name in _imports(path):
        if name == "__future__" or not name.startswith("netmedic"):
            if name.split(".")[0] in ("subprocess", "socket", "pyroute2", "ctypes", "shutil"):
                bad.append(name)
            continue
        if name in PURE or name.startswith(("netmedic.policies.", "netmedic.healers.")):
            continue
        bad.append(name)
    assert bad == [], f"{os.path.relpath(path, ROOT)} imports {bad}: invariants and healers must stay pure"


def _code_names(path):
    """Identifiers, attribute names and string constants of a module, docstrings and comments excluded."""
    tree = ast.parse(open(path).read(), path)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.Attribute):
            yield node.attr
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.value


def _core_files():
    for entry in CORE:
        path = os.path.join(ROOT, entry)
        if os.path.isdir(path):
            yield from (os.path.join(path, f) for f in sorted(os.listdir(path)) if f.endswith(".py"))
        else:
            yield path


@pytest.mark.parametrize("path", list(_core_files()), ids=lambda p: os.path.relpath(p, ROOT))
def test_the_core_names_no_invariant_and_no_healer(path):
    names = set(INVARIANTS) | set(HEALERS)
    rel = os.path.relpath(path, ROOT)
    found = sorted({n for token in _code_names(path) for n in names
                    if (token == n or token.startswith(n + ":") or f"{n}." in token)
                    and (rel, n) not in NOT_A_PLUGIN})
    assert found == [], f"{os.path.relpath(path, ROOT)} names {found}: use the plugin interface instead"


def test_every_builtin_plugin_is_typed_and_bound_consistently():
    for inv in INVARIANTS.values():
        assert isinstance(inv, plugin.Invariant)
        assert set(inv.NEEDS) <= plugin.FACTS
        for kind, remedy in inv.REMEDIES.items():
            names = remedy.values() if isinstance(remedy, dict) else [remedy]
            for name in names:
                assert name is None or inv.NAME in HEALERS[name].HANDLES, (inv.NAME, kind, name)
    kinds = [k for h in HEALERS.values() for k in h.record_kinds()]
    assert len(kinds) == len(set(kinds)), "two healers claim one record kind"


def test_a_malformed_plugin_is_refused_at_registration():
    class NoName(plugin.Invariant):
        def check(self, snapshot, options):
            return []

    with pytest.raises(TypeError, match="NAME"):
        plugin.validate_invariant(NoName())

    class BadFact(plugin.Invariant):
        NAME = "x"
        NEEDS = frozenset({"telepathy"})

        def check(self, snapshot, options):
            return []

    with pytest.raises(TypeError, match="telepathy"):
        plugin.validate_invariant(BadFact())
    with pytest.raises(TypeError, match="not a netmedic.plugin.Healer"):
        plugin.validate_healer(object())


TOY = '''
"""A site's own invariant and healer, shipped apart from netmedic: VM ports must not learn."""
from netmedic.model import Plan, Step, Subject, Violation
from netmedic.plugin import Healer, Invariant


class NoLearning(Invariant):
    NAME = "toy_no_learning"
    DESCRIPTION = "VM ports do not learn"
    DEFAULT_ENABLED = False
    DEFAULT_MODE = "observe"
    REMEDIES = {"learning_on": "toy_learning_off"}

    def check(self, snapshot, options):
        out = []
        for nic in snapshot.nics():
            tap = snapshot.link(nic.tap)
            if tap is not None and tap.port is not None and tap.port.learning:
                out.append(Violation(self.NAME, "learning_on", Subject(bridge=nic.bridge, port=nic.tap,
                                     domain=nic.domain), f"{nic.tap} learns", {"learning": True}))
        return out


class LearningOff(Healer):
    NAME = "toy_learning_off"
    HANDLES = ("toy_no_learning",)

    def plan(self, violation, snapshot, options):
        tap = snapshot.link(violation.subject.port)
        ids = {"port": tap.name, "port_index": tap.index}
        return Plan(self.NAME, violation, (Step("set_port", {**ids, "learning": False}, f"learning off on {tap.name}",
                                                undo=Step("set_port", {**ids, "learning": True}, "learning on")),),
                    f"turn learning off on {tap.name}"), ""
'''


def _toy_package(tmp_path) -> str:
    """A package of its own, installed the way pip leaves one: the module and a dist-info with its entry
    points (importlib.metadata finds it on sys.path)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "toy_netmedic_plugin.py").write_text(textwrap.dedent(TOY))
    info = site / "toy_netmedic_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-netmedic-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[netmedic.invariants]\ntoy_no_learning = toy_netmedic_plugin:NoLearning\n\n"
                                           "[netmedic.healers]\ntoy_learning_off = toy_netmedic_plugin:LearningOff\n")
    return str(site)


@pytest.mark.netns
def test_a_third_party_invariant_and_healer_run_in_a_real_pass(quiet, tmp_path):
    lab = quiet
    site = _toy_package(tmp_path)
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


def test_entry_point_loading_in_process(tmp_path, monkeypatch):
    site = _toy_package(tmp_path)
    monkeypatch.syspath_prepend(site)
    from netmedic import healers, policies

    before_inv, before_heal = dict(INVARIANTS), dict(HEALERS)
    try:
        policies.load_entry_points()
        healers.load_entry_points()
        assert isinstance(INVARIANTS["toy_no_learning"], plugin.Invariant)
        assert HEALERS["toy_learning_off"].HANDLES == ("toy_no_learning",)
    finally:
        INVARIANTS.clear()
        INVARIANTS.update(before_inv)
        HEALERS.clear()
        HEALERS.update(before_heal)
        sys.modules.pop("toy_netmedic_plugin", None)
