"""netmedic against a REAL libvirtd + qemu (TCG guests with no disk).

The module starts its own virtlogd/libvirtd, and only when no libvirtd runs on the host: inside a
network namespace of its own (so every tap and the test bridge live there, far from the host's
uplink; nothing in the root namespace is touched), with a clean environment and a D-Bus address that
leads nowhere, and with netmedic's hooks installed (under names of its own) BEFORE libvirtd starts
(libvirtd reads hooks at start only). Teardown destroys the test's domains, stops exactly the PIDs it
started and removes the hook files it installed.

Needs scripts/libvirt-test-env.sh (make test runs it through scripts/bootstrap.sh).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from netmedic import hooks
from netmedic.lab import Topology
from tests.conftest import ROOT, fdb_entry, is_sticky_pin, nm_env, write_policy

pytestmark = pytest.mark.netns

TAG = f"nmt{os.getpid() % 100000}"
BRIDGE = f"{TAG}br"
URI = "qemu:///system"
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C",
             "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path=/nonexistent/{TAG}-no-bus"}
LIBVIRT_SOCK = "/run/libvirt/libvirt-sock"


def _why_not() -> str:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64"):
        if shutil.which(tool, path=CLEAN_ENV["PATH"]) is None:
            return f"{tool} is not installed (scripts/libvirt-test-env.sh)"
    if _libvirtd_running():
        return "a libvirtd already runs on this host: its hooks cannot be installed without restarting it"
    return ""


def _libvirtd_running() -> bool:
    if subprocess.run(["pgrep", "-x", "libvirtd|virtqemud"], capture_output=True).returncode == 0:
        return True
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(LIBVIRT_SOCK)
        return True
    except OSError:
        return False
    finally:
        s.close()


def domain_xml(name, nics, acpi=True):
    ifaces = "".join(_nic_xml(mac, tap) for mac, tap in nics)
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>48</memory><vcpu>1</vcpu>"
            f"<os><type arch='x86_64' machine='pc'>hvm</type></os>"
            + ("<features><acpi/></features>" if acpi else "")
            + "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
            f"{ifaces}<video><model type='none'/></video><memballoon model='none'/></devices></domain>")


def _nic_xml(mac, tap, bridge=BRIDGE):
    # no option ROM: the guest (no disk, no OS) stays silent, so no frame ever teaches the bridge
    return (f"<interface type='bridge'><mac address='{mac}'/><source bridge='{bridge}'/>"
            f"<target dev='{tap}'/><model type='virtio'/><rom enabled='no'/></interface>")


class Libvirt:
    def __init__(self, tmp):
        self.tmp = tmp
        self.topo = Topology("nmlv")
        self.ns = self.topo.netns("hv", ipv6=False)
        self.topo.bridge(self.ns, BRIDGE)
        self.audit_log = str(tmp / "audit.jsonl")
        self.state_dir = str(tmp / "state")
        self.socket = str(tmp / "run" / "netmedic.sock")
        self.policy = str(tmp / "policy.yaml")
        self.set_policy()
        self.env = {"NETMEDIC_POLICY": self.policy, "NETMEDIC_AUDIT_LOG": self.audit_log,
                    "NETMEDIC_STATE_DIR": self.state_dir, "NETMEDIC_SOCKET": self.socket}
        self.installed: list = []
        self.made_dirs: list = []
        self.procs: dict = {}
        self.domains: set = set()

    # --- setup / teardown ------------------------------------------------------------------------
    def set_policy(self, unique_mac_on_start="allow", raw=None):
        if raw is not None:
            with open(self.policy, "w") as fh:
                fh.write(raw)
            return
        write_policy(self.policy, {
            "kill_switch_file": str(self.tmp / "kill-switch"),
            "scope": {"bridges": [BRIDGE]},
            "invariants": {"unique_mac": {"on_start": unique_mac_on_start},
                           "ip_forwarding": {"enabled": False}, "bridge_netfilter": {"enabled": False}}})

    def install_hooks(self):
        for kind in ("qemu", "network"):
            target_dir = os.path.dirname(hooks.INSTALL_PATHS[kind])
            if not os.path.isdir(target_dir):
                os.makedirs(target_dir, mode=0o755)
                self.made_dirs.append(target_dir)
            path = os.path.join(target_dir, f"netmedic-test-{TAG}")
            with open(path, "x") as fh:
                fh.write(hooks.render_script(kind, sys.executable, self.env, pythonpath=ROOT))
            self.installed.append(path)
            os.chmod(path, 0o755)

    def _spawn(self, name, argv):
        log = open(self.tmp / f"{name}.log", "a")
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], env=CLEAN_ENV,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # `ip netns exec` execs: proc.pid is the daemon
        log.close()
        self.procs[name] = proc
        return proc

    def start_libvirtd(self, timeout=90):
        if "virtlogd" not in self.procs and subprocess.run(["pgrep", "-x", "virtlogd"],
                                                           capture_output=True).returncode != 0:
            self._spawn("virtlogd", ["virtlogd"])
        proc = self._spawn("libvirtd", ["libvirtd"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"libvirtd exited with {proc.returncode}: see {self.tmp}/libvirtd.log")
            if self.virsh("version", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"libvirtd did not answer within {timeout} s")

    def stop(self, name, timeout=20):
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def restart_libvirtd(self):
        self.stop("libvirtd")
        self.start_libvirtd()

    def close(self):
        errors = []
        if "libvirtd" in self.procs:
            for name in sorted(self.domains):
                self.virsh("destroy", name, check=False)
        for name in ("libvirtd", "virtlogd"):
            try:
                self.stop(name)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{name}: {exc}")
        # a guest whose libvirtd died with it: its qemu runs in our namespace; end it by PID
        for name in self.domains:
            pidfile = f"/run/libvirt/qemu/{name}.pid"
            try:
                with open(pidfile) as fh:
                    os.kill(int(fh.read().strip()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        for path in self.installed:
            try:
                os.unlink(path)
            except OSError as exc:
                errors.append(str(exc))
        for d in reversed(self.made_dirs):
            try:
                os.rmdir(d)
            except OSError:
                pass
        self.topo.close()
        assert not errors, errors

    # --- helpers -------------------------------------------------------------------------------
    def virsh(self, *args, check=True, input=None):
        proc = subprocess.run(["virsh", "-q", "-c", URI, *args], capture_output=True, text=True, env=CLEAN_ENV,
                              input=input, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def create(self, name, nics, check=True):
        path = self.tmp / f"{name}.xml"
        path.write_text(domain_xml(name, nics))
        self.domains.add(name)
        return self.virsh("create", str(path), check=check)

    def destroy(self, name):
        self.virsh("destroy", name, check=False)

    def remove_network(self, net, natbr):
        """A libvirt network of the test's, gone with everything libvirt left of it (its dnsmasq by PID
        when net-destroy did not end it, its files, its port directory)."""
        pidfile = f"/run/libvirt/network/{net}.pid"
        self.virsh("net-destroy", net, check=False)
        self.virsh("net-undefine", net, check=False)
        try:  # libvirt's dnsmasq for our network, should net-destroy not have ended it
            with open(pidfile) as fh:
                pid = int(fh.read().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if f"/{net}.conf".encode() in fh.read():
                    os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
        for leftover in (f"/var/lib/libvirt/dnsmasq/{natbr}.status", f"/var/lib/libvirt/dnsmasq/{net}.conf",
                         f"/var/lib/libvirt/dnsmasq/{net}.hostsfile", f"/var/lib/libvirt/dnsmasq/{net}.addnhosts",
                         f"/etc/libvirt/qemu/networks/{net}.xml", f"/run/libvirt/network/{net}.xml", pidfile):
            if os.path.exists(leftover):
                os.unlink(leftover)
        for leftover in (f"/run/libvirt/network/{net}/ports", f"/run/libvirt/network/{net}"):
            try:  # the (empty) port directory libvirt keeps for the network after net-undefine
                os.rmdir(leftover)
            except OSError:
                pass

    def pin(self, mac):
        return fdb_entry(self.topo, self.ns, BRIDGE, mac)

    def audit(self, event=None):
        if not os.path.exists(self.audit_log):
            return []
        with open(self.audit_log) as fh:
            recs = [json.loads(line) for line in fh]
        return [r for r in recs if event is None or r["event"] == event]

    def hook_lines(self, domain):
        return [r for r in self.audit("hook") if r.get("domain") == domain]

    def records(self):
        path = os.path.join(self.state_dir, "state.json")
        if not os.path.exists(path):
            return {}
        with open(path) as fh:
            return json.load(fh)["records"]

    def daemon(self, domain_dir):
        argv = [sys.executable, "-m", "netmedic", "daemon", "--domain-xml-dir", domain_dir,
                "--network-xml-dir", str(self.tmp / "no-networks"), "--policy", self.policy,
                "--audit-log", self.audit_log, "--state-dir", self.state_dir, "--socket", self.socket,
                "--libvirt-uri", URI, "--resync", "3600"]
        out = open(self.tmp / "daemon.log", "a")
        proc = self.topo.spawn(self.ns, *argv, env=nm_env(), stdout=out, stderr=subprocess.STDOUT)
        out.close()
        return proc

    def status(self):
        proc = subprocess.run([sys.executable, "-m", "netmedic", "status", "--socket", self.socket, "--json"],
                              capture_output=True, text=True, env=nm_env(), timeout=30)
        return json.loads(proc.stdout) if proc.stdout.strip() else None


def wait_for(pred, timeout=10.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def hooks_lock(timeout: float, on_wait=None):
    """Test runs on this machine take turns (another engineer's suite may run this module at the same
    moment), and so does the virsh benchmark: an flock on /etc/libvirt/hooks itself, so no lock file is
    left behind. Returns the fd holding it, or None when another run kept it for `timeout` seconds;
    `on_wait()` is called once if it has to wait."""
    import fcntl

    fd = os.open("/etc/libvirt/hooks", os.O_RDONLY | os.O_DIRECTORY)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            if on_wait is not None:
                on_wait()
                on_wait = None
            time.sleep(0.5)


def _serialize(timeout=900):
    fd = hooks_lock(timeout)
    if fd is None:
        pytest.skip("another test run kept libvirt busy")
    return fd


def _foreign_hooks() -> list:
    out = []
    for kind in ("qemu", "network"):
        d = os.path.dirname(hooks.INSTALL_PATHS[kind])
        if os.path.isdir(d):
            out += [os.path.join(d, f) for f in os.listdir(d)]
    return out


@pytest.fixture(scope="module")
def lv(tmp_path_factory):
    why = _why_not()
    if why:
        pytest.skip(why)
    lock = _serialize() if os.path.isdir("/etc/libvirt/hooks") else None
    try:
        why = _why_not()
        if why:
            pytest.skip(why)
        others = _foreign_hooks()
        others += [p for p in ("/etc/libvirt/hooks/qemu", "/etc/libvirt/hooks/network") if os.path.exists(p)]
        if others:  # libvirtd would run them too (and they would act before ours)
            pytest.skip(f"other libvirt hooks are installed: {', '.join(others)}")
        yield from _libvirt(tmp_path_factory)
    finally:
        if lock is not None:
            os.close(lock)


def _libvirt(tmp_path_factory):
    env = Libvirt(tmp_path_factory.mktemp("libvirt"))
    try:
        env.install_hooks()  # before libvirtd starts: it reads hooks at start only
        try:
            env.start_libvirtd()
        except RuntimeError:
            env.stop("libvirtd")
            if _libvirtd_running():  # another test run started one in the same moment: theirs
                pytest.skip("another libvirtd started at the same time")
            raise
        yield env
    finally:
        env.close()


@pytest.fixture
def clean(lv):
    """Each test starts with the default policy and leaves no domain running."""
    lv.set_policy()
    names = set()
    yield names
    for name in names:
        lv.destroy(name)
    lv.set_policy()


def _mac(n):
    return f"52:54:00:{os.getpid() % 256:02x}:{n // 256:02x}:{n % 256:02x}"


def _tap(n):
    return f"{TAG}t{n}"


# --- acceptance ---------------------------------------------------------------------------------

def test_start_pins_before_virsh_returns_and_destroy_releases(lv, clean):
    name, mac, tap = f"{TAG}-pin", _mac(1), _tap(1)
    # someone else's entry on the bridge: netmedic must never remove it
    lv.topo.veth(lv.ns, f"{TAG}o", lv.topo.netns("other", ipv6=False), "eth0")
    lv.topo.enslave(lv.ns, f"{TAG}o", BRIDGE)
    lv.topo.bridge_cmd(lv.ns, "fdb", "add", "02:00:00:00:99:01", "dev", f"{TAG}o", "master", "static")

    clean.add(name)
    lv.create(name, [(mac, tap)])
    entry = lv.pin(mac)  # read right after `virsh create` returned: no waiting
    assert is_sticky_pin(entry, tap), entry
    phases = [r["phase"] for r in lv.hook_lines(name)]
    assert phases[:3] == ["prepare begin", "start begin", "started begin"], phases
    assert [r["result"] for r in lv.hook_lines(name)][1] == "reconciled"
    assert [(r["domain"], r["mac"], r["port"]) for r in lv.records().values()] == [(name, mac, tap)]

    lv.destroy(name)
    assert lv.pin(mac) is None
    assert lv.records() == {}
    assert "stopped end" in [r["phase"] for r in lv.hook_lines(name)]
    assert fdb_entry(lv.topo, lv.ns, BRIDGE, "02:00:00:00:99:01")["state"] == "static"


def test_duplicate_mac_refused_with_refuse_start_allowed_with_allow(lv, clean):
    first, second, mac = f"{TAG}-a", f"{TAG}-b", _mac(2)
    clean.update((first, second))
    lv.create(first, [(mac, _tap(2))])
    lv.set_policy(unique_mac_on_start="refuse-start")
    proc = lv.create(second, [(mac, _tap(3))], check=False)
    assert proc.returncode != 0
    assert "netmedic: refusing to start VM" in proc.stderr and mac in proc.stderr and first in proc.stderr, proc.stderr
    assert lv.virsh("domstate", second, check=False).returncode != 0  # transient and never started
    refused = [r for r in lv.hook_lines(second) if r["result"] == "refused"]
    assert refused and refused[0]["policy"] == "unique_mac.on_start=refuse-start"
    assert is_sticky_pin(lv.pin(mac), _tap(2))  # the refused start took nothing from the first VM

    lv.set_policy(unique_mac_on_start="allow")
    lv.create(second, [(mac, _tap(3))])
    allowed = [r for r in lv.hook_lines(second) if r["phase"] == "prepare begin"][-1]
    assert allowed["result"] == "allowed" and first in allowed["reason"]


def test_broken_policy_never_blocks_a_start(lv, clean):
    name, mac = f"{TAG}-broken", _mac(4)
    clean.add(name)
    lv.set_policy(raw="version: 1\ninvariants: {unique_mac: {on_start: perhaps}}\n")
    lv.create(name, [(mac, _tap(4))])
    assert lv.virsh("domstate", name).stdout.strip() == "running"
    errors = [r for r in lv.hook_lines(name) if r["result"] == "error"]
    assert {r["phase"] for r in errors} >= {"prepare begin", "start begin"}
    assert all("policy.yaml" in r["error"] for r in errors), errors


def test_libvirtd_restart_keeps_every_pin(lv, clean):
    names = [f"{TAG}-r1", f"{TAG}-r2"]
    clean.update(names)
    lv.create(names[0], [(_mac(5), _tap(5))])
    lv.create(names[1], [(_mac(6), _tap(6)), (_mac(7), _tap(7))])
    pins = {(_mac(5), _tap(5)), (_mac(6), _tap(6)), (_mac(7), _tap(7))}
    assert all(is_sticky_pin(lv.pin(m), t) for m, t in pins)
    lv.restart_libvirtd()
    assert all(is_sticky_pin(lv.pin(m), t) for m, t in pins)
    for name in names:
        assert wait_for(lambda n=name: [r for r in lv.hook_lines(n) if r["phase"] == "reconnect begin"], 10), name
    assert {(r["mac"], r["port"]) for r in lv.records().values()} == pins


def test_network_hook_for_type_network_interfaces(lv, clean):
    """A libvirt network (forward mode bridge onto the test bridge: no firewall, no dnsmasq):
    port-created/port-deleted reach the network hook; the VM's MAC is pinned and released."""
    net, name, mac, tap = f"{TAG}-net", f"{TAG}-nv", _mac(13), _tap(13)
    path = lv.tmp / f"{net}.xml"
    path.write_text(f"<network><name>{net}</name><forward mode='bridge'/><bridge name='{BRIDGE}'/></network>")
    lv.virsh("net-create", str(path))
    try:
        clean.add(name)
        xml = domain_xml(name, []).replace(
            "<video>", f"<interface type='network'><mac address='{mac}'/><source network='{net}'/>"
            f"<target dev='{tap}'/><model type='virtio'/><rom enabled='no'/></interface><video>")
        (lv.tmp / f"{name}.xml").write_text(xml)
        lv.virsh("create", str(lv.tmp / f"{name}.xml"))
        assert is_sticky_pin(lv.pin(mac), tap)
        net_lines = [r for r in lv.audit("hook") if r.get("hook") == "network" and r.get("network") == net]
        created = [r for r in net_lines if r["phase"] == "port-created begin"]
        assert created and created[0]["port"]["owner"] == name and created[0]["port"]["mac"] == mac
        assert created[0]["port"]["bridge"] == BRIDGE
        lv.destroy(name)
        deleted = [r for r in lv.audit("hook") if r.get("hook") == "network" and r["phase"] == "port-deleted begin"]
        assert deleted and deleted[-1]["port"]["owner"] == name
        assert lv.records() == {}
    finally:
        lv.destroy(name)
        lv.virsh("net-destroy", net, check=False)
        # libvirt leaves the transient network's (empty) port directory behind: it is the test's
        shutil.rmtree(f"/run/libvirt/network/{net}", ignore_errors=True)


