"""Throw-away network topologies in network namespaces, for ``netmedic lab`` and the integration tests.

Everything here happens inside network namespaces that a :class:`Topology` creates itself: it never
touches the root namespace's interfaces, routes or firewall. Veth pairs are created *inside* a
namespace (``ip -n A link add X type veth peer name Y netns B``), so no interface ever exists in the
root namespace, not even for an instant. Addresses are limited to the documentation networks in
:data:`LAB_NETWORKS`.

The topology is built with the ``ip``, ``bridge``, ``tc`` and ``sysctl`` commands (argv lists, never a
shell), so that tests judge the kernel's state with tools independent of netmedic's own netlink code.
``ping`` is done by a tiny ICMP echo prober run with this Python inside the namespace (raw socket, so
root), because iputils' ping is not installed everywhere (it is not on the CI machines).

The seed case (:func:`build_seed_case`) reproduces the fault netmedic was founded on: a VM on a Linux
bridge whose uplink goes to a switch that reflects the VM's broadcasts back into the uplink (on a real
host: a round-robin bond). The bridge learns the VM's MAC on the uplink port and sends the gateway's
replies out of the uplink: the VM is cut off. The reflecting switch is emulated with a tc ``mirred``
action on the switch's side of the uplink veth (bonding is not available on every kernel).

A real libvirt tap is a tun/tap device whose other side is the guest's virtio NIC inside QEMU. In a
lab the "VM" is a network namespace behind a veth pair whose host end is named and addressed like a
libvirt tap (``vnet0``, MAC = guest MAC with first octet 0xfe) and enslaved to the bridge; for the
bridge, its fdb and everything netmedic watches, the two behave alike.
"""
from __future__ import annotations

import atexit
import dataclasses
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid as uuidlib
import warnings
import xml.etree.ElementTree as ET
from typing import Callable, Sequence

__all__ = [
    "LAB_NETWORKS",
    "SeedLab",
    "Topology",
    "build_seed_case",
    "tap_mac_for",
    "validate_ifname",
    "validate_mac",
    "write_domain_xml",
    "write_network_xml",
]

#: The only networks a lab may configure (RFC 5737 documentation networks; 192.0.2.0/24, the third
#: one, is the real uplink subnet of the machines this project runs on, so it is refused).
LAB_NETWORKS = (ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("203.0.113.0/24"))

IFNAMSIZ = 16  # kernel limit including the trailing NUL: names are 1..15 characters
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_SHORT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,15}$")
_SYSCTL_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@/-]*$")
_TOOL_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")

# One token per process (regenerated after a fork), plus a counter per Topology: namespace names of
# parallel runs, and of several Topology objects in one run, never collide.
_process_token: tuple[int, str] | None = None
_topology_counter = 0


def _unique_token() -> str:
    global _process_token, _topology_counter
    pid = os.getpid()
    if _process_token is None or _process_token[0] != pid:
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
        _process_token = (pid, "".join(secrets.choice(alphabet) for _ in range(4)))
        _topology_counter = 0
    _topology_counter += 1
    return f"{_process_token[1]}{_topology_counter}"


# ----------------------------------------------------------------------------------------------------
# Validation


def validate_ifname(name: str, what: str = "interface name") -> str:
    """Return ``name`` if it is a valid Linux interface name, else raise ValueError."""
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a string, not {type(name).__name__}")
    if not 1 <= len(name) <= IFNAMSIZ - 1:
        raise ValueError(f"{what} {name!r} must be 1..{IFNAMSIZ - 1} characters long")
    if name in (".", ".."):
        raise ValueError(f"{what} {name!r} is not allowed")
    if name.startswith("-"):
        raise ValueError(f"{what} {name!r} must not start with '-'")
    for ch in name:
        if ch in "/:" or ch.isspace() or not ch.isprintable():
            raise ValueError(f"{what} {name!r} must not contain '/', ':', whitespace or control characters")
    return name


def validate_mac(mac: str, what: str = "MAC address") -> str:
    """Return ``mac`` normalised to lower case, else raise ValueError."""
    if not isinstance(mac, str) or not _MAC_RE.match(mac.lower()):
        raise ValueError(f"{what} {mac!r} is not of the form aa:bb:cc:dd:ee:ff")
    mac = mac.lower()
    if int(mac[:2], 16) & 1:
        raise ValueError(f"{what} {mac!r} is a multicast address")
    return mac


def tap_mac_for(guest_mac: str) -> str:
    """The MAC libvirt gives a guest's tap: the guest MAC with its first octet replaced by 0xfe."""
    return "fe" + validate_mac(guest_mac)[2:]


def _validate_mtu(mtu: int | None) -> int | None:
    if mtu is None:
        return None
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535:
        raise ValueError(f"MTU {mtu!r} must be an integer in 68..65535")
    return mtu


def _check_lab_address(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, text: str) -> None:
    if not any(addr in net for net in LAB_NETWORKS):
        allowed = ", ".join(str(n) for n in LAB_NETWORKS)
        raise ValueError(f"address {text!r} is outside the lab networks ({allowed})")


