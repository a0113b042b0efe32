"""The libvirt hook entry scripts, phase by phase, without libvirtd: the test renders the real entry
script (hooks/scripts/qemu, .../network) with its own paths, pipes the XML libvirt would pipe, and
judges by exit status, stdout/stderr, the kernel's fdb (in a namespace of its own) and the audit log."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from netmedic import hooks
from netmedic.hooks import notify
from netmedic.lab import tap_mac_for
from tests.conftest import ROOT, fdb_entry, is_sticky_pin, write_policy

pytestmark = pytest.mark.netns

VM_MAC = "52:54:00:aa:10:01"
OTHER_MAC = "52:54:00:aa:10:02"


def _domain_xml(name, nics, status=False):
    ifaces = "".join(
        f"<interface type='bridge'><mac address='{mac}'/><source bridge='{br}'/>"
        + (f"<target dev='{tap}'/>" if tap else "") + "<model type='virtio'/></interface>"
        for mac, br, tap in nics)
    dom = (f"<domain type='qemu'><name>{name}</name><uuid>6c7a1f3e-0000-4000-8000-00000000000{len(name) % 10}"
           f"</uuid><devices>{ifaces}</devices></domain>")
    return f"<domstatus state='running'>{dom}</domstatus>" if status else dom


class HookRig:
    def __init__(self, tmp_path, topo=None, ns=None):
        self.tmp = tmp_path
        self.topo, self.ns = topo, ns
        self.domain_dir = tmp_path / "qemu"
        self.network_dir = tmp_path / "network"
        self.domain_dir.mkdir()
        self.network_dir.mkdir()
        self.audit_log = str(tmp_path / "audit.jsonl")
        self.state_dir = str(tmp_path / "state")
        self.socket = str(tmp_path / "run" / "netmedic.sock")
        self.policy = write_policy(tmp_path / "policy.yaml", {"kill_switch_file": str(tmp_path / "kill")})
        self.env = {"NETMEDIC_POLICY": self.policy, "NETMEDIC_AUDIT_LOG": self.audit_log,
                    "NETMEDIC_STATE_DIR": self.state_dir, "NETMEDIC_DOMAIN_XML_DIR": str(self.domain_dir),
                    "NETMEDIC_NETWORK_XML_DIR": str(self.network_dir), "NETMEDIC_SOCKET": self.socket}
        self.scripts = {}
        for kind in ("qemu", "network"):
            path = tmp_path / f"hook-{kind}"
            path.write_text(hooks.render_script(kind, sys.executable, self.env, pythonpath=ROOT))
            path.chmod(0o755)
            self.scripts[kind] = str(path)

    def set_policy(self, overrides):
        overrides = dict(overrides, kill_switch_file=str(self.tmp / "kill"))
        write_policy(self.policy, overrides)

    def call(self, kind, name, op, sub, data=b"", timeout=30):
        # The environment libvirt gives a hook: LC_ALL, PATH, HOME and nothing else.
        argv = [self.scripts[kind], name, op, sub, "-"]
        env = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
        if self.topo is not None:
            argv = ["ip", "netns", "exec", self.ns, *argv]
        return subprocess.run(argv, input=data, capture_output=True, env=env, timeout=timeout)

    def audit(self, event=None):
        if not os.path.exists(self.audit_log):
            return []
        with open(self.audit_log) as fh:
            recs = [json.loads(line) for line in fh]
        return [r for r in recs if event is None or r["event"] == event]

    def records(self):
        path = os.path.join(self.state_dir, "state.json")
        if not os.path.exists(path):
            return {}
        with open(path) as fh:
            return json.load(fh)["records"]


@pytest.fixture
def rig(tmp_path):
    return HookRig(tmp_path)


@pytest.fixture
def netrig(tmp_path, topo):
    """A host namespace with bridge br0 and a VM tap vnet0 (a veth whose peer plays the guest)."""
    ns = topo.netns("host", ipv6=False)
    guest = topo.netns("guest", ipv6=False)
    topo.bridge(ns, "br0")
    topo.veth(ns, "vnet0", guest, "eth0", mac_a=tap_mac_for(VM_MAC), mac_b=VM_MAC)
    topo.enslave(ns, "vnet0", "br0")
    return HookRig(tmp_path, topo, ns)


# --- filters and phases that do nothing --------------------------------------------------------

@pytest.mark.parametrize("op", ["migrate", "restore"])
def test_filters_echo_stdin_unchanged(rig, op):
    xml = _domain_xml("vm1", [(VM_MAC, "br0", None)]).encode() + b"\n<!-- \xc3\xa9 -->\n"
    proc = rig.call("qemu", "vm1", op, "begin", xml)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == xml
    assert rig.audit() == []


@pytest.mark.parametrize("phase", [("prepare", "end"), ("stopped", "begin"), ("attach", "begin"),
                                   ("whatever", "-")])
def test_other_phases_exit_0_silently(rig, phase):
    proc = rig.call("qemu", "vm1", *phase, _domain_xml("vm1", [(VM_MAC, "br0", None)]).encode())
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    assert rig.audit() == []


def test_entry_scripts_are_absolute_and_lean():
    for kind, flags in (("qemu", "-IS"), ("network", "-I")):
        path = os.path.join(ROOT, "hooks", "scripts", kind)
        with open(path) as fh:
            text = fh.read()
        assert text.startswith(f"#!/usr/bin/python3 {flags}\n")
        assert os.stat(path).st_mode & stat.S_IXUSR
        # rendering keeps the script's own interpreter flags
        assert hooks.render_script(kind, "/opt/py/bin/python3").startswith(f"#!/opt/py/bin/python3 {flags}\n")
    with pytest.raises(ValueError):
        hooks.render_script("qemu", "python3")


def wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.05)
    return pred()


def _imports(rig, *argv, data=b""):
    """The modules the rendered qemu hook imported for one phase (python -X importtime)."""
    env = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
    cmd = [sys.executable, "-IS", "-X", "importtime", rig.scripts["qemu"], *argv, "-"]
    if rig.topo is not None:
        cmd = ["ip", "netns", "exec", rig.ns, *cmd]
    proc = subprocess.run(cmd, input=data, capture_output=True, env=env, timeout=30)
    mods = {line.split("|")[-1].strip() for line in proc.stderr.decode().splitlines()
            if line.startswith("import time:") and "|" in line}
    return proc, mods


# --- prepare begin: the duplicate-MAC decision -------------------------------------------------

def _other_vm_running(rig, mac=VM_MAC):
    (rig.domain_dir / "other.xml").write_text(_domain_xml("other", [(mac, "br0", "vnet9")], status=True))


def test_prepare_refuses_duplicate_with_refuse_start(rig):
    _other_vm_running(rig)
    rig.set_policy({"invariants": {"unique_mac": {"on_start": "refuse-start"}}})
    proc = rig.call("qemu", "vm1", "prepare", "begin", _domain_xml("vm1", [(VM_MAC, "br0", None)]).encode())
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "refusing to start VM vm1" in err and VM_MAC in err and "VM other" in err and "vnet9" in err
    [line] = rig.audit("hook")
    assert line["result"] == "refused" and line["phase"] == "prepare begin" and line["domain"] == "vm1"
    assert line["clashes"][0]["mac"] == VM_MAC


def test_prepare_allows_duplicate_with_allow_and_audits(rig):
    _other_vm_running(rig)
    proc = rig.call("qemu", "vm1", "prepare", "begin", _domain_xml("vm1", [(VM_MAC, "br0", None)]).encode())
    assert (proc.returncode, proc.stderr) == (0, b"")
    [line] = rig.audit("hook")
    assert line["result"] == "allowed" and line["policy"] == "unique_mac.on_start=allow"
    assert "VM other" in line["reason"]


def test_prepare_clean_start_allowed(rig):
    _other_vm_running(rig, mac=OTHER_MAC)
    rig.set_policy({"invariants": {"unique_mac": {"on_start": "refuse-start"}}})
    # the domain's own status file (libvirt may have written it already) is not a duplicate
    (rig.domain_dir / "vm1.xml").write_text(_domain_xml("vm1", [(VM_MAC, "br0", None)], status=True))
    proc = rig.call("qemu", "vm1", "prepare", "begin", _domain_xml("vm1", [(VM_MAC, "br0", None)]).encode())
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert rig.audit("hook")[0]["result"] == "allowed"


def test_prepare_refuses_clash_with_host_interface(netrig):
    netrig.set_policy({"invariants": {"unique_mac": {"on_start": "refuse-start"}}})
    host_mac = netrig.topo.link(netrig.ns, "br0")["address"]
    proc = netrig.call("qemu", "vm2", "prepare", "begin",
                       _domain_xml("vm2", [(host_mac, "br0", None)]).encode())
    assert proc.returncode == 1
    assert "host interface" in proc.stderr.decode()


@pytest.mark.parametrize("broken", ["invariants: {unique_mac: {on_start: maybe}}\n", "version: [\n", None])
def test_broken_config_never_blocks_a_start(rig, broken):
    _other_vm_running(rig)
    if broken is None:
        os.unlink(rig.policy)  # a missing policy file named explicitly
    else:
        with open(rig.policy, "w") as fh:
            fh.write(broken)
    for op, sub in (("prepare", "begin"), ("start", "begin"), ("started", "begin"), ("stopped", "end")):
        proc = rig.call("qemu", "vm1", op, sub, _domain_xml("vm1", [(VM_MAC, "br0", "vnet0")]).encode())
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b""), (op, proc.stderr)
    errors = [r for r in rig.audit("hook") if r["result"] == "error"]
    assert len(errors) == 4 and all("policy" in r["error"] for r in errors), errors


def test_unreadable_stdin_and_missing_dirs_allowed(tmp_path):
    rig = HookRig(tmp_path)
    script = hooks.render_script("qemu", sys.executable,
                                 dict(rig.env, NETMEDIC_DOMAIN_XML_DIR="/nonexistent/netmedic-test"),
                                 pythonpath=ROOT)
    (tmp_path / "hook-qemu").write_text(script)
    proc = rig.call("qemu", "vm1", "prepare", "begin", _domain_xml("vm1", [(VM_MAC, "br0", None)]).encode())
    assert (proc.returncode, proc.stderr) == (0, b"")
    proc = rig.call("qemu", "vm1", "prepare", "begin", b"<domain><name>vm1</name><devices><interface")
    assert (proc.returncode, proc.stderr) == (0, b"")
    first, line = rig.audit("hook")
    assert first["result"] == "allowed"
    assert line["result"] == "error" and "malformed XML" in line["error"]


def test_unwritable_audit_log_still_allows(tmp_path):
    rig = HookRig(tmp_path)
    script = hooks.render_script("qemu", sys.executable, dict(rig.env, NETMEDIC_AUDIT_LOG="/proc/nope/audit"),
                                 pythonpath=ROOT)
    (tmp_path / "hook-qemu").write_text(script)
    _other_vm_running(rig)
    proc = rig.call("qemu", "vm1", "prepare", "begin", _domain_xml("vm1", [(VM_MAC, "br0", None)]).encode())
    assert proc.returncode == 0 and proc.stdout == b""


def test_watchdog_allows_a_hung_hook(tmp_path):
    """A hook stuck on netmedic's state lock (a hung daemon) gives up and allows."""
    import fcntl

    rig = HookRig(tmp_path)
    script = hooks.render_script("qemu", sys.executable, dict(rig.env, NETMEDIC_HOOK_TIMEOUT="1"),
                                 pythonpath=ROOT)
    (tmp_path / "hook-qemu").write_text(script)
    os.makedirs(rig.state_dir)
    with open(os.path.join(rig.state_dir, "state.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        t0 = time.monotonic()
        proc = rig.call("qemu", "vm1", "stopped", "end", _domain_xml("vm1", [(VM_MAC, "br0", None)]).encode())
        took = time.monotonic() - t0
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert took < 5
    [line] = rig.audit("hook")
    assert line["result"] == "error" and "watchdog" in line["error"]


# --- start/started/reconnect: the pin; stopped/release: exactly netmedic's pins go -----------

def test_start_pins_before_the_guest_sends_and_stop_releases(netrig):
    topo, ns = netrig.topo, netrig.ns
    xml = _domain_xml("vm1", [(VM_MAC, "br0", "vnet0")]).encode()
    # someone else's static entry on the bridge: netmedic must leave it alone
    topo.veth(ns, "other0", topo.netns("other", ipv6=False), "eth0")
    topo.enslave(ns, "other0", "br0")
    topo.bridge_cmd(ns, "fdb", "add", "02:00:00:00:99:99", "dev", "other0", "master", "static")

    proc = netrig.call("qemu", "vm1", "start", "begin", xml)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    assert is_sticky_pin(fdb_entry(topo, ns, "br0", VM_MAC), "vnet0")
    [line] = netrig.audit("hook")
    assert line["result"] == "reconciled" and line["nics"][0]["tap"] == "vnet0"
    assert any(r["event"] == "healed" and r["healer"] == "fdb_pin" for r in netrig.audit())
    assert [r["domain"] for r in netrig.records().values()] == ["vm1"]

    for op in (("started", "begin"), ("reconnect", "begin")):  # idempotent: nothing more to do
        proc = netrig.call("qemu", "vm1", *op, data=xml)
        assert proc.returncode == 0
    assert len(netrig.audit("healed")) == 1

    proc = netrig.call("qemu", "vm1", "stopped", "end", xml)
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert fdb_entry(topo, ns, "br0", VM_MAC) is None
    assert netrig.records() == {}
    assert fdb_entry(topo, ns, "br0", "02:00:00:00:99:99")["state"] == "static"
    assert netrig.audit("hook")[-1]["result"] == "released"
    proc = netrig.call("qemu", "vm1", "release", "end", xml)
    assert proc.returncode == 0


def test_reconnect_repins_a_lost_pin(netrig):
    topo, ns = netrig.topo, netrig.ns
    xml = _domain_xml("vm1", [(VM_MAC, "br0", "vnet0")]).encode()
    assert netrig.call("qemu", "vm1", "start", "begin", xml).returncode == 0
    topo.bridge_cmd(ns, "fdb", "del", VM_MAC, "dev", "vnet0", "master")
    assert fdb_entry(topo, ns, "br0", VM_MAC) is None
    assert netrig.call("qemu", "vm1", "reconnect", "begin", xml).returncode == 0
    assert is_sticky_pin(fdb_entry(topo, ns, "br0", VM_MAC), "vnet0")


def _fake_daemon(rig, answer):
    """A socket that answers every hook request with `answer` (the hook waits for it)."""
    import socket
    import threading

    os.makedirs(os.path.dirname(rig.socket), exist_ok=True)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(rig.socket)
    got = []

    def serve():
        srv.settimeout(10)
        try:
            event = json.loads(srv.recv(256 * 1024))
        except OSError:
            return
        got.append(event)
        if answer is not None:
            srv.sendto(answer.encode(), event["reply"])

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, t, got


# The fake daemons below are sockets that answer (or never answer) with fixed words: they pin down the
# entry script's side of the protocol, including a daemon that hangs, which a real one cannot be made
# to do on demand. test_hook_and_real_daemon runs the same phases against the real daemon.
def test_start_hands_the_work_to_a_running_daemon(rig):
    srv, t, got = _fake_daemon(rig, "ok reconciled\n")
    xml = _domain_xml("vm1", [(VM_MAC, "br7", "vnet7")]) + "<!-- \"quoted\" \\ \t\x01 é -->"
    try:
        proc = rig.call("qemu", "vm1", "start", "begin", xml.encode())
        t.join(5)
    finally:
        srv.close()
    assert (proc.returncode, proc.stderr) == (0, b"")
    [event] = got
    assert event["request"] == "reconcile" and event["domain"] == "vm1" and event["phase"] == "start begin"
    assert event["xml"] == xml and event["answer"] == "line"  # the XML as libvirt gave it, escaped right
    assert event["reply"].startswith(os.path.dirname(rig.socket) + "/.hook-")
    assert not os.path.exists(event["reply"])  # the hook removed its reply socket
    assert rig.audit() == []  # the daemon audits a phase it did
    assert notify.post({"x": 1}, rig.socket) is False  # nobody listens any more


def test_prepare_refusal_decided_by_the_daemon(rig):
    srv, t, got = _fake_daemon(rig, "ok refused\nrefusing to start VM vm1: X")
    try:
        proc = rig.call("qemu", "vm1", "prepare", "begin", _domain_xml("vm1", [(VM_MAC, "br7", None)]).encode())
        t.join(5)
    finally:
        srv.close()
    assert proc.returncode == 1 and proc.stderr == b"netmedic: refusing to start VM vm1: X\n"


def test_silent_daemon_means_the_hook_does_the_work(tmp_path):
    rig = HookRig(tmp_path)
    script = hooks.render_script("qemu", sys.executable, dict(rig.env, NETMEDIC_HOOK_DAEMON_TIMEOUT="0.3"),
                                 pythonpath=ROOT)
    (tmp_path / "hook-qemu").write_text(script)
    _other_vm_running(rig)
    rig.set_policy({"invariants": {"unique_mac": {"on_start": "refuse-start"}}})
    srv, t, got = _fake_daemon(rig, None)  # takes the request, never answers
    try:
        proc = rig.call("qemu", "vm1", "prepare", "begin", _domain_xml("vm1", [(VM_MAC, "br0", None)]).encode())
    finally:
        srv.close()
    assert proc.returncode == 1 and b"VM other" in proc.stderr
    assert got and rig.audit("hook")[0]["result"] == "refused"


def test_hook_and_real_daemon(netrig, tmp_path):
    """The real daemon (on the rig's run-state directory) does start/stopped for the hook."""
    from tests.conftest import nm_env

    topo, ns = netrig.topo, netrig.ns
    log = open(tmp_path / "daemon.log", "w")
    daemon = topo.spawn(ns, sys.executable, "-m", "netmedic", "daemon", "--domain-xml-dir",
                        str(netrig.domain_dir), "--network-xml-dir", str(netrig.network_dir), "--policy",
                        netrig.policy, "--audit-log", netrig.audit_log, "--state-dir", netrig.state_dir,
                        "--socket", netrig.socket, "--libvirt-uri", "none", "--resync", "3600",
                        env=nm_env(), stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 20
    while not os.path.exists(netrig.socket) and time.monotonic() < deadline:
        time.sleep(0.05)
    xml = _domain_xml("vm1", [(VM_MAC, "br0", "vnet0")]).encode()
    t0 = time.monotonic()
    proc = netrig.call("qemu", "vm1", "start", "begin", xml)
    took = time.monotonic() - t0
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert is_sticky_pin(fdb_entry(topo, ns, "br0", VM_MAC), "vnet0")
    [line] = netrig.audit("hook")
    assert line["handled_by"] == "daemon" and line["results"] == {"healed": 1}, line
    assert took < 5
    # The fast path: the hook imported no netmedic module (nor json, nor pyroute2) for any phase.
    for phase in (("prepare", "begin"), ("start", "begin"), ("started", "begin")):
        proc, mods = _imports(netrig, "vm1", *phase, data=xml)
        assert proc.returncode == 0 and "_socket" in mods, proc.stderr[-500:]
        assert not {m for m in mods if m.startswith(("netmedic", "pyroute2", "json", "site"))}, mods
    wait_for(lambda: len(netrig.audit("hook")) == 4)
    assert [h["phase"] for h in netrig.audit("hook")] == ["start begin", "prepare begin", "start begin",
                                                          "started begin"]
    assert all(h["handled_by"] == "daemon" for h in netrig.audit("hook"))
    # prepare: the daemon's decision, with the real policy (a clone of vm1's MAC is refused)
    netrig.set_policy({"invariants": {"unique_mac": {"on_start": "refuse-start"}}})
    (netrig.domain_dir / "vm1.xml").write_text(_domain_xml("vm1", [(VM_MAC, "br0", "vnet0")], status=True))
    os.kill(daemon.pid, signal.SIGHUP)  # reload the policy now
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        proc = netrig.call("qemu", "clone", "prepare", "begin", _domain_xml("clone", [(VM_MAC, "br0", None)]).encode())
        if proc.returncode == 1:
            break
        time.sleep(0.2)
    assert proc.returncode == 1 and b"MAC 52:54:00:aa:10:01 is already used by VM vm1" in proc.stderr, proc
    assert netrig.audit("hook")[-1]["result"] == "refused" and netrig.audit("hook")[-1]["handled_by"] == "daemon"
    # A host interface made a moment ago with the MAC a VM is about to use: the daemon's view of the host
    # interfaces (kept by link events, drained before it decides) already has it.
    topo.run(ns, "ip", "link", "add", "hostif9", "address", OTHER_MAC, "type", "veth", "peer", "name", "hostif9p")
    proc = netrig.call("qemu", "vm3", "prepare", "begin", _domain_xml("vm3", [(OTHER_MAC, "br0", None)]).encode())
    assert proc.returncode == 1 and b"host interface hostif9" in proc.stderr, proc
    assert netrig.audit("hook")[-1]["handled_by"] == "daemon"
    topo.run(ns, "ip", "link", "del", "hostif9")
    proc = netrig.call("qemu", "vm3", "prepare", "begin", _domain_xml("vm3", [(OTHER_MAC, "br0", None)]).encode())
    assert proc.returncode == 0 and netrig.audit("hook")[-1]["result"] == "allowed", proc
    (netrig.domain_dir / "vm1.xml").unlink()
    proc = netrig.call("qemu", "vm1", "stopped", "end", xml)
    assert proc.returncode == 0
    wait_for(lambda: netrig.records() == {})
    assert fdb_entry(topo, ns, "br0", VM_MAC) is None and netrig.records() == {}
    assert netrig.audit("hook")[-1]["result"] == "released"
    topo.stop_process(daemon, [])


# --- the network hook ----------------------------------------------------------------------------

def _port_xml(owner, mac, bridge):
    return (f"<hookData><network><name>lan</name><bridge name='{bridge}'/></network>"
            f"<networkport><uuid>0b5c0e36-0000-4000-8000-000000000001</uuid>"
            f"<owner><name>{owner}</name><uuid>6c7a1f3e-0000-4000-8000-000000000001</uuid></owner>"
            f"<mac address='{mac}'/><plug type='network' bridge='{bridge}'/></networkport></hookData>").encode()


def test_network_port_deleted_releases_only_that_nic(netrig):
    topo, ns = netrig.topo, netrig.ns
    guest2 = topo.netns("guest2", ipv6=False)
    topo.veth(ns, "vnet1", guest2, "eth0", mac_a=tap_mac_for(OTHER_MAC), mac_b=OTHER_MAC)
    topo.enslave(ns, "vnet1", "br0")
    xml = _domain_xml("vm1", [(VM_MAC, "br0", "vnet0"), (OTHER_MAC, "br0", "vnet1")]).encode()
    assert netrig.call("qemu", "vm1", "start", "begin", xml).returncode == 0
    assert is_sticky_pin(fdb_entry(topo, ns, "br0", OTHER_MAC), "vnet1")
    # libvirt keeps the running domain's status XML (the one the reconcile reads), after the unplug too
    (netrig.domain_dir / "vm1.xml").write_text(
        _domain_xml("vm1", [(VM_MAC, "br0", "vnet0"), (OTHER_MAC, "br0", "vnet1")], status=True))

    proc = netrig.call("network", "lan", "port-created", "begin", _port_xml("vm1", VM_MAC, "br0"))
    assert (proc.returncode, proc.stderr) == (0, b"")
    proc = netrig.call("network", "lan", "port-deleted", "begin", _port_xml("vm1", OTHER_MAC, "br0"))
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert fdb_entry(topo, ns, "br0", OTHER_MAC) is None
    assert is_sticky_pin(fdb_entry(topo, ns, "br0", VM_MAC), "vnet0")
    assert [r["mac"] for r in netrig.records().values()] == [VM_MAC]
    results = [r["result"] for r in netrig.audit("hook") if r["hook"] == "network"]
    assert results == ["reconciled", "released"]


def test_network_hook_never_fails(rig):
    for data in (b"", b"<hookData><networkport><plug bridge='bad name/x'/></networkport></hookData>"):
        proc = rig.call("network", "lan", "port-created", "begin", data)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    proc = rig.call("network", "lan", "stopped", "end", b"")
    assert proc.returncode == 0


def test_status_without_a_daemon(tmp_path):
    from tests.conftest import nm_env

    proc = subprocess.run([sys.executable, "-m", "netmedic", "status", "--socket", str(tmp_path / "x.sock")],
                          capture_output=True, text=True, env=nm_env(), timeout=30)
    assert proc.returncode == 2 and "is `netmedic daemon` running?" in proc.stderr


def test_concurrent_starts_keep_each_others_pins(netrig):
    """libvirt writes a domain's run-state XML only after `start begin` (measured: it appears before
    `started begin`). VM1 pinned at its `start begin` and has no XML yet when VM2's `start begin`
    reconciles the same bridge: VM1's fresh pin must survive. Once VM1's tap is gone, its record goes."""
    topo, ns = netrig.topo, netrig.ns
    guest2 = topo.netns("guest2", ipv6=False)
    topo.veth(ns, "vnet1", guest2, "eth0", mac_a=tap_mac_for(OTHER_MAC), mac_b=OTHER_MAC)
    topo.enslave(ns, "vnet1", "br0")
    assert netrig.call("qemu", "vm1", "start", "begin", _domain_xml("vm1", [(VM_MAC, "br0", "vnet0")]).encode()
                       ).returncode == 0
    assert netrig.call("qemu", "vm2", "start", "begin", _domain_xml("vm2", [(OTHER_MAC, "br0", "vnet1")]).encode()
                       ).returncode == 0
    assert is_sticky_pin(fdb_entry(topo, ns, "br0", VM_MAC), "vnet0")
    assert is_sticky_pin(fdb_entry(topo, ns, "br0", OTHER_MAC), "vnet1")
    assert sorted(r["domain"] for r in netrig.records().values()) == ["vm1", "vm2"]
    topo.ip(ns, "link", "del", "vnet0")  # VM1's qemu died without hooks: the tap went with it
    (netrig.domain_dir / "vm2.xml").write_text(_domain_xml("vm2", [(OTHER_MAC, "br0", "vnet1")], status=True))
    assert netrig.call("qemu", "vm2", "started", "begin", _domain_xml("vm2", [(OTHER_MAC, "br0", "vnet1")]).encode()
                       ).returncode == 0
    assert [r["domain"] for r in netrig.records().values()] == ["vm2"]
