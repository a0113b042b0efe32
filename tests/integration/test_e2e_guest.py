"""End to end: a real TCG guest running a tiny Linux on a bridge whose uplink reflects broadcasts.

The guest is a Debian cloud kernel with an initramfs this test builds (cpio newc, gzip) from
busybox-static and the kernel's virtio modules, both unpacked from Debian packages by
scripts/libvirt-test-env.sh. Its /init configures eth0 (virtio-net) with 203.0.113.10/24 and pings
the gateway 203.0.113.1 in a loop, one line per ping on the serial console (a file).

The guest's bridge lives in the namespace of the libvirtd that tests/integration/test_libvirt.py's harness
starts (with netmedic's hooks installed before it starts). Its uplink is a veth to a switch
namespace whose port sends every broadcast back (tc mirred, as in the platform notes), and the
switch leads on to a gateway namespace. Without a pin, the guest's first ARP request comes back
through the uplink, the bridge learns the guest MAC there and the gateway's replies go the wrong
way; with netmedic's hook (pin at `start begin`, before the guest's first frame) the guest keeps
reaching the gateway.
"""
from __future__ import annotations

import glob
import gzip
import io
import os
import re
import shutil
import tempfile
import time

import pytest

from tests.conftest import is_sticky_pin
from tests.integration import test_libvirt as harness
from tests.integration.test_libvirt import BRIDGE, TAG, wait_for

pytestmark = pytest.mark.netns

GUEST_ROOT = "/var/cache/netmedic-test/e2e-guest/root"
GUEST_IP, GW_IP = "203.0.113.10", "203.0.113.1"
MAC = f"52:54:00:{os.getpid() % 256:02x}:e2:01"
TAP = f"{TAG}g"
UPLINK = f"{TAG}u"
# what the guest needs for its NIC; their dependencies are read from each module's own modinfo
# (`depends=`: the unpacked package has no modules.dep) and loaded first
WANTED_MODULES = ("virtio_pci", "virtio_net")
STEADY_S = 10.0  # how long the guest must keep reaching the gateway after its first reply

INIT = f"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox --install -s /bin
for m in $(cat /lib/modules/order); do
    insmod /lib/modules/$m.ko
done
ip link set lo up
ip link set eth0 up
ip addr add {GUEST_IP}/24 dev eth0
echo "NMREADY $(cat /sys/class/net/eth0/address)"
i=0
while true; do
    i=$((i + 1))
    if ping -c 1 -W 1 {GW_IP} >/dev/null 2>&1; then
        echo "NMPING $i ok"
        sleep 0.3
    else
        echo "NMPING $i lost"
        [ $i -le 2 ] && ping -c 1 -W 1 {GW_IP}
        sleep 0.3
    fi
done
"""


def _kernel_and_modules():
    kernels = sorted(glob.glob(os.path.join(GUEST_ROOT, "boot", "vmlinuz-*")))
    busybox = os.path.join(GUEST_ROOT, "bin", "busybox")
    if not kernels or not os.access(busybox, os.X_OK):
        pytest.skip(f"no guest kernel/busybox-static under {GUEST_ROOT} (scripts/libvirt-test-env.sh)")
    kernel = kernels[-1]
    release = os.path.basename(kernel)[len("vmlinuz-"):]
    index = {}
    for path in glob.glob(os.path.join(GUEST_ROOT, "lib", "modules", release, "kernel", "**", "*.ko"),
                          recursive=True):
        index[os.path.basename(path)[:-3].replace("-", "_")] = path
    mods = {}  # name -> path, dependencies first

    def add(name, chain=()):
        if name in mods or name in chain:
            return
        with open(index[name], "rb") as fh:
            found = re.search(rb"\0depends=([\w,-]*)\0", fh.read())
        for dep in filter(None, (found.group(1).decode() if found else "").split(",")):
            add(dep.replace("-", "_"), chain + (name,))
        mods[name] = index[name]

    config = os.path.join(GUEST_ROOT, "boot", f"config-{release}")
    for name in WANTED_MODULES:
        if name in index:
            add(name)
        else:  # built in, then: the config says so
            with open(config) as fh:
                assert f"CONFIG_{name.upper()}=y" in fh.read(), f"{name} is neither a module nor built in"
    return kernel, busybox, mods


class _Cpio:
    """A minimal cpio 'newc' writer (what the kernel unpacks as an initramfs)."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name, mode, data=b"", rdev=(0, 0)):
        name_b = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0]
        self.ino += 1
        self.buf.write(b"070701" + b"".join(b"%08X" % f for f in fields) + name_b)
        self.buf.write(b"\0" * (-self.buf.tell() % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-self.buf.tell() % 4))

    def dir(self, name):
        self._entry(name, 0o040755)

    def file(self, name, data, mode=0o644):
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name, target):
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name, major, minor):
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self):
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def build_initramfs(path, busybox, mods):
    c = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3)
    with open(busybox, "rb") as fh:
        c.file("bin/busybox", fh.read(), 0o755)
    c.symlink("bin/sh", "busybox")
    for name, src in mods.items():
        with open(src, "rb") as fh:
            c.file(f"lib/modules/{name}.ko", fh.read())
    c.file("lib/modules/order", "".join(f"{name}\n" for name in mods).encode())
    c.file("init", INIT.encode(), 0o755)
    with open(path, "wb") as fh:
        fh.write(gzip.compress(c.finish(), compresslevel=1))


