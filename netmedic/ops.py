"""The thin layer through which every host mutation (and the few non-netlink reads) goes.

Netlink through netmedic.nl (pyroute2); sysctls through /proc/sys of the current network namespace;
the iptables FORWARD chain through the iptables binaries with argv lists (no shell); netmedic's own
nf_tables table (the reflection guard) through libnftables' JSON API (netmedic.nftguard). A HostOps built
with dry_run=True refuses every mutation, so a bug above cannot change the host in dry-run.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from typing import Optional

from netmedic import nl
from netmedic.errors import DependencyError, HostError, InputError
from netmedic.facts import ForwardChain, bridge_accept_rule, literal_ifname  # noqa: F401  (re-exported)
from netmedic.model import Step

PROC_SYS = "/proc/sys"


def sysctl_key(*parts: str) -> str:
    """Sysctl keys are slash-joined path components, so interface names with dots stay unambiguous."""
    return "/".join(parts)


def read_sysctl(key: str) -> Optional[str]:
    try:
        with open(os.path.join(PROC_SYS, key)) as fh:
            return fh.read().strip()
    except OSError:
        return None


IPTABLES = {"nft": ("iptables-nft", "iptables"), "legacy": ("iptables-legacy",)}


def _iptables_binary(backend: str) -> Optional[str]:
    for name in IPTABLES[backend]:
        path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}")
                                           if os.access(p, os.X_OK)), None)
        if path:
            if backend == "nft" and name == "iptables":
                try:
                    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=5).stdout
                except (OSError, subprocess.TimeoutExpired):
                    continue
                if "legacy" in out:
                    continue
            return path
    return None


def _legacy_filter_loaded() -> bool:
    """Listing legacy iptables would instantiate its filter table: look before touching."""
    try:
        with open("/proc/net/ip_tables_names") as fh:
            return "filter" in fh.read().split()
    except OSError:
        return False


def read_forward_chains(backends=("nft", "legacy")) -> list:
    """The FORWARD chain of each iptables backend in use in this network namespace."""
    chains = []
    for backend in backends:
        if backend == "legacy" and not _legacy_filter_loaded():
            continue
        binary = _iptables_binary(backend)
        if binary is None:
            continue
        try:
            proc = subprocess.run([binary, "-w", "5", "-S", "FORWARD"], capture_output=True, text=True,
                                  timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if proc.returncode != 0:
            continue
        policy, rules = "ACCEPT", []
        for line in proc.stdout.splitlines():
            words = line.split()
            if words[:2] == ["-P", "FORWARD"] and len(words) >= 3:
                policy = words[2]
            elif words[:2] == ["-A", "FORWARD"]:
                rules.append(line.strip())
        chains.append(ForwardChain(backend=backend, policy=policy, rules=tuple(rules)))
    return chains


def unsafe_ifname(name: str) -> Optional[str]:
    """Why an interface name must not go into a firewall rule (None: it may). Linux allows `br+` or
    `vm*` as names, but iptables reads `br+` as every interface starting with br (and a bare `+` as
    every interface: netmedic's ACCEPT would become unconditional) and nft reads `*` as a wildcard."""
    if literal_ifname(name):
        return None
    return (f"interface name {name!r} would be read by iptables/nft as a pattern: no firewall rule is "
            "made for it")


class HostOps:
    """Executes Steps. Owns one netlink connection."""

    def __init__(self, netlink: Optional[nl.Netlink] = None, dry_run: bool = False):
        self.dry_run = dry_run
        self._nl = netlink

    @property
    def nl(self) -> nl.Netlink:
        if self._nl is None:
            self._nl = nl.Netlink()
        return self._nl

    def close(self) -> None:
        if self._nl is not None:
            self._nl.close()
            self._nl = None

    def _index(self, args: dict, key: str = "port") -> int:
        """The ifindex of args[key], checked against the name (an interface renamed/recreated since
        the plan was made must not be acted on)."""
        name, index = args[key], args.get(f"{key}_index")
        link = self.nl.link(index if index else name)
        if link is None or link.name != name:
            raise HostError(f"{name} (ifindex {index}) no longer exists as planned")
        return link.index

    def execute(self, step: Step) -> None:
        if self.dry_run:
            raise HostError(f"dry-run: refusing to {step.description}")
        a = step.args
        op = step.op
        if op == "fdb_pin":
            self.nl.fdb_pin(self._index(a), a["mac"], a.get("vlan"))
        elif op == "fdb_delete":
            self.nl.fdb_delete(self._index(a), a["mac"], a.get("vlan"))
        elif op == "set_master":
            master = self._index(a, "bridge") if a.get("bridge") else 0
            self.nl.set_master(self._index(a), master)
        elif op == "set_up":
            self.nl.set_up(self._index(a), a["up"])
        elif op == "set_mtu":
            self.nl.set_mtu(self._index(a), a["mtu"])
        elif op == "vlan_add":
            self.nl.vlan_add(self._index(a), a["vid"], pvid=a.get("pvid", False), untagged=a.get("untagged", False))
        elif op == "vlan_delete":
            self.nl.vlan_delete(self._index(a), a["vid"])
        elif op == "set_port":
            self.nl.set_port(self._index(a), state=a.get("state"), learning=a.get("learning"),
                             flood=a.get("flood"))
        elif op == "set_bridge":
            self.nl.set_bridge(self._index(a, "bridge"), nf_call_iptables=a.get("nf_call_iptables"),
                               stp_state=a.get("stp_state"), forward_delay=a.get("forward_delay"))
        elif op == "set_address":
            self.nl.set_address(self._index(a, "bridge" if "bridge" in a else "port"), a["mac"])
        elif op == "signal":
            self._signal(a["pid"], a["comm"], a["signal"])
        elif op == "sysctl":
            self._write_sysctl(a["key"], a["value"])
        elif op == "iptables":
            self._iptables(a["backend"], a["args"])
        elif op in ("nft_insert_accept", "nft_delete_accept"):
            from netmedic import firewall

            fn = firewall.insert_accept if op == "nft_insert_accept" else firewall.delete_accept
            fn(a["family"], a["table"], a["chain"], a["bridge"])
        elif op == "guard_add":
            from netmedic import nftguard
            nftguard.add(a["bridge"], a["mac"], a["port"], stale_tap=a.get("stale_port"))
        elif op == "guard_remove":
            from netmedic import nftguard
            nftguard.remove(a["bridge"], a["mac"], a["port"])
        else:
            raise HostError(f"unknown operation {op!r}")

    @staticmethod
    def _signal(pid: int, comm: str, name: str) -> None:
        """Send a signal to a daemon, only if that pid still runs that program (a pid reused since the
        plan was made is never signalled). Only SIGHUP (reload) is allowed."""
        if name != "HUP":
            raise HostError(f"refusing to send SIG{name}: only SIGHUP (reload) is allowed")
        try:
            with open(f"/proc/{int(pid)}/comm") as fh:
                now = fh.read().strip()
        except OSError:
            raise HostError(f"{comm} (pid {pid}) is no longer running") from None
        if now != comm:
            raise HostError(f"pid {pid} is {now!r} now, not {comm}: not signalled")
        try:
            os.kill(int(pid), signal.SIGHUP)
        except OSError as exc:
            raise HostError(f"SIGHUP to {comm} (pid {pid}): {exc.strerror}") from None

    @staticmethod
    def _write_sysctl(key: str, value: str) -> None:
        path = os.path.join(PROC_SYS, key)
        if ".." in key.split("/"):
            raise HostError(f"refusing sysctl path {key!r}")
        try:
            with open(path, "w") as fh:
                fh.write(str(value))
        except OSError as exc:
            raise HostError(f"write {value} to {path}: {exc.strerror}") from None

    @staticmethod
    def _iptables(backend: str, args: list) -> None:
        for flag, value in zip(args, args[1:]):  # the last guard: no pattern ever reaches a rule
            if flag in ("-i", "-o", "--in-interface", "--out-interface"):
                why = unsafe_ifname(value)
                if why:
                    raise InputError(why)
        binary = _iptables_binary(backend)
        if binary is None:
            raise DependencyError(f"iptables for the {backend} backend is not installed")
        proc = subprocess.run([binary, "-w", "5", *args], capture_output=True, text=True, timeout=15)
        if proc.returncode != 0:
            raise HostError(f"{os.path.basename(binary)} {' '.join(args)}: "
                            f"{(proc.stderr.strip().splitlines() or ['failed'])[-1]}")