def _lab_interface(cidr: str) -> ipaddress.IPv4Interface:
    try:
        iface = ipaddress.ip_interface(cidr)
    except ValueError:
        raise ValueError(f"{cidr!r} is not an address with prefix length, like 203.0.113.10/24") from None
    if "/" not in str(cidr):
        raise ValueError(f"{cidr!r} has no prefix length (like 203.0.113.10/24)")
    _check_lab_address(iface.ip, cidr)
    if iface.network.prefixlen < 24:
        raise ValueError(f"{cidr!r}: prefix shorter than /24 reaches outside the lab networks")
    return iface  # type: ignore[return-value]


def _lab_address(text: str) -> ipaddress.IPv4Address:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None
    _check_lab_address(addr, text)
    return addr  # type: ignore[return-value]


def _validate_file_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not name or len(name) > 200:
        raise ValueError(f"{what} {name!r} must be a non-empty string of at most 200 characters")
    if "/" in name or "\0" in name or name.startswith("."):
        raise ValueError(f"{what} {name!r} must not contain '/' or NUL, nor start with '.'")
    return name


def _tool(name: str) -> str:
    """Absolute path of a command (PATH first, then the sbin/bin directories hooks often lack)."""
    found = shutil.which(name)
    if found:
        return found
    for d in _TOOL_DIRS:
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            return path
    raise RuntimeError(f"command {name!r} not found (install iproute2/procps)")


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return " / ".join(lines)[:500] or "(no error output)"


# ----------------------------------------------------------------------------------------------------
# ICMP echo prober, run with this interpreter inside a namespace (argv: dst count timeout interval).

_PROBER = r"""
import os, select, socket, struct, sys, time
dst, count, timeout, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF
ident = os.getpid() & 0xFFFF
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
received = 0
next_send = time.monotonic()
for seq in range(1, count + 1):
    now = time.monotonic()
    if next_send > now:
        time.sleep(next_send - now)
    sent = time.monotonic()
    next_send = sent + interval
    body = struct.pack("!d", sent) + b"netmedic-lab" + bytes(36)
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    pkt = struct.pack("!BBHHH", 8, 0, csum(hdr + body), ident, seq) + body
    try:
        sock.sendto(pkt, (dst, 0))
    except OSError:
        continue
    deadline = sent + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            break
        try:
            data, src = sock.recvfrom(65535)
        except OSError:
            continue
        ihl = (data[0] & 0x0F) * 4
        if len(data) < ihl + 8 or src[0] != dst:
            continue
        typ, code, _, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        if typ == 0 and code == 0 and rid == ident and rseq == seq:
            received += 1
            break
print(count, received)
"""


# ----------------------------------------------------------------------------------------------------
# Topology