def _connected(lv, connects=1):
    def pred():
        st = lv.status()
        src = (st or {}).get("sources", {}).get("libvirt", {})
        return st if src.get("state") == "connected" and src.get("connects", 0) >= connects else None
    return pred


def test_hotplugged_nic_pinned_by_the_daemons_libvirt_events(lv, clean, tmp_path):
    """No hook fires for a hot-plug. The daemon runs with an EMPTY run-state directory, so only the
    libvirt event source (DEVICE_ADDED and the live XML) can tell it about the new NIC."""
    name = f"{TAG}-hot"
    clean.add(name)
    empty = tmp_path / "no-domains"
    empty.mkdir()
    daemon = lv.daemon(str(empty))
    try:
        st = wait_for(_connected(lv), 20)
        assert st, (lv.tmp / "daemon.log").read_text()
        assert st["sources"]["socket"]["state"] == "listening"
        lv.create(name, [(_mac(8), _tap(8))])
        lv.virsh("attach-device", name, "/dev/stdin", "--live", input=_nic_xml(_mac(9), _tap(9)))
        assert wait_for(lambda: is_sticky_pin(lv.pin(_mac(9)), _tap(9)), 5), lv.pin(_mac(9))
        # status.json is rewritten after the pass: wait for the event and the heal to be in it
        st = wait_for(lambda: (lambda s: s if any("device-added" in e["detail"] for e in s["last_events"])
                               and any(_mac(9) in " ".join(h["results"]) for h in s["last_heals"])
                               else None)(lv.status()), 3)
        # the run-state directory the daemon reads is empty: only libvirt's live XML named the NIC
        assert st, lv.status()
        text = subprocess.run([sys.executable, "-m", "netmedic", "status", "--socket", lv.socket],
                              capture_output=True, text=True, env=nm_env(), timeout=30)
        assert text.returncode == 0, text.stderr
        assert "libvirt" in text.stdout and "connected" in text.stdout and "last heals:" in text.stdout
    finally:
        lv.topo.stop_process(daemon, [])
    assert not os.path.exists(lv.socket)  # the daemon removed its socket
    with open(os.path.join(os.path.dirname(lv.socket), "status.json")) as fh:
        assert json.load(fh).get("stopped")


