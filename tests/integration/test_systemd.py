"""netmedic under a real systemd (issue 12, part 6): a Debian 12 container with systemd as PID 1
(systemd-nspawn, private network), the built .deb installed there with apt, and the shipped unit
(Type=notify, WatchdogSec, ExecReload, ProtectSystem=strict, the capability set) judged by the kernel
state inside the container:

- the daemon pins a VM tap, re-attaches a detached tap, heals ip_forward and an iptables FORWARD DROP
  blackhole (every healer works inside the sandbox);
- `systemctl kill -s KILL` -> restarted, converged, no duplicate rule or record;
- `kill -STOP` -> the watchdog kills and restarts it;
- `systemctl reload` with a broken policy keeps the last good one (and it still heals).

The guest's root file system is built once by scripts/systemd-test-env.sh (debootstrap, cached in
/var/cache/netmedic-test/systemd-bookworm); each run boots a throw-away overlay of it in a temporary
directory of its own, stops the container by its PID and unmounts the overlay, even on failure.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from netmedic import lab as netlab

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("NETMEDIC_SYSTEMD_ROOTFS", "/var/cache/netmedic-test/systemd-bookworm")
ENV = {"PATH": "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root"}
VM_MAC = "52:54:00:5e:00:21"
TAP, BRIDGE, UPLINK = "vnet0", "br0", "uplink0"
POLICY = """version: 1
kill_switch_file: /etc/netmedic/kill-switch
invariants:
  bridge_netfilter: {mode: enforce}