class Topology:
    """A set of network namespaces and what was built in them, torn down as a whole.

    Namespaces are named ``f"{prefix}{unique}-{short}"``, where ``unique`` is a short token per process
    plus a counter per Topology, so parallel runs never collide. The kernel's 15-character limit
    applies to interface names, not to namespace names.

    Use it as a context manager: ``__exit__``/``close()`` deletes every namespace this object created
    (after ending the processes it started in them, by PID), even after a failure, and is safe to call
    twice. An ``atexit`` cleanup does the same if the program exits without closing.

    Every method acts only in namespaces of this Topology: any other namespace name (the root
    namespace included) is refused with ValueError.
    """

    def __init__(self, prefix: str = "nmlab"):
        if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
            raise ValueError(f"namespace prefix {prefix!r} must be 1..16 characters of [A-Za-z0-9_.-]")
        self.prefix = prefix
        self.unique = _unique_token()
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen] = []
        self._cleanups: list[Callable[[], None]] = []
        self._closed = False
        self._owner_pid = os.getpid()
        self._ip = _tool("ip")
        atexit.register(self._atexit)

    # -- context manager / cleanup -------------------------------------------------------------------

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except Exception as err:  # never hide the error that is already in flight
            warnings.warn(f"labnet: cleanup after a failure was incomplete: {err}", RuntimeWarning,
                          stacklevel=2)

    def _atexit(self) -> None:
        if os.getpid() != self._owner_pid:  # a forked child must not tear down its parent's lab
            return
        try:
            self.close()
        except Exception as err:
            print(f"labnet: cleanup at exit was incomplete: {err}", file=sys.stderr)

    @property
    def namespaces(self) -> list[str]:
        """The namespaces this Topology created and has not deleted yet, in creation order."""
        return list(self._namespaces)

    def add_cleanup(self, func: Callable[[], None]) -> None:
        """Call ``func()`` at close, before the namespaces are deleted (last added, first called)."""
        self._cleanups.append(func)

    def close(self) -> None:
        """End the processes started here, run cleanups, delete every namespace created. Idempotent.

        Everything is attempted; failures are collected and raised as one RuntimeError at the end.
        """
        errors: list[str] = []
        if not self._closed:
            self._closed = True
            try:
                atexit.unregister(self._atexit)
            except Exception:  # pragma: no cover - interpreter shutting down
                pass
        for proc in reversed(self._procs):
            self._stop_process(proc, errors)
        self._procs.clear()
        while self._cleanups:
            func = self._cleanups.pop()
            try:
                func()
            except Exception as err:
                errors.append(f"cleanup {getattr(func, '__name__', func)!r}: {err}")
        for ns in reversed(list(self._namespaces)):
            self._kill_leftovers(ns, errors)
            res = subprocess.run([self._ip, "netns", "delete", ns], capture_output=True, text=True,
                                 errors="replace", timeout=30)
            if res.returncode != 0 and os.path.exists(os.path.join("/run/netns", ns)):
                errors.append(f"ip netns delete {ns}: {_one_line(res.stderr)}")
                continue
            self._namespaces.remove(ns)
        if errors:
            raise RuntimeError("labnet cleanup: " + "; ".join(errors))

    @staticmethod
    def _stop_process(proc: subprocess.Popen, errors: list[str]) -> None:
        if proc.poll() is not None:
            return
        # The process was started in a new session: its process group id is its own PID, which
        # cannot be reused while it is unreaped. Signal the group so that its children go too.
        for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            except OSError as err:
                errors.append(f"kill {proc.pid}: {err}")
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue
        errors.append(f"process {proc.pid} did not exit")

    def _kill_leftovers(self, ns: str, errors: list[str]) -> None:
        """Kill, by PID, processes still inside a namespace about to be deleted (for instance the
        grandchildren of a process started here), so that the namespace really goes away."""
        res = subprocess.run([self._ip, "netns", "pids", ns], capture_output=True, text=True, timeout=10)
        pids = [int(p) for p in res.stdout.split() if p.isdigit() and int(p) != os.getpid()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            except OSError as err:
                errors.append(f"kill {pid} in {ns}: {err}")

    # -- command helpers -------------------------------------------------------------------------------

    def _own(self, ns: str) -> str:
        if self._closed:
            raise RuntimeError("this Topology is closed")
        if ns not in self._namespaces:
            raise ValueError(f"{ns!r} is not a namespace of this Topology (create it with netns())")
        return ns

    def _exec(self, argv: Sequence[str], check: bool = True, timeout: float = 30, env=None,
              input=None) -> subprocess.CompletedProcess:
        argv = [str(a) for a in argv]
        try:
            res = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout,
                                 env=env, input=input,
                                 stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{shlex.join(argv)}: timed out after {timeout:g} s") from None
        except OSError as err:
            raise RuntimeError(f"{shlex.join(argv)}: {err}") from None
        if check and res.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} failed (exit {res.returncode}): {_one_line(res.stderr)}")
        return res

    def _ipn(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self._exec([self._ip, "-n", self._own(ns), *args], check=check)

    def _tc(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self._exec([_tool("tc"), "-n", self._own(ns), *args], check=check)

    def _bridge_cmd(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self._exec([_tool("bridge"), "-n", self._own(ns), *args], check=check)

    # -- namespaces and processes ----------------------------------------------------------------------

    def netns(self, short: str, ipv6: bool = True) -> str:
        """Create namespace ``{prefix}{unique}-{short}``, bring its ``lo`` up, return the full name.

        ``ipv6=False`` disables IPv6 in the namespace before any interface exists, so that its hosts
        send no frame of their own (router solicitations, MLD, DAD) unless asked to."""
        if self._closed:
            raise RuntimeError("this Topology is closed")
        if not isinstance(short, str) or not _SHORT_RE.match(short):
            raise ValueError(f"namespace short name {short!r} must be 1..32 characters of [A-Za-z0-9_.-]")
        name = f"{self.prefix}{self.unique}-{short}"
        if name in self._namespaces:
            raise ValueError(f"namespace {name!r} already exists in this Topology")
        if os.path.exists(os.path.join("/run/netns", name)):
            raise RuntimeError(f"namespace {name!r} already exists and belongs to someone else")
        self._exec([self._ip, "netns", "add", name])
        self._namespaces.append(name)  # ours from here on, whatever happens next
        if not ipv6 and os.path.isdir("/proc/sys/net/ipv6"):
            self.run(name, _tool("sysctl"), "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                     "net.ipv6.conf.default.disable_ipv6=1")
        self._ipn(name, "link", "set", "lo", "up")
        return name

    def run(self, ns: str, *argv: str, check: bool = True, timeout: float = 30, env=None,
            input=None) -> subprocess.CompletedProcess:
        """Run ``ip netns exec NS argv...`` (text mode, output captured).

        With ``check`` a non-zero exit raises RuntimeError with one line naming the command and its
        stderr. A timeout always raises RuntimeError (the child is killed).
        """
        if not argv:
            raise ValueError("run() needs a command")
        return self._exec([self._ip, "netns", "exec", self._own(ns), *argv], check=check,
                          timeout=timeout, env=env, input=input)

    def spawn(self, ns: str, *argv: str, env=None, stdout=None, stderr=None) -> subprocess.Popen:
        """Start ``argv`` in the background inside ``ns`` (stdin from /dev/null, a session of its own).

        The process is tracked and ended by PID (its process group: SIGTERM, then SIGKILL) at close().
        ``stdout``/``stderr`` are as for Popen (None: inherited).
        """
        if not argv:
            raise ValueError("spawn() needs a command")
        cmd = [self._ip, "netns", "exec", self._own(ns), *[str(a) for a in argv]]
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                start_new_session=True)
        self._procs.append(proc)
        return proc

    # -- links -----------------------------------------------------------------------------------------

    def bridge(self, ns: str, name: str, stp: bool = False, mtu: int | None = None) -> None:
        """Create a Linux bridge and bring it up (STP off: forward_delay 0, ports forward at once)."""
        validate_ifname(name, "bridge name")
        mtu = _validate_mtu(mtu)
        args = ["link", "add", "name", name]
        if mtu is not None:
            args += ["mtu", str(mtu)]
        args += ["type", "bridge", "stp_state", "1" if stp else "0"]
        if not stp:
            args += ["forward_delay", "0"]
        self._ipn(ns, *args)
        self.set_up(ns, name)

    def veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str, mac_a: str | None = None,
             mac_b: str | None = None, mtu: int | None = None) -> None:
        """Create a veth pair ``name_a`` (in ns_a) <-> ``name_b`` (in ns_b), both ends up.

        The pair is created inside ns_a with its peer directly in ns_b: nothing passes through the
        root namespace.
        """
        validate_ifname(name_a)
        validate_ifname(name_b)
        self._own(ns_b)
        if ns_a == ns_b and name_a == name_b:
            raise ValueError(f"both ends of a veth in one namespace cannot be named {name_a!r}")
        mtu = _validate_mtu(mtu)
        args = ["link", "add", "name", name_a]
        if mac_a is not None:
            args += ["address", validate_mac(mac_a)]
        if mtu is not None:
            args += ["mtu", str(mtu)]
        args += ["type", "veth", "peer", "name", name_b]
        if mac_b is not None:
            args += ["address", validate_mac(mac_b)]
        if mtu is not None:
            args += ["mtu", str(mtu)]
        args += ["netns", ns_b]
        self._ipn(ns_a, *args)
        self.set_up(ns_a, name_a)
        self.set_up(ns_b, name_b)

    def enslave(self, ns: str, port: str, bridge: str) -> None:
        """Make ``port`` a port of ``bridge``."""
        self._ipn(ns, "link", "set", "dev", validate_ifname(port), "master",
                  validate_ifname(bridge, "bridge name"))

    def release(self, ns: str, port: str) -> None:
        """Take ``port`` out of its bridge."""
        self._ipn(ns, "link", "set", "dev", validate_ifname(port), "nomaster")

    def set_up(self, ns: str, dev: str, up: bool = True) -> None:
        """Set a link administratively up (or down)."""
        self._ipn(ns, "link", "set", "dev", validate_ifname(dev), "up" if up else "down")

    def addr(self, ns: str, dev: str, cidr: str) -> None:
        """Add an address (``203.0.113.10/24``; only the :data:`LAB_NETWORKS` are allowed)."""
        iface = _lab_interface(cidr)
        self._ipn(ns, "addr", "add", str(iface), "dev", validate_ifname(dev))

    def route(self, ns: str, dest: str, via: str) -> None:
        """Add (or replace) a route to ``dest`` ("default" or a lab network) via a lab address."""
        if dest != "default":
            try:
                net = ipaddress.ip_network(dest, strict=False)
            except ValueError:
                raise ValueError(f"route destination {dest!r} is neither 'default' nor a network") from None
            if not any(net.subnet_of(lab) for lab in LAB_NETWORKS if lab.version == net.version):
                raise ValueError(f"route destination {dest!r} is outside the lab networks")
            dest = str(net)
        gateway = _lab_address(via)
        self._ipn(ns, "route", "replace", dest, "via", str(gateway))

    def reflect_broadcasts(self, ns: str, dev: str) -> None:
        """Send every broadcast frame that arrives on ``dev`` straight back out of ``dev``, as a switch
        in front of a round-robin bond does (tc ingress, u32 match on ether dst ff:ff:ff:ff:ff:ff,
        action mirred egress mirror). The original frame goes on into the namespace as usual."""
        validate_ifname(dev)
        self._tc(ns, "qdisc", "add", "dev", dev, "ingress")
        self._tc(ns, "filter", "add", "dev", dev, "parent", "ffff:", "protocol", "all", "prio", "1",
                 "u32", "match", "ether", "dst", "ff:ff:ff:ff:ff:ff",
                 "action", "mirred", "egress", "mirror", "dev", dev)

    def stop_reflecting(self, ns: str, dev: str) -> None:
        """Undo :meth:`reflect_broadcasts` (removes the ingress qdisc of ``dev``)."""
        self._tc(ns, "qdisc", "del", "dev", validate_ifname(dev), "ingress")

    def reflected_packets(self, ns: str, dev: str) -> int:
        """How many frames the mirred actions on ``dev``'s ingress have sent back so far."""
        res = self._tc(ns, "-s", "-j", "filter", "show", "dev", validate_ifname(dev), "ingress")
        total = 0
        for flt in json.loads(res.stdout or "[]"):
            for act in (flt.get("options") or {}).get("actions") or []:
                if act.get("kind") == "mirred":
                    total += int((act.get("stats") or {}).get("packets", 0))
        return total

    # -- probes and kernel state -----------------------------------------------------------------------

    def ping(self, ns: str, ip: str, count: int = 1, timeout: float = 1.0, interval: float | None = None,
             min_replies: int = 1) -> bool:
        """Send ``count`` ICMP echo requests from ``ns`` to ``ip``; True if at least ``min_replies``
        were answered (default 1, like ping's exit status; ``min_replies=count``: all of them).

        Each request waits up to ``timeout`` seconds for its reply; requests are ``interval`` seconds
        apart (None: 1 s, ping's default). Uses an ICMP prober run with this Python in ``ns``, not
        iputils' ping, which is often missing.
        """
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise ValueError(f"{ip!r} is not an IP address") from None
        if addr.version != 4:
            raise ValueError(f"ping supports IPv4 only, not {ip!r}")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10000:
            raise ValueError(f"count {count!r} must be an integer in 1..10000")
        if not 0 < timeout <= 60:
            raise ValueError(f"timeout {timeout!r} must be in (0, 60] seconds")
        if interval is None:
            interval = 1.0
        if not 0 <= interval <= 60:
            raise ValueError(f"interval {interval!r} must be in [0, 60] seconds")
        if not 1 <= min_replies <= count:
            raise ValueError(f"min_replies {min_replies!r} must be in 1..count")
        budget = count * (max(interval, timeout) + 0.1) + 15
        res = self.run(ns, sys.executable, "-I", "-S", "-c", _PROBER, str(addr), str(count),
                       repr(float(timeout)), repr(float(interval)), timeout=budget)
        try:
            _sent, received = (int(x) for x in res.stdout.split())
        except ValueError:
            raise RuntimeError(f"ICMP prober in {ns}: unexpected output {res.stdout!r}") from None
        return received >= min_replies

    def fdb(self, ns: str, bridge: str) -> list[dict]:
        """``bridge -j fdb show br BRIDGE``, parsed: a list of dicts as iproute2 prints them
        (``mac``, ``ifname``, ``master``, ``state`` — "" for learned, "static", "permanent" —,
        ``flags`` such as ``["sticky"]``, ...)."""
        res = self._bridge_cmd(ns, "-j", "fdb", "show", "br", validate_ifname(bridge, "bridge name"))
        return json.loads(res.stdout or "[]")

    def fdb_ports(self, ns: str, bridge: str, mac: str) -> list[str]:
        """The ports of ``bridge`` whose forwarding entry (not a port's own ``self`` entry) holds ``mac``."""
        mac = validate_mac(mac)
        return [e.get("ifname", "") for e in self.fdb(ns, bridge)
                if e.get("mac", "").lower() == mac and "self" not in (e.get("flags") or [])
                and e.get("ifname") != bridge]

    def link(self, ns: str, dev: str) -> dict | None:
        """``ip -j -d link show dev DEV``, parsed; None if there is no such link."""
        res = self._ipn(ns, "-j", "-d", "link", "show", "dev", validate_ifname(dev), check=False)
        if res.returncode != 0:
            if "does not exist" in res.stderr or "Cannot find device" in res.stderr:
                return None
            raise RuntimeError(f"ip -n {ns} -j -d link show dev {dev} failed: {_one_line(res.stderr)}")
        links = json.loads(res.stdout or "[]")
        return links[0] if links else None

    def sysctl(self, ns: str, key: str, value=None) -> str:
        """Read (or write, then read back) a sysctl inside ``ns``; returns the value as text.

        Keys use dots or slashes (``net/ipv4/conf/eth0.10/forwarding`` for names with dots)."""
        if not isinstance(key, str) or not _SYSCTL_RE.match(key) or ".." in key.split("/") \
                or "//" in key:
            raise ValueError(f"sysctl key {key!r} is not valid")
        sysctl = _tool("sysctl")
        if value is not None:
            text = str(value)
            if "\n" in text or "\0" in text:
                raise ValueError(f"sysctl value {text!r} must be one line")
            self.run(ns, sysctl, "-q", "-w", f"{key}={text}")
        return self.run(ns, sysctl, "-n", key).stdout.strip()


# ----------------------------------------------------------------------------------------------------
# libvirt run-state XML


_LIBVIRT_HEADER = (
    "<!--\n"
    "WARNING: THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE LIKELY TO BE\n"
    "OVERWRITTEN AND LOST. Changes should be made using:\n"
    "  virsh edit {name}\n"
    "or other application using the libvirt API.\n"
    "-->\n\n"
)
_DOMAIN_STATES = {"nostate": "unknown", "running": "booted", "blocked": "unknown", "paused": "user",
                  "shutdown": "user", "shutoff": "shutdown", "crashed": "unknown",
                  "pmsuspended": "unknown"}
_NIC_KEYS = {"mac", "bridge", "tap", "network", "vlan", "link_state", "mtu", "model"}
_FORWARD_MODES = ("nat", "route", "open", "bridge", "private", "vepa", "passthrough", "hostdev")


def _stable_uuid(kind: str, name: str) -> str:
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"netmedic-lab:{kind}:{name}"))


