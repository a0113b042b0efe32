"""Topology: a set of network namespaces and what was built in them (bridges, veths, addresses, tc
reflection, processes), torn down as a whole. See netmedic.lab for the rules every lab follows.
"""
from __future__ import annotations

import atexit
import ipaddress
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import warnings
from typing import Callable, Sequence

from netmedic.lab.prober import PROBER
from netmedic.lab.validate import (
    _PREFIX_RE,
    _SHORT_RE,
    _SYSCTL_RE,
    LAB_NETWORKS,
    _lab_address,
    _lab_interface,
    _one_line,
    _validate_mtu,
    tool,
    validate_ifname,
    validate_mac,
)

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
        self._ip = tool("ip")
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
            self.stop_process(proc, errors)
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
    def stop_process(proc: subprocess.Popen, errors: list[str]) -> None:
        """End ``proc`` (started in a session of its own) by its process group: SIGTERM, then SIGKILL;
        what failed is appended to ``errors``."""
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

    def own(self, ns: str) -> str:
        """``ns`` if it is a namespace of this open Topology, else ValueError/RuntimeError."""
        if self._closed:
            raise RuntimeError("this Topology is closed")
        if ns not in self._namespaces:
            raise ValueError(f"{ns!r} is not a namespace of this Topology (create it with netns())")
        return ns

    def execute(self, argv: Sequence[str], check: bool = True, timeout: float = 30, env=None,
                input=None) -> subprocess.CompletedProcess:
        """Run ``argv`` (no shell; text output captured); with ``check`` a failure raises RuntimeError
        with one line naming the command and its stderr. The caller names the namespace (``own()``)."""
        argv = [str(a) for a in argv]
        try:
            res = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout,
                                 env=env, input=input,
                                 stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{' '.join(map(shlex.quote, argv))}: timed out after {timeout:g} s") from None
        except OSError as err:
            raise RuntimeError(f"{' '.join(map(shlex.quote, argv))}: {err}") from None
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(map(shlex.quote, argv))} failed (exit {res.returncode}): {_one_line(res.stderr)}")
        return res

    def ip(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``ip -n NS args...``"""
        return self.execute([self._ip, "-n", self.own(ns), *args], check=check)

    def tc(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``tc -n NS args...``"""
        return self.execute([tool("tc"), "-n", self.own(ns), *args], check=check)

    def bridge_cmd(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``bridge -n NS args...``"""
        return self.execute([tool("bridge"), "-n", self.own(ns), *args], check=check)

    # The names these had in netmedic.labnet, kept until the branches written against it are merged.
    _own, _exec, _ipn, _tc, _bridge_cmd, _stop_process = own, execute, ip, tc, bridge_cmd, stop_process

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
        self.execute([self._ip, "netns", "add", name])
        self._namespaces.append(name)  # ours from here on, whatever happens next
        if not ipv6 and os.path.isdir("/proc/sys/net/ipv6"):
            self.run(name, tool("sysctl"), "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                     "net.ipv6.conf.default.disable_ipv6=1")
        self.ip(name, "link", "set", "lo", "up")
        return name

    def run(self, ns: str, *argv: str, check: bool = True, timeout: float = 30, env=None,
            input=None) -> subprocess.CompletedProcess:
        """Run ``ip netns exec NS argv...`` (text mode, output captured).

        With ``check`` a non-zero exit raises RuntimeError with one line naming the command and its
        stderr. A timeout always raises RuntimeError (the child is killed).
        """
        if not argv:
            raise ValueError("run() needs a command")
        return self.execute([self._ip, "netns", "exec", self.own(ns), *argv], check=check,
                          timeout=timeout, env=env, input=input)

    def spawn(self, ns: str, *argv: str, env=None, stdout=None, stderr=None) -> subprocess.Popen:
        """Start ``argv`` in the background inside ``ns`` (stdin from /dev/null, a session of its own).

        The process is tracked and ended by PID (its process group: SIGTERM, then SIGKILL) at close().
        ``stdout``/``stderr`` are as for Popen (None: inherited).
        """
        if not argv:
            raise ValueError("spawn() needs a command")
        cmd = [self._ip, "netns", "exec", self.own(ns), *[str(a) for a in argv]]
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
        self.ip(ns, *args)
        self.set_up(ns, name)

    def veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str, mac_a: str | None = None,
             mac_b: str | None = None, mtu: int | None = None) -> None:
        """Create a veth pair ``name_a`` (in ns_a) <-> ``name_b`` (in ns_b), both ends up.

        The pair is created inside ns_a with its peer directly in ns_b: nothing passes through the
        root namespace.
        """
        validate_ifname(name_a)
        validate_ifname(name_b)
        self.own(ns_b)
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
        self.ip(ns_a, *args)
        self.set_up(ns_a, name_a)
        self.set_up(ns_b, name_b)

    def enslave(self, ns: str, port: str, bridge: str) -> None:
        """Make ``port`` a port of ``bridge``."""
        self.ip(ns, "link", "set", "dev", validate_ifname(port), "master",
                  validate_ifname(bridge, "bridge name"))

    def release(self, ns: str, port: str) -> None:
        """Take ``port`` out of its bridge."""
        self.ip(ns, "link", "set", "dev", validate_ifname(port), "nomaster")

    def set_up(self, ns: str, dev: str, up: bool = True) -> None:
        """Set a link administratively up (or down)."""
        self.ip(ns, "link", "set", "dev", validate_ifname(dev), "up" if up else "down")

    def addr(self, ns: str, dev: str, cidr: str) -> None:
        """Add an address (``203.0.113.10/24``; only the :data:`LAB_NETWORKS` are allowed)."""
        iface = _lab_interface(cidr)
        self.ip(ns, "addr", "add", str(iface), "dev", validate_ifname(dev))

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
        self.ip(ns, "route", "replace", dest, "via", str(gateway))

    def reflect_broadcasts(self, ns: str, dev: str) -> None:
        """Send every broadcast frame that arrives on ``dev`` straight back out of ``dev``, as a switch
        in front of a round-robin bond does (tc ingress, u32 match on ether dst ff:ff:ff:ff:ff:ff,
        action mirred egress mirror). The original frame goes on into the namespace as usual."""
        validate_ifname(dev)
        self.tc(ns, "qdisc", "add", "dev", dev, "ingress")
        self.tc(ns, "filter", "add", "dev", dev, "parent", "ffff:", "protocol", "all", "prio", "1",
                 "u32", "match", "ether", "dst", "ff:ff:ff:ff:ff:ff",
                 "action", "mirred", "egress", "mirror", "dev", dev)

    def stop_reflecting(self, ns: str, dev: str) -> None:
        """Undo :meth:`reflect_broadcasts` (removes the ingress qdisc of ``dev``)."""
        self.tc(ns, "qdisc", "del", "dev", validate_ifname(dev), "ingress")

    def reflected_packets(self, ns: str, dev: str) -> int:
        """How many frames the mirred actions on ``dev``'s ingress have sent back so far."""
        res = self.tc(ns, "-s", "-j", "filter", "show", "dev", validate_ifname(dev), "ingress")
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
        res = self.run(ns, sys.executable, "-I", "-S", "-c", PROBER, str(addr), str(count),
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
        res = self.bridge_cmd(ns, "-j", "fdb", "show", "br", validate_ifname(bridge, "bridge name"))
        return json.loads(res.stdout or "[]")

    def fdb_ports(self, ns: str, bridge: str, mac: str) -> list[str]:
        """The ports of ``bridge`` whose forwarding entry (not a port's own ``self`` entry) holds ``mac``."""
        mac = validate_mac(mac)
        return [e.get("ifname", "") for e in self.fdb(ns, bridge)
                if e.get("mac", "").lower() == mac and "self" not in (e.get("flags") or [])
                and e.get("ifname") != bridge]

    def link(self, ns: str, dev: str) -> dict | None:
        """``ip -j -d link show dev DEV``, parsed; None if there is no such link."""
        res = self.ip(ns, "-j", "-d", "link", "show", "dev", validate_ifname(dev), check=False)
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
        sysctl = tool("sysctl")
        if value is not None:
            text = str(value)
            if "\n" in text or "\0" in text:
                raise ValueError(f"sysctl value {text!r} must be one line")
            self.run(ns, sysctl, "-q", "-w", f"{key}={text}")
        return self.run(ns, sysctl, "-n", key).stdout.strip()