def guest_xml(name, kernel, initrd, serial_log):
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>192</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type>"
            f"<kernel>{kernel}</kernel><initrd>{initrd}</initrd>"
            "<cmdline>console=ttyS0 quiet panic=-1 ipv6.disable=1 mitigations=off</cmdline></os>"
            "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
            f"<interface type='bridge'><mac address='{MAC}'/><source bridge='{BRIDGE}'/>"
            f"<target dev='{TAP}'/><model type='virtio'/><rom enabled='no'/></interface>"
            f"<serial type='file'><source path='{serial_log}'/><target port='0'/></serial>"
            "<video><model type='none'/></video><memballoon model='none'/></devices></domain>")


def _head(text, lines=80):
    """The serial log without the ping lines after the first two (what /init and the kernel said)."""
    keep = [x for x in text.splitlines() if not re.match(r"NMPING ([3-9]|\d\d)", x)]
    return "\n".join(keep[:lines])


def _pings(text):
    return [(int(n), res == "ok") for n, res in re.findall(r"^NMPING (\d+) (ok|lost)\s*$", text, re.M)]


@pytest.fixture(scope="module")
def lv(tmp_path_factory):
    """tests/integration/test_libvirt.py's real libvirtd (its own, in a namespace of its own, netmedic's hooks
    installed before it starts), but waiting for the harness lock FIRST: while another run of the
    libvirt tests holds it, its libvirtd is up and would otherwise make this module skip."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    lock = harness._serialize() if os.path.isdir("/etc/libvirt/hooks") else None
    try:
        why = harness._why_not()
        if why:
            pytest.skip(why)
        others = harness._foreign_hooks()
        others += [p for p in ("/etc/libvirt/hooks/qemu", "/etc/libvirt/hooks/network") if os.path.exists(p)]
        if others:
            pytest.skip(f"other libvirt hooks are installed: {', '.join(others)}")
        yield from harness._libvirt(tmp_path_factory)
    finally:
        if lock is not None:
            os.close(lock)


@pytest.fixture
def guest_lab(lv):
    """Switch + gateway namespaces behind the harness's bridge; a world-readable work directory
    (qemu runs as libvirt-qemu: it must reach the kernel, the initramfs and the serial log)."""
    kernel, busybox, mods = _kernel_and_modules()
    work = tempfile.mkdtemp(prefix=f"{TAG}-e2e-", dir="/tmp")
    os.chmod(work, 0o755)
    try:
        topo = lv.topo
        n = len(topo.namespaces)  # fresh names for each test (the topology lives as long as lv)
        sw = topo.netns(f"e2esw{n}", ipv6=False)
        gw = topo.netns(f"e2egw{n}", ipv6=False)
        topo.veth(lv.ns, UPLINK, sw, "sw0")
        topo.enslave(lv.ns, UPLINK, BRIDGE)
        topo.bridge(sw, "swbr", stp=False)
        topo.enslave(sw, "sw0", "swbr")
        topo.veth(sw, "swgw", gw, "eth0")
        topo.enslave(sw, "swgw", "swbr")
        topo.addr(gw, "eth0", f"{GW_IP}/24")
        topo.reflect_broadcasts(sw, "sw0")
        shutil.copy(kernel, os.path.join(work, "vmlinuz"))
        t0 = time.monotonic()
        build_initramfs(os.path.join(work, "initrd.gz"), busybox, mods)
        for f in ("vmlinuz", "initrd.gz"):
            os.chmod(os.path.join(work, f), 0o644)
        yield {"work": work, "sw": sw, "gw": gw, "initramfs_s": time.monotonic() - t0}
    finally:
        try:
            lv.topo._ipn(lv.ns, "link", "del", UPLINK, check=False)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _start_guest(lv, guest_lab, name):
    """`virsh create` the guest; returns (a function reading its serial log, virsh's duration)."""
    work = guest_lab["work"]
    serial = os.path.join(work, f"{name}.serial.log")
    xml = os.path.join(work, f"{name}.xml")
    with open(xml, "w") as fh:
        fh.write(guest_xml(name, os.path.join(work, "vmlinuz"), os.path.join(work, "initrd.gz"), serial))
    lv.domains.add(name)
    t0 = time.monotonic()
    lv.virsh("create", xml)
    t_started = time.monotonic() - t0

    def log():
        try:
            with open(serial, errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""
    return log, t_started


def _stop_guest(lv, name):
    lv.destroy(name)
    lv.domains.discard(name)


def test_guest_keeps_reaching_the_gateway_through_a_reflecting_uplink(lv, guest_lab):
    name = f"{TAG}-e2e"
    try:
        t0 = time.monotonic()
        log, t_started = _start_guest(lv, guest_lab, name)
        # pinned by the hook at `start begin`, before the guest's first frame
        assert is_sticky_pin(lv.pin(MAC), TAP), lv.pin(MAC)
        first_ok = wait_for(lambda: next((n for n, ok in _pings(log()) if ok), None), 60, 0.2)
        assert first_ok, f"the guest never reached the gateway; serial log:\n{_head(log())}"
        t_first = time.monotonic() - t0
        time.sleep(STEADY_S)
        pings = _pings(log())
        after = [(n, ok) for n, ok in pings if n > first_ok]
        lost = [n for n, ok in after if not ok]
        assert len(after) >= 5, f"the guest's ping loop stalled: {pings}"
        assert not lost, f"pings lost after the first reply (#{first_ok}): {lost}; all: {pings}"
        assert first_ok <= 2, f"more than the first ping lost while booting: {pings}"
        # the fault was there all along: the switch sent the guest's broadcasts back
        reflected = lv.topo.reflected_packets(guest_lab["sw"], "sw0")
        assert reflected > 0
        # ...and the guest MAC is still pinned, sticky, on its tap
        assert is_sticky_pin(lv.pin(MAC), TAP), lv.pin(MAC)
        phases = [r["phase"] for r in lv.hook_lines(name)]
        assert phases[:2] == ["prepare begin", "start begin"], phases
        print(f"\nwith the hook: initramfs {guest_lab['initramfs_s']:.2f} s, virsh create {t_started:.2f} s, "
              f"first reply {t_first:.2f} s after create (ping #{first_ok}), {len(after)} later pings in "
              f"{STEADY_S:.0f} s, 0 lost, {reflected} broadcasts reflected")
    finally:
        _stop_guest(lv, name)
    assert lv.pin(MAC) is None


def test_without_the_pin_the_same_guest_is_cut_off(lv, guest_lab):
    """The control: the same guest and network, with the hook's pin removed right after `virsh create`
    (seconds before the guest's first frame): its own reflected ARP request moves its MAC to the
    uplink and no reply from the gateway ever reaches it."""
    name = f"{TAG}-e2e-nopin"
    try:
        t0 = time.monotonic()
        log, _ = _start_guest(lv, guest_lab, name)
        lv.topo._bridge_cmd(lv.ns, "fdb", "del", MAC, "dev", TAP, "master")
        assert lv.pin(MAC) is None
        assert wait_for(lambda: "NMREADY" in log(), 60, 0.2), _head(log())
        pings = wait_for(lambda: (lambda p: p if len(p) >= 5 else None)(_pings(log())), 30, 0.2)
        assert pings, f"the guest's ping loop stalled: {_head(log())}"
        assert not [n for n, ok in pings if ok], f"the guest reached the gateway without the pin: {pings}"
        assert lv.topo.fdb_ports(lv.ns, BRIDGE, MAC) == [UPLINK]  # learned where its reflection came from
        assert lv.topo.reflected_packets(guest_lab["sw"], "sw0") > 0
        print(f"\nwithout the pin: {len(pings)} pings, all lost, MAC on {UPLINK} "
              f"({time.monotonic() - t0:.1f} s)")
    finally:
        _stop_guest(lv, name)