def _write_xml(directory: str, name: str, root: ET.Element) -> str:
    ET.indent(root, space="  ")
    body = ET.tostring(root, encoding="unicode")
    safe = name if "--" not in name and not name.endswith("-") else "NAME"
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}.xml")
    tmp = path + ".new"  # libvirt rewrites its files the same way: write .new, then rename
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(_LIBVIRT_HEADER.format(name=safe) + body + "\n")
    os.replace(tmp, path)
    return path


def write_domain_xml(directory: str, name: str, nics: list[dict], uuid: str | None = None,
                     state: str = "running", domain_id: int = 1, pid: int | None = None) -> str:
    """Write ``<directory>/<name>.xml`` as libvirt keeps a running domain's state in
    ``/run/libvirt/qemu/NAME.xml`` (``<domstatus>`` around ``<domain type='kvm' id='N'>``).

    Each nic: ``{"mac", "bridge", "tap"}`` plus optional ``"network"`` (then ``type='network'`` with
    ``<source network='N' bridge='BR'/>``), ``"vlan"`` (tag or list of tags; several make a trunk),
    ``"link_state"`` ("up"/"down"), ``"mtu"``, ``"model"`` (default virtio). ``pid`` is the domstatus
    pid (default: this process, so that a liveness check sees a live process). Returns the path.
    """
    _validate_file_name(name, "domain name")
    if state not in _DOMAIN_STATES:
        raise ValueError(f"domain state {state!r} is not one of {', '.join(_DOMAIN_STATES)}")
    if isinstance(domain_id, bool) or not isinstance(domain_id, int):
        raise ValueError(f"domain_id {domain_id!r} must be an integer")
    uuid = str(uuidlib.UUID(uuid)) if uuid is not None else _stable_uuid("domain", name)
    status = ET.Element("domstatus", state=state, reason=_DOMAIN_STATES[state],
                        pid=str(os.getpid() if pid is None else int(pid)))
    ET.SubElement(status, "monitor", path=f"/var/lib/libvirt/qemu/domain-{domain_id}-{name}/monitor.sock",
                  type="unix")
    dom = ET.SubElement(status, "domain", type="kvm", id=str(domain_id))
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "uuid").text = uuid
    ET.SubElement(dom, "memory", unit="KiB").text = "131072"
    ET.SubElement(dom, "currentMemory", unit="KiB").text = "131072"
    ET.SubElement(dom, "vcpu", placement="static").text = "1"
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc-i440fx-7.2").text = "hvm"
    devices = ET.SubElement(dom, "devices")
    ET.SubElement(devices, "emulator").text = "/usr/bin/qemu-system-x86_64"
    for i, nic in enumerate(nics):
        if not isinstance(nic, dict):
            raise ValueError(f"nic #{i} must be a dict, not {type(nic).__name__}")
        unknown = set(nic) - _NIC_KEYS
        if unknown:
            raise ValueError(f"nic #{i}: unknown key(s) {', '.join(sorted(unknown))}")
        for key in ("mac", "bridge", "tap"):
            if key not in nic:
                raise ValueError(f"nic #{i}: missing key {key!r}")
        network = nic.get("network")
        iface = ET.SubElement(devices, "interface", type="network" if network else "bridge")
        ET.SubElement(iface, "mac", address=validate_mac(nic["mac"], f"nic #{i} mac"))
        bridge = validate_ifname(nic["bridge"], f"nic #{i} bridge")
        if network:
            _validate_file_name(network, f"nic #{i} network")
            ET.SubElement(iface, "source", network=network, bridge=bridge)
        else:
            ET.SubElement(iface, "source", bridge=bridge)
        vlan = nic.get("vlan")
        if vlan is not None:
            tags = [vlan] if isinstance(vlan, int) else list(vlan)
            if not tags or any(isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= 4094
                               for t in tags):
                raise ValueError(f"nic #{i}: vlan {vlan!r} must be a tag or a list of tags in 1..4094")
            vlan_el = ET.SubElement(iface, "vlan", trunk="yes") if len(tags) > 1 \
                else ET.SubElement(iface, "vlan")
            for tag in tags:
                ET.SubElement(vlan_el, "tag", id=str(tag))
        ET.SubElement(iface, "target", dev=validate_ifname(nic["tap"], f"nic #{i} tap"))
        model = nic.get("model", "virtio")
        if not isinstance(model, str) or not re.match(r"^[A-Za-z0-9_-]{1,32}$", model):
            raise ValueError(f"nic #{i}: model {model!r} is not valid")
        ET.SubElement(iface, "model", type=model)
        link_state = nic.get("link_state")
        if link_state is not None:
            if link_state not in ("up", "down"):
                raise ValueError(f"nic #{i}: link_state {link_state!r} must be 'up' or 'down'")
            ET.SubElement(iface, "link", state=link_state)
        if nic.get("mtu") is not None:
            ET.SubElement(iface, "mtu", size=str(_validate_mtu(nic["mtu"])))
        ET.SubElement(iface, "alias", name=f"net{i}")
    return _write_xml(directory, name, status)