"""

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (systemd-nspawn)")


def run(argv, timeout=120, check=True, **kw):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=ENV, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc


def wait_for(what, predicate, timeout):
    t0 = time.monotonic()
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() - t0 < timeout, f"{what}: not within {timeout}s ({value!r})"
        time.sleep(0.2)


class Guest:
    """A booted container: commands run in all its namespaces (nsenter -t PID -a)."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.root = os.path.join(workdir, "merged")
        self.proc = None
        self.pid = None
        self.mounted = False

    def prepare(self, deb: str) -> None:
        for d in ("upper", "work", "merged"):
            os.makedirs(os.path.join(self.workdir, d))
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={CACHE},upperdir={self.workdir}/upper,workdir={self.workdir}/work", self.root])
        self.mounted = True
        shutil.copy(deb, os.path.join(self.root, "tmp", "netmedic.deb"))
        # The .deb's dependencies are in the cached tree: apt resolves them there, with no download.
        proc = subprocess.run(["chroot", self.root, "apt-get", "install", "-y", "-q", "--no-install-recommends",
                               "/tmp/netmedic.deb"], capture_output=True, text=True, timeout=180,
                              env=dict(ENV, DEBIAN_FRONTEND="noninteractive"))
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        with open(os.path.join(self.root, "etc", "netmedic", "policy.yaml"), "w") as fh:
            fh.write(POLICY)
        # The test's watchdog: 3 s instead of the shipped 30 s, so that a stopped daemon is seen quickly.
        dropin = os.path.join(self.root, "etc", "systemd", "system", "netmedic.service.d")
        os.makedirs(dropin, exist_ok=True)
        with open(os.path.join(dropin, "test.conf"), "w") as fh:
            fh.write("[Service]\nWatchdogSec=3s\nRestartSec=1s\n")

    def boot(self) -> None:
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-q", "-b", "-D", self.root, "--private-network", "--register=no",
             "--keep-unit", "-M", f"nmtest{os.getpid()}"],
            stdin=subprocess.DEVNULL, stdout=open(os.path.join(self.workdir, "console.log"), "w"),
            stderr=subprocess.STDOUT, env=ENV)

        def init_pid():
            assert self.proc.poll() is None, f"nspawn exited: {self.console()[-2000:]}"
            kids = run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], check=False).stdout.split()
            return int(kids[0]) if kids else None

        self.pid = wait_for("the container's systemd", init_pid, 20)
        wait_for("systemd up", lambda: self.sh("systemctl", "is-system-running", check=False).stdout.strip()
                 in ("running", "degraded"), 40)

    def console(self) -> str:
        try:
            with open(os.path.join(self.workdir, "console.log"), errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""

    def sh(self, *argv, check=True, timeout=30):
        return run(["nsenter", "-t", str(self.pid), "-a", *argv], check=check, timeout=timeout)

    def py(self, code: str):
        """Python in the guest (its own python3-pyroute2 0.7.2 and the installed netmedic): JSON out."""
        return json.loads(self.sh("python3", "-c", code).stdout)

    def main_pid(self) -> int:
        return int(self.sh("systemctl", "show", "-p", "MainPID", "--value", "netmedic").stdout.strip() or 0)

    def active(self) -> str:
        return self.sh("systemctl", "is-active", "netmedic", check=False).stdout.strip()

    def audit(self, event=None) -> list:
        text = self.sh("cat", "/var/log/netmedic/audit.jsonl", check=False).stdout
        recs = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [r for r in recs if event is None or r.get("event") == event]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn: a clean shutdown of the container
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.mounted:
            subprocess.run(["umount", self.root], env=ENV, check=False)
            if os.path.ismount(self.root):
                subprocess.run(["umount", "-l", self.root], env=ENV, check=False)
            self.mounted = False


@pytest.fixture(scope="module")
def deb():
    run(["bash", os.path.join(ROOT, "scripts", "packaging-deps.sh"), "deb"], timeout=900)
    run(["bash", os.path.join(ROOT, "packaging", "build.sh"), "deb"], timeout=600)
    [path] = glob.glob(os.path.join(ROOT, "build", "packages", "netmedic_*_all.deb"))
    return path


@pytest.fixture
def guest(deb):
    run(["bash", os.path.join(ROOT, "scripts", "systemd-test-env.sh")], timeout=1800)
    workdir = tempfile.mkdtemp(prefix="netmedic-systemd-")
    g = Guest(workdir)
    try:
        g.prepare(deb)
        g.boot()
        yield g
    finally:
        g.stop()
        shutil.rmtree(workdir, ignore_errors=True)


FDB = f"""
import json
from pyroute2 import IPRoute
with IPRoute() as ip:
    tap = ip.link_lookup(ifname={TAP!r})[0]
    br = ip.link_lookup(ifname={BRIDGE!r})[0]
    master = ip.get_links(tap)[0].get_attr("IFLA_MASTER")
    pins = [dict(port=e["ifindex"], state=e["state"], flags=e["flags"])
            for e in ip.fdb("dump", ifindex=tap) if (e.get_attr("NDA_LLADDR") or "").lower() == {VM_MAC!r}]
print(json.dumps({{"attached": master == br, "pins": pins}}))
"""
STICKY = 0x40
NUD_NOARP = 0x40

FORWARD = """
import json
from netmedic import ops
print(json.dumps([{"backend": c.backend, "policy": c.policy, "rules": list(c.rules)}
                  for c in ops.read_forward_chains()]))
"""


def kernel(g: Guest) -> dict:
    fdb = g.py(FDB)
    fdb["pinned"] = any(p["state"] & NUD_NOARP and p["flags"] & STICKY for p in fdb["pins"])
    fdb["ip_forward"] = g.sh("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip()
    chains = g.py(FORWARD)
    fdb["accept_rules"] = sum(r.split() == ["-A", "FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]
                              for c in chains for r in c["rules"])
    fdb["forward_policy"] = [c["policy"] for c in chains]
    return fdb


class Kernel(dict):
    def __bool__(self):
        return bool(self["attached"] and self["pinned"] and self["ip_forward"] == "1" and self["accept_rules"] == 1)


def healed(g: Guest):
    return Kernel(kernel(g))


def build_host(g: Guest) -> None:
    """In the container's own network namespace: a bridge with an uplink and a VM tap, a NAT network
    on it, the VM's run-state XML; then the faults: FORWARD policy DROP (bridge-nf-call-iptables is 1
    in a new namespace) and ip_forward 0."""
    g.sh("ip", "link", "add", BRIDGE, "type", "bridge", "stp_state", "0")
    g.sh("ip", "link", "add", UPLINK, "type", "veth", "peer", "name", "switch0")
    g.sh("ip", "link", "set", UPLINK, "master", BRIDGE, "up")
    g.sh("ip", "tuntap", "add", "dev", TAP, "mode", "tap")
    g.sh("ip", "link", "set", TAP, "address", "fe" + VM_MAC[2:])
    g.sh("ip", "link", "set", TAP, "master", BRIDGE, "up")
    g.sh("ip", "link", "set", BRIDGE, "up")
    g.sh("ip", "addr", "add", "198.51.100.1/24", "dev", BRIDGE)
    staging = os.path.join(g.root, "var", "tmp", "xml")
    netlab.write_domain_xml(staging, "vm1", [{"mac": VM_MAC, "bridge": BRIDGE, "tap": TAP}], pid=1)
    netlab.write_network_xml(staging, "default", BRIDGE, "nat", ip="198.51.100.1", netmask="255.255.255.0")
    g.sh("mkdir", "-p", "/run/libvirt/qemu", "/run/libvirt/network")
    g.sh("cp", "/var/tmp/xml/default.xml", "/run/libvirt/network/default.xml")
    g.sh("cp", "/var/tmp/xml/vm1.xml", "/run/libvirt/qemu/vm1.xml")
    g.sh("iptables", "-P", "FORWARD", "DROP")
    g.sh("sysctl", "-q", "-w", "net.ipv4.ip_forward=0")


def test_the_shipped_unit_under_a_real_systemd(guest):
    g = guest
    t0 = time.monotonic()
    assert g.active() == "active", g.sh("systemctl", "status", "netmedic", check=False).stdout
    props = dict(line.split("=", 1) for line in g.sh(
        "systemctl", "show", "-p", "Type", "-p", "WatchdogUSec", "-p", "NRestarts", "netmedic").stdout.split())
    assert props["Type"] == "notify" and props["WatchdogUSec"] == "3s", props

    # 1. Every healer inside the sandbox: pin, ip_forward, the iptables blackhole.
    build_host(g)
    k = wait_for("pin + ip_forward + ACCEPT rule", lambda: healed(g), 15)
    assert k["forward_policy"] == ["DROP"]  # netmedic adds its rule, it never changes the admin's policy
    # 2. A detached tap is re-attached (and re-pinned).
    g.sh("ip", "link", "set", TAP, "nomaster")
    wait_for("tap re-attached", lambda: healed(g), 10)
    assert not [e for e in g.audit() if e.get("event") in ("internal_error", "error")], g.audit()

    # 3. SIGKILL: systemd restarts it; it converges with no duplicate rule or record.
    first = g.main_pid()
    g.sh("sysctl", "-q", "-w", "net.ipv4.ip_forward=0")  # (no event for it: the start-up pass heals it)
    g.sh("systemctl", "kill", "-s", "KILL", "netmedic")
    wait_for("restarted after SIGKILL", lambda: g.main_pid() not in (0, first) and g.active() == "active", 15)
    k = wait_for("converged after the restart", lambda: healed(g), 15)
    assert k["accept_rules"] == 1 and len(k["pins"]) == 1, k
    state = json.loads(g.sh("cat", "/var/lib/netmedic/state.json").stdout)
    kinds = sorted((r["kind"], r.get("bridge"), r.get("mac")) for r in state["records"].values())
    assert len(kinds) == len(set(kinds)), kinds

    # 4. SIGSTOP: no more WATCHDOG=1; systemd kills and restarts it (WatchdogSec=3s here).
    second = g.main_pid()
    g.sh("kill", "-STOP", str(second))
    wait_for("watchdog restart", lambda: g.main_pid() not in (0, second) and g.active() == "active", 15)
    journal = g.sh("journalctl", "-u", "netmedic", "--no-pager", "-q", check=False).stdout
    assert "Watchdog timeout" in journal or "watchdog" in journal.lower(), journal[-2000:]

    # 5. A broken policy on reload: the last good one stays, and it still heals.
    with open(os.path.join(g.root, "var", "tmp", "broken.yaml"), "w") as fh:
        fh.write("version: 1\ninvariants: {fdb_ownership: {mode: sometimes}}\n")
    g.sh("cp", "/var/tmp/broken.yaml", "/etc/netmedic/policy.yaml")
    third = g.main_pid()
    g.sh("systemctl", "reload", "netmedic")
    wait_for("policy_rejected", lambda: [e for e in g.audit("policy_rejected") if e.get("pid") == third], 10)
    assert g.active() == "active" and g.main_pid() == third
    g.sh("ip", "link", "set", TAP, "nomaster")
    wait_for("healed with the last good policy", lambda: healed(g), 10)
    status = json.loads(g.sh("netmedic", "status", "--json").stdout)
    assert status["health"]["state"] == "degraded" and "policy" in " ".join(status["health"]["why"])
    assert time.monotonic() - t0 < 90
