"""The plugin interface (netmedic.plugin): invariants never touch the host, the core names no plugin,
and a third party's invariant and healer are found through the entry points (their real pass:
tests/integration/test_third_party_plugin.py)."""
from __future__ import annotations

import ast
import os
import sys

import pytest
from plugin_toy import toy_package

from netmedic import plugin
from netmedic.healers import HEALERS
from netmedic.policies import INVARIANTS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# What a plugin module may import: the stdlib and the pure parts of netmedic.
PURE = {"netmedic.model", "netmedic.plugin", "netmedic.facts", "netmedic.nl.data", "netmedic.policies.config",
        "netmedic.errors"}
# The core that must name no invariant and no healer (it works through the interface).
CORE = ["netmedic/engine.py", "netmedic/daemon.py", "netmedic/observe.py", "netmedic/settings.py", "netmedic/sources",
        "netmedic/diagnose",
        "hooks"]
# Words that are a plugin's name and also something else (file, word): why it is not the plugin.
NOT_A_PLUGIN = {("netmedic/observe.py", "ip_forward"): "the sysctl net.ipv4.ip_forward",
                ("netmedic/diagnose/hops.py", "ip_forward"): "the sysctl net.ipv4.ip_forward",
                ("netmedic/diagnose/hops.py", "port_state"): "an evidence key: the port's STP state"}


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


@pytest.mark.skipif(sys.version_info < (3, 8), reason="entry points need importlib.metadata (3.8+): docs/install.md")
def test_entry_point_loading_in_process(tmp_path, monkeypatch):
    site = toy_package(tmp_path)
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