def write_network_xml(directory: str, name: str, bridge: str, forward_mode: str | None = "nat",
                      ip: str | None = None, netmask: str | None = None, forward_dev: str | None = None,
                      uuid: str | None = None) -> str:
    """Write ``<directory>/<name>.xml`` as libvirt keeps an active network's state in
    ``/run/libvirt/network/NAME.xml`` (``<networkstatus><network>...``). ``forward_mode`` None makes an
    isolated network (no ``<forward>``). Returns the path."""
    _validate_file_name(name, "network name")
    validate_ifname(bridge, "bridge name")
    if forward_mode is not None and forward_mode not in _FORWARD_MODES:
        raise ValueError(f"forward mode {forward_mode!r} is not one of {', '.join(_FORWARD_MODES)}")
    if forward_dev is not None:
        validate_ifname(forward_dev, "forward dev")
    if netmask is not None and ip is None:
        raise ValueError("netmask given without ip")
    if ip is not None:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ValueError(f"network ip {ip!r} is not an IP address") from None
    if netmask is not None:
        try:
            ipaddress.IPv4Network(f"0.0.0.0/{netmask}")
        except ValueError:
            raise ValueError(f"netmask {netmask!r} is not a dotted IPv4 netmask") from None
    uuid = str(uuidlib.UUID(uuid)) if uuid is not None else _stable_uuid("network", name)
    status = ET.Element("networkstatus")
    ET.SubElement(status, "class_id", bitmap="1-2")
    ET.SubElement(status, "floor", sum="0")
    net = ET.SubElement(status, "network")
    ET.SubElement(net, "name").text = name
    ET.SubElement(net, "uuid").text = uuid
    if forward_mode is not None:
        fwd = ET.SubElement(net, "forward", mode=forward_mode)
        if forward_dev is not None:
            fwd.set("dev", forward_dev)
            ET.SubElement(fwd, "interface", dev=forward_dev)
        if forward_mode == "nat":
            nat = ET.SubElement(fwd, "nat")
            ET.SubElement(nat, "port", start="1024", end="65535")
    if forward_mode in ("bridge", "private", "vepa", "passthrough", "hostdev"):
        ET.SubElement(net, "bridge", name=bridge)  # an existing bridge, not managed by libvirt
    else:
        ET.SubElement(net, "bridge", name=bridge, stp="on", delay="0")
    if ip is not None:
        ip_el = ET.SubElement(net, "ip", address=ip)
        if netmask is not None:
            ip_el.set("netmask", netmask)
    return _write_xml(directory, name, status)