def test_daemon_reconnects_after_libvirtd_restart(lv, clean):
    """The daemon (on libvirt's real run-state directory) loses libvirtd, degrades to the XML
    directories, reconnects, keeps every pin, and pins the next hot-plugged NIC."""
    name = f"{TAG}-rec"
    clean.add(name)
    daemon = lv.daemon("/run/libvirt/qemu")
    try:
        assert wait_for(_connected(lv), 20), (lv.tmp / "daemon.log").read_text()
        lv.create(name, [(_mac(11), _tap(11))])
        assert is_sticky_pin(lv.pin(_mac(11)), _tap(11))
        lv.stop("libvirtd")
        st = wait_for(lambda: (lambda s: s if s and s["sources"]["libvirt"]["state"] == "disconnected"
                               else None)(lv.status()), 10)
        assert st, lv.status()
        assert is_sticky_pin(lv.pin(_mac(11)), _tap(11))  # the XML directories carry on
        lv.start_libvirtd()
        st = wait_for(_connected(lv, connects=2), 40)
        assert st, (lv.tmp / "daemon.log").read_text()
        assert any("disconnected" in e["detail"] for e in st["last_events"])
        lv.virsh("attach-device", name, "/dev/stdin", "--live", input=_nic_xml(_mac(12), _tap(12)))
        assert wait_for(lambda: is_sticky_pin(lv.pin(_mac(12)), _tap(12)), 5)
        assert is_sticky_pin(lv.pin(_mac(11)), _tap(11))
        lines = [r for r in lv.audit("source_state") if r.get("source") == "libvirt"]
        states = [r["state"] for r in lines]
        states = [x for i, x in enumerate(states) if i == 0 or states[i - 1] != x]
        assert states[-3:] == ["connected", "disconnected", "connected"], lines
    finally:
        lv.topo.stop_process(daemon, [])


