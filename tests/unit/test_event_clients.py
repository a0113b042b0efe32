"""The NetworkManager dispatcher script's and the udev program's decisions, the notify client, and the
rendered scripts — no NetworkManager needed (tests/integration/test_nm_events.py runs them under the real one)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT

from netmedic.sources import (
    INSTALL_PATHS,
    SCRIPTS_DIR,
    client,
    nm_dispatcher,
    render_script,
    render_udev_rule,
    udev,
)


@pytest.fixture
def sysnet(tmp_path):
    """A fake /sys/class/net: bridge br0 with port uplink0 and tap vnet0; eth9 on no bridge."""
    root = tmp_path / "sys"
    (root / "br0" / "bridge").mkdir(parents=True)
    for port in ("uplink0", "vnet0"):
        (root / port / "brport").mkdir(parents=True)
        os.symlink("../../br0", root / port / "master")
        os.symlink("../../br0", root / port / "brport" / "bridge")
    (root / "eth9").mkdir()
    return str(root)


def test_bridge_up_names_the_bridge(sysnet):
    ev = nm_dispatcher.event_for(["x", "br0", "up"], {"NM_DISPATCHER_ACTION": "up", "CONNECTION_ID": "br0"},
                                 sysnet)
    assert ev == {"source": "nm-dispatcher", "event": "up", "action": "up", "interface": "br0",
                  "bridges": ["br0"], "connection": "br0"}


def test_port_events_name_its_bridge(sysnet):
    for action in ("up", "down", "pre-down", "device-add"):
        ev = nm_dispatcher.event_for(["x", "uplink0", action], {}, sysnet)
        assert ev["bridges"] == ["br0"] and ev["interface"] == "uplink0" and ev["action"] == action


def test_irrelevant_events_are_ignored(sysnet):
    assert nm_dispatcher.event_for(["x", "eth9", "up"], {}, sysnet) is None  # on no bridge
    for action in ("dhcp4-change", "hostname", "vpn-up", "pre-up", "reapply"):
        assert nm_dispatcher.event_for(["x", "br0", action], {}, sysnet) is None
    assert nm_dispatcher.event_for(["x", "../etc", "up"], {}, sysnet) is None


def test_down_of_a_vanished_bridge_still_posts_the_interface(sysnet):
    assert nm_dispatcher.event_for(["x", "br7", "down"], {}, sysnet) == {
        "source": "nm-dispatcher", "event": "down", "action": "down", "interface": "br7"}


def test_connectivity_change_asks_for_everything(sysnet):
    assert nm_dispatcher.event_for(["x", "", "connectivity-change"], {}, sysnet) == {
        "source": "nm-dispatcher", "event": "connectivity-change", "action": "connectivity-change"}


def test_udev_events():
    assert udev.event_for({"ACTION": "add", "INTERFACE": "vnet3", "IFINDEX": "12"}) == {
        "source": "udev", "event": "add", "action": "add", "interface": "vnet3", "ifindex": 12}
    assert udev.event_for({"ACTION": "change", "INTERFACE": "vnet3"}) is None
    assert udev.event_for({"ACTION": "add"}) is None


def _dgram_server(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    return s


def test_post_datagram_and_no_daemon(tmp_path):
    path = str(tmp_path / "s.sock")
    assert client.post({"source": "t"}, path) is False  # nobody there: False, at once
    srv = _dgram_server(path)
    try:
        assert client.post({"source": "t", "bridges": ["br0"]}, path) is True
        assert json.loads(srv.recv(4096)) == {"source": "t", "bridges": ["br0"]}
        assert client.post({"source": "x" * 5000}, path) is False  # too big for one event
    finally:
        srv.close()
    assert client.post({"source": "t"}, path) is False  # bound by nobody now


def test_post_to_a_stream_server(tmp_path):
    path = str(tmp_path / "s.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    got = []

    def accept():
        conn, _ = srv.accept()
        got.append(conn.makefile().readline())
        conn.close()

    t = threading.Thread(target=accept)
    t.start()
    assert client.post({"source": "t"}, path) is True
    t.join(2)
    srv.close()
    assert got == ['{"source":"t"}\n']


def test_rendered_scripts_and_rule(tmp_path):
    text = render_script("netmedic", sys.executable, env={"NETMEDIC_SOCKET": "/x/s"}, pythonpath=ROOT)
    assert text.startswith(f"#!{sys.executable} -I\n") and "os.environ['NETMEDIC_SOCKET'] = '/x/s'" in text
    with pytest.raises(ValueError):
        render_script("netmedic", "python3")
    with pytest.raises(ValueError):
        render_script("netmedic", sys.executable, env={"PATH": "/bin"})
    rule = render_udev_rule("/opt/x/netmedic-udev")
    assert ('SUBSYSTEM=="net", ACTION=="add|remove", KERNEL!="lo", TEST=="/run/netmedic/netmedic.sock", '
            'RUN+="/opt/x/netmedic-udev"') in rule
    assert 'TEST=="/x/s"' in render_udev_rule("/opt/x/netmedic-udev", socket="/x/s")
    assert INSTALL_PATHS["netmedic-udev"] not in rule
    for name in ("netmedic", "netmedic-udev"):  # shipped: absolute interpreter, executable, not g/o-writable
        st = os.stat(os.path.join(SCRIPTS_DIR, name))
        with open(os.path.join(SCRIPTS_DIR, name)) as fh:
            assert fh.readline().startswith("#!/usr/bin/python3")
        assert st.st_mode & 0o100 and not st.st_mode & 0o022


def test_dispatcher_script_with_no_path_and_no_daemon_exits_0_fast(tmp_path):
    """As nm-dispatcher runs it: no PATH, nothing listening. For an action it ignores, and for a
    `down` of an unknown interface (notify only), it must return at once with 0."""
    script = tmp_path / "90-netmedic"
    script.write_text(render_script("netmedic", sys.executable, pythonpath=ROOT,
                                    env={"NETMEDIC_SOCKET": str(tmp_path / "none.sock")}))
    script.chmod(0o755)
    for args, env in ((["br0", "dhcp4-change"], {"NM_DISPATCHER_ACTION": "dhcp4-change"}),
                      (["nosuch0", "down"], {"NM_DISPATCHER_ACTION": "down", "DEVICE_IFACE": "nosuch0"})):
        t0 = time.monotonic()
        res = subprocess.run([str(script), *args], env=env, capture_output=True, timeout=10)
        assert res.returncode == 0, res.stderr
        assert time.monotonic() - t0 < 1.0


def test_fallback_heal_is_bounded(tmp_path, monkeypatch):
    """The in-process heal gives up after its timeout instead of blocking NetworkManager's dispatcher."""
    import netmedic.engine

    def slow(self, *a, **k):
        time.sleep(5)

    monkeypatch.setattr(netmedic.engine.Engine, "reconcile", slow)
    env = {"NETMEDIC_AUDIT_LOG": str(tmp_path / "a.jsonl"), "NETMEDIC_STATE_DIR": str(tmp_path / "st"),
           "NETMEDIC_DOMAIN_XML_DIR": str(tmp_path), "NETMEDIC_NETWORK_XML_DIR": str(tmp_path)}
    t0 = time.monotonic()
    assert client.fallback_heal(["br0"], "test", env, timeout=0.3) == 2
    assert time.monotonic() - t0 < 2