# ----------------------------------------------------------------------------------------------------
# The seed case


@dataclasses.dataclass
class SeedLab:
    """The seed case, built by :func:`build_seed_case`. Field names are namespace names, except where
    told. Closing the Topology removes the namespaces and the two XML directories."""

    topo: Topology
    host: str
    vm: str
    switch: str
    gw: str
    domain_xml_dir: str  # owned by the lab, removed at close
    network_xml_dir: str  # owned by the lab, removed at close
    bridge: str = "br0"
    tap: str = "vnet0"
    uplink: str = "uplink0"
    vm_mac: str = "52:54:00:12:34:56"
    vm_ip: str = "203.0.113.10"
    gw_ip: str = "203.0.113.1"
    domain: str = "seedvm"
    switch_port: str = "sw0"  # the switch's end of the uplink, where broadcasts are reflected
    uplink_mac: str = "02:00:5e:00:53:01"  # the host's uplink0 (RFC 7042 documentation range, local bit)

    @property
    def tap_mac(self) -> str:
        return tap_mac_for(self.vm_mac)

    def vm_mac_ports(self) -> list[str]:
        """Ports of the host bridge where its fdb has the VM's MAC (normally exactly one)."""
        return self.topo.fdb_ports(self.host, self.bridge, self.vm_mac)

    def vm_reaches_gateway(self, count: int = 1, timeout: float = 0.5, interval: float = 0.1,
                           all_replies: bool = True) -> bool:
        """Ping the gateway from the VM (all ``count`` answered, unless ``all_replies`` is False)."""
        return self.topo.ping(self.vm, self.gw_ip, count=count, timeout=timeout, interval=interval,
                              min_replies=count if all_replies else 1)

    def forget_gateway(self) -> None:
        """Flush the VM's neighbour table, so that its next packet starts with an ARP broadcast."""
        self.topo.run(self.vm, _tool("ip"), "neigh", "flush", "dev", "eth0")

    def poison(self, timeout: float = 3.0) -> float:
        """Make the VM send broadcasts (ARP for the gateway) until the host bridge has learned the
        VM's MAC on the uplink; returns the seconds it took. RuntimeError if it did not happen."""
        start = time.monotonic()
        while True:
            self.forget_gateway()
            self.topo.ping(self.vm, self.gw_ip, count=1, timeout=0.05)
            if self.uplink in self.vm_mac_ports():
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"the VM's MAC was not learned on {self.uplink} within {timeout:g} s "
                                   f"(fdb ports: {self.vm_mac_ports()})")

    def pin(self) -> None:
        """The fix netmedic automates: pin the VM's MAC to its tap as ``static sticky``."""
        self.topo.run(self.host, _tool("bridge"), "fdb", "replace", self.vm_mac, "dev", self.tap,
                      "master", "static", "sticky")

    def close(self) -> None:
        self.topo.close()