def test_policy_file_shape_is_valid_for_the_tests(lv):
    with open(lv.policy) as fh:
        assert yaml.safe_load(fh)["scope"]["bridges"] == [BRIDGE]


def test_vm_ip_from_a_real_dnsmasq_lease(lv, clean):
    """A libvirt NAT network (203.0.113.0/24, libvirt's own dnsmasq in libvirtd's namespace) and a
    running VM on it; a DHCP client (busybox udhcpc) in a namespace of its own, on a veth into the
    network's bridge and with the VM NIC's MAC, takes a real lease; `netmedic diagnose VM --json`, on
    libvirt's run-state directories and lease files, reports that address from the lease."""
    busybox = shutil.which("busybox", path=CLEAN_ENV["PATH"])
    if busybox is None:
        pytest.skip("busybox is not installed (scripts/libvirt-test-env.sh)")
    net, natbr, name, mac, tap = f"{TAG}-nat", f"{TAG}nat", f"{TAG}-ip", _mac(14), _tap(14)
    path = lv.tmp / f"{net}.xml"
    path.write_text(f"<network><name>{net}</name><forward mode='nat'/><bridge name='{natbr}' stp='off' delay='0'/>"
                    "<ip address='203.0.113.1' netmask='255.255.255.0'><dhcp>"
                    "<range start='203.0.113.100' end='203.0.113.150'/></dhcp></ip></network>")
    assert not os.path.exists(f"/etc/libvirt/qemu/networks/{net}.xml")
    lv.virsh("net-define", str(path))
    try:
        lv.virsh("net-start", net)
        clean.add(name)
        xml = domain_xml(name, []).replace(
            "<video>", f"<interface type='network'><mac address='{mac}'/><source network='{net}'/>"
            f"<target dev='{tap}'/><model type='virtio'/><rom enabled='no'/></interface><video>")
        (lv.tmp / f"{name}.xml").write_text(xml)
        lv.virsh("create", str(lv.tmp / f"{name}.xml"))
        client = lv.topo.netns("dhcp", ipv6=False)
        lv.topo.veth(lv.ns, f"{TAG}d", client, "eth0", mac_b=mac)
        lv.topo.enslave(lv.ns, f"{TAG}d", natbr)
        # -B: broadcast replies (the VM's tap on the same bridge has the same MAC); -s /bin/true: no
        # address configured, the lease is all this test wants
        got = lv.topo.run(client, busybox, "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-B", "-s", "/bin/true",
                          "-t", "10", "-T", "1", "-x", "hostname:nmlease", check=False, timeout=60)
        assert got.returncode == 0, got.stdout + got.stderr
        proc = lv.topo.run(lv.ns, sys.executable, "-m", "netmedic", "diagnose", name, "--nic", mac, "--json",
                           "--domain-xml-dir", "/run/libvirt/qemu", "--network-xml-dir", "/run/libvirt/network",
                           "--policy", lv.policy, "--audit-log", lv.audit_log, "--state-dir", lv.state_dir,
                           env=nm_env(), check=False, timeout=60)
        assert proc.returncode in (0, 1), proc.stderr
        report = json.loads(proc.stdout)
        [hop] = [h for h in report["hops"] if h["number"] == 8]
        ev = hop["evidence"]
        assert hop["verdict"] == "ok" and ev["source"] == "dhcp_lease", hop
        assert ev["file"] == f"/var/lib/libvirt/dnsmasq/{natbr}.status" and ev["hostname"] == "nmlease", ev
        assert ev["address"].startswith("203.0.113.") and 100 <= int(ev["address"].rsplit(".", 1)[1]) <= 150
        with open(ev["file"]) as fh:  # the lease libvirt's dnsmasq wrote
            assert [lease["ip-address"] for lease in json.load(fh) if lease["mac-address"] == mac] == [ev["address"]]
    finally:
        lv.destroy(name)
        lv.remove_network(net, natbr)


