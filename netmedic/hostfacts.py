"""Host facts beyond links and the fdb, read only when an enabled invariant (or `diagnose`) needs them:
the NAT table's MASQUERADE rules, a libvirt network's dnsmasq, DHCP leases and the neighbour table.
Reads only; every reader is best effort (a missing tool or file means "no information", never an
exception) and acts in the network namespace the process runs in.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import time
from typing import Optional

from netmedic import ops
from netmedic.facts import Dnsmasq, NatRule, masquerades  # noqa: F401  (re-exported)
from netmedic.settings import DEFAULT_LEASES_DIR


def _net(text: str) -> Optional[str]:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        return None


def parse_iptables_nat(backend: str, text: str) -> list:
    """MASQUERADE rules from `iptables -t nat -S` output."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if words[:1] != ["-A"] or "MASQUERADE" not in words:
            continue
        src = dst = None
        for i, w in enumerate(words[:-1]):
            if w in ("-s", "--source"):
                src = _net(words[i + 1])
            elif w in ("-d", "--destination") and i > 0 and words[i - 1] == "!":
                dst = _net(words[i + 1])
        out.append(NatRule(backend, line.strip(), src, dst))
    return out


def parse_nft_nat(text: str) -> list:
    """masquerade rules from `nft list table ip libvirt_network` (libvirt >= 10 native nftables)."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if "masquerade" not in words:
            continue
        src = dst = None
        for i, w in enumerate(words[:-1]):
            if w == "saddr":
                src = _net(words[i + 1])
            elif w == "daddr" and i + 2 < len(words) and words[i + 1] == "!=":
                dst = _net(words[i + 2])
        out.append(NatRule("nft-native", line.strip(), src, dst))
    return out


def _run(argv: list, timeout: float = 10) -> Optional[str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _legacy_nat_loaded() -> bool:
    """Listing legacy iptables instantiates its table: look before touching."""
    try:
        with open("/proc/net/ip_tables_names") as fh:
            return "nat" in fh.read().split()
    except OSError:
        return False


def read_nat_rules() -> list:
    """Every masquerade rule: nf_tables' (iptables-nft's nat table, libvirt's own nftables table, any
    other table; from the generation-keyed read of netmedic.firewall), and iptables-legacy's where its
    nat table is loaded. Without python3-nftables: `iptables-nft -t nat -S` and `nft list table ip
    libvirt_network`, as before."""
    from netmedic import firewall

    rules: list = []
    fw = firewall.read(legacy=False)  # nf_tables, iptables-nft's nat table included: cached by generation
    if fw.error is None:
        rules.extend(fw.nat_rules)
    for backend in ("nft", "legacy"):
        if backend == "nft" and fw.error is None:
            continue  # already in fw.nat_rules
        if backend == "legacy" and not _legacy_nat_loaded():
            continue
        binary = ops._iptables_binary(backend)
        if binary is None:
            continue
        text = _run([binary, "-w", "5", "-t", "nat", "-S"])
        if text:
            rules.extend(parse_iptables_nat(backend, text))
    nft = shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None)
    if nft and fw.error is not None:
        text = _run([nft, "list", "table", "ip", "libvirt_network"])
        if text:
            rules.extend(parse_nft_nat(text))
    return rules


def _netns_inode(pid: str) -> Optional[int]:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def read_dnsmasq(network: str, pid_dir: str) -> Dnsmasq:
    """libvirt's dnsmasq of one network: `PID_DIR/NAME.pid` (libvirt keeps it beside the network's
    run-state XML), the process alive, named dnsmasq, and in this network namespace."""
    pid_file = os.path.join(pid_dir, f"{network}.pid")
    try:
        with open(pid_file) as fh:
            pid = int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return Dnsmasq(network, pid_file, None, False, False)
    try:
        with open(f"/proc/{pid}/comm") as fh:
            comm = fh.read().strip()
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return Dnsmasq(network, pid_file, pid, False, False)
    alive = comm == "dnsmasq"
    same: Optional[bool] = False
    if alive:
        theirs, mine = _netns_inode(str(pid)), _netns_inode("self")
        same = None if theirs is None or mine is None else theirs == mine
    return Dnsmasq(network, pid_file, pid, alive, same, cmdline[:300])


# --- the VM's IP address ---------------------------------------------------------------------------
def leases(mac: str, leases_dir: str = DEFAULT_LEASES_DIR, now: Optional[float] = None) -> list:
    """Unexpired DHCP leases of MAC from libvirt's `*.status` files (JSON lists written by
    libvirt_leaseshelper: ip-address, mac-address, hostname, expiry-time). [(ip, file, hostname)]"""
    now = time.time() if now is None else now
    out = []
    try:
        names = sorted(os.listdir(leases_dir))
    except OSError:
        return out
    for name in names:
        if not name.endswith(".status"):
            continue
        path = os.path.join(leases_dir, name)
        try:
            with open(path) as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            continue
        if not isinstance(data, list):
            continue
        for lease in data:
            if not isinstance(lease, dict) or str(lease.get("mac-address", "")).lower() != mac:
                continue
            expiry = lease.get("expiry-time")
            try:
                if expiry is not None and int(expiry) and int(expiry) < now:
                    continue
            except (TypeError, ValueError):
                pass
            ip = lease.get("ip-address")
            if ip:
                out.append((str(ip), path, lease.get("hostname")))
    return out


def neighbours(mac: str, arp_file: str = "/proc/net/arp") -> list:
    """IPv4 neighbour entries of this namespace with MAC: [(ip, device)] (complete entries only)."""
    out = []
    try:
        with open(arp_file) as fh:
            lines = fh.read().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        f = line.split()
        # IP address, HW type, Flags, HW address, Mask, Device
        if len(f) >= 6 and f[3].lower() == mac and int(f[2], 16) & 0x2:  # ATF_COM
            out.append((f[0], f[5]))
    return out