def _lab_dir(path: str) -> str:
    """Create ``path`` (or adopt it if it exists and is empty); refuse a non-empty one."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        if not os.path.isdir(path) or os.listdir(path):
            raise ValueError(f"{path} exists and is not an empty directory: give the lab a fresh workdir") \
                from None
    return path


def build_seed_case(topo: Topology, workdir: str, reflect: bool = True, ipv6: bool = False) -> SeedLab:
    """Build the seed case in four new namespaces of ``topo`` and return it.

    ``host``: bridge ``br0`` (STP off) with two ports: the "tap" ``vnet0`` (host end of a veth whose
    other end is ``eth0`` in ``vm``, with the guest MAC and 203.0.113.10/24; ``vnet0`` carries the
    guest MAC with first octet 0xfe, like a libvirt tap — a real tap is a tun/tap device, here it is a
    veth) and the uplink ``uplink0`` (veth to ``sw0`` in ``sw``). ``sw``: bridge ``swbr`` with ``sw0``
    and ``swgw`` (veth to ``eth0`` in ``gw``, 203.0.113.1/24). With ``reflect``, ``sw0`` sends every
    broadcast it receives back to the host (tc mirred), like a switch in front of a round-robin bond.

    Writes the libvirt run-state XML of domain ``seedvm`` (tap vnet0 on br0) into
    ``workdir/domains`` and creates ``workdir/networks`` (empty); both are removed when ``topo`` closes.

    IPv6 is off in the four namespaces unless ``ipv6``: the guest then sends nothing until asked, so
    its MAC is absent from the fdb until its first frame (as at libvirt's hook phases), and no
    stray IPv6 frame can re-teach the bridge the right port in the middle of an experiment.
    """
    os.makedirs(workdir, exist_ok=True)
    domains = os.path.join(os.path.abspath(workdir), "domains")
    networks = os.path.join(os.path.abspath(workdir), "networks")
    _lab_dir(domains)
    topo.add_cleanup(lambda: shutil.rmtree(domains, ignore_errors=True))
    _lab_dir(networks)
    topo.add_cleanup(lambda: shutil.rmtree(networks, ignore_errors=True))

    host, vm, switch, gw = (topo.netns(s, ipv6=ipv6) for s in ("host", "vm", "sw", "gw"))
    lab = SeedLab(topo=topo, host=host, vm=vm, switch=switch, gw=gw, domain_xml_dir=domains,
                  network_xml_dir=networks)
    topo.bridge(host, lab.bridge, stp=False)
    topo.veth(host, lab.tap, vm, "eth0", mac_a=lab.tap_mac, mac_b=lab.vm_mac)
    topo.enslave(host, lab.tap, lab.bridge)
    # A fixed uplink MAC below the tap's, as a NIC's burned-in address is: a random veth MAC above
    # fe:54:... would make the bridge take the tap's MAC (a real drift, bridge_mac's) in ~1% of labs.
    topo.veth(host, lab.uplink, switch, lab.switch_port, mac_a=lab.uplink_mac)
    topo.enslave(host, lab.uplink, lab.bridge)
    topo.bridge(switch, "swbr", stp=False)
    topo.enslave(switch, lab.switch_port, "swbr")
    topo.veth(switch, "swgw", gw, "eth0")
    topo.enslave(switch, "swgw", "swbr")
    topo.addr(vm, "eth0", f"{lab.vm_ip}/24")
    topo.route(vm, "default", lab.gw_ip)
    topo.addr(gw, "eth0", f"{lab.gw_ip}/24")
    if reflect:
        topo.reflect_broadcasts(switch, lab.switch_port)
    write_domain_xml(domains, lab.domain, [{"mac": lab.vm_mac, "bridge": lab.bridge, "tap": lab.tap}])
    return lab

