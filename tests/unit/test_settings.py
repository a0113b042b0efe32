"""One settings module: every default path is defined in netmedic/settings.py, the copies that cannot
import it (policies/config.py, the entry scripts, the udev rule) agree with it, and every process builds
its Engine through settings.build_engine (which loads the entry-point plugins once)."""
from __future__ import annotations

import os
import re

from netmedic import plugin, settings
from netmedic.policies import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
while not os.path.exists(os.path.join(ROOT, "setup.cfg")):  # tests/ or tests/unit/
    ROOT = os.path.dirname(ROOT)


def _read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as fh:
        return fh.read()


def _python_files(*tops):
    for top in tops:
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for f in filenames:
                if f.endswith(".py"):
                    yield os.path.relpath(os.path.join(dirpath, f), ROOT)


def test_every_importer_uses_the_settings_objects():
    from netmedic import audit, cli, daemon, hooks, hostfacts, state
    from netmedic.policies import config
    from netmedic.sources import client

    assert daemon.DEFAULT_SOCKET is cli.DEFAULT_SOCKET is client.DEFAULT_SOCKET is settings.DEFAULT_SOCKET
    assert cli.DEFAULT_DOMAIN_DIR is settings.DEFAULT_DOMAIN_DIR
    assert state.DEFAULT_STATE_DIR is settings.DEFAULT_STATE_DIR
    assert audit.DEFAULT_AUDIT_LOG is settings.DEFAULT_AUDIT_LOG
    assert hostfacts.DEFAULT_LEASES_DIR is settings.DEFAULT_LEASES_DIR
    # policies/ imports no netmedic module beyond the pure ones: its copy must agree
    assert config.DEFAULT_POLICY_PATH == settings.DEFAULT_POLICY_PATH
    assert client.SETTINGS is settings.ENVIRONMENT
    assert {k: hooks.DEFAULTS[k] for k in settings.ENVIRONMENT} == settings.ENVIRONMENT


def test_no_python_module_defines_a_default_path_but_settings():
    paths = (settings.DEFAULT_SOCKET, settings.DEFAULT_STATE_DIR, settings.DEFAULT_AUDIT_LOG,
             settings.DEFAULT_DOMAIN_DIR, settings.DEFAULT_NETWORK_DIR, settings.DEFAULT_LEASES_DIR)
    found = []
    for rel in _python_files("netmedic", "hooks", "dispatcher", "healers", "policies"):
        if rel == os.path.join("netmedic", "settings.py"):
            continue
        for n, line in enumerate(_read(rel).splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(f'"{p}"' in code or f"'{p}'" in code for p in paths):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert found == []


def test_entry_scripts_and_udev_rule_name_the_settings_socket():
    qemu = _read("hooks/scripts/qemu")
    assert re.findall(r'"(/run/[^"]+\.sock)"', qemu) == [settings.DEFAULT_SOCKET]
    rule = _read("netmedic/sources/scripts/90-netmedic.rules")
    assert re.findall(r'TEST=="([^"]+)"', rule) == [settings.DEFAULT_SOCKET]


def test_from_environ_takes_a_set_variable_else_the_default():
    conf = settings.from_environ({"NETMEDIC_SOCKET": "/tmp/x.sock", "NETMEDIC_STATE_DIR": ""})
    assert conf["socket"] == "/tmp/x.sock"
    assert conf["state_dir"] == settings.DEFAULT_STATE_DIR  # empty counts as unset
    assert conf["policy"] is None and conf["domain_dir"] == settings.DEFAULT_DOMAIN_DIR


def test_build_engine_is_the_one_place_an_engine_is_built(tmp_path):
    from netmedic.engine import Engine

    engine = settings.build_engine(settings.load_policy(config.SHIPPED_DEFAULT), str(tmp_path / "state"), None,
                                   str(tmp_path), None, dry_run=True)
    assert isinstance(engine, Engine) and engine.dry_run and engine.domain_dir == str(tmp_path)
    assert engine.policy.invariants  # the default policy
    assert plugin._LOADED
    # nowhere else is an Engine constructed (tests build their own on purpose)
    built = [f"{rel}:{n}" for rel in _python_files("netmedic", "hooks", "dispatcher", "bench")
             if rel != os.path.join("netmedic", "settings.py")
             for n, line in enumerate(_read(rel).splitlines(), 1) if re.search(r"\bEngine\(", line)]
    assert built == []