def test_twenty_vms_at_once_through_a_daemon_kill_a_bridge_rebuild_and_a_libvirtd_restart(lv, clean):
    """Issue 12's acceptance: 20 diskless TCG domains started at once with the daemon running: all pinned;
    the daemon SIGKILLed, the bridge deleted and re-created while it is down, the daemon started again:
    all re-attached and pinned (no record duplicated); libvirtd restarted: still pinned; all destroyed at
    once: no pin and no record left."""
    from concurrent.futures import ThreadPoolExecutor

    vms = {f"{TAG}-m{i}": (_mac(200 + i), _tap(200 + i)) for i in range(20)}
    daemon = lv.daemon("/run/libvirt/qemu")
    try:
        assert wait_for(_connected(lv), 20), (lv.tmp / "daemon.log").read_text()
        with ThreadPoolExecutor(20) as pool:
            done = list(pool.map(lambda item: lv.create(item[0], [item[1]], check=False), vms.items()))
        assert all(p.returncode == 0 for p in done), [p.stderr for p in done if p.returncode]
        assert wait_for(lambda: all(is_sticky_pin(lv.pin(mac), tap) for mac, tap in vms.values()), 20), \
            [(tap, lv.pin(mac)) for mac, tap in vms.values() if not is_sticky_pin(lv.pin(mac), tap)]

        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait(10)
        lv.topo.run(lv.ns, "ip", "link", "del", BRIDGE)
        lv.topo.bridge(lv.ns, BRIDGE)  # every tap is left detached, every pin gone with its port
        assert all(lv.topo.link(lv.ns, tap).get("master") is None for _, tap in vms.values())
        daemon = lv.daemon("/run/libvirt/qemu")
        assert wait_for(lambda: all(lv.topo.link(lv.ns, tap).get("master") == BRIDGE
                                    and is_sticky_pin(lv.pin(mac), tap) for mac, tap in vms.values()), 30), \
            [tap for mac, tap in vms.values() if not is_sticky_pin(lv.pin(mac), tap)]
        records = lv.records()
        pins = [r for r in records.values() if r.get("kind") == "fdb_pin" and r.get("domain") in vms]
        assert sorted((r["mac"], r["port"]) for r in pins) == sorted(vms.values())  # one record each
        assert not any(r.get("pending") for r in records.values())

        lv.restart_libvirtd()
        assert wait_for(_connected(lv, 2), 30)
        assert all(is_sticky_pin(lv.pin(mac), tap) for mac, tap in vms.values())

        with ThreadPoolExecutor(20) as pool:
            list(pool.map(lv.destroy, vms))
        assert wait_for(lambda: not any(r.get("domain") in vms for r in lv.records().values()), 30), lv.records()
        assert all(lv.pin(mac) is None or "sticky" not in (lv.pin(mac).get("flags") or [])
                   for mac, _ in vms.values())
    finally:
        lv.topo._stop_process(daemon, [])
