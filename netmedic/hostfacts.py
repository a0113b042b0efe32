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


def _reachable_chains(lines: list, start: str = "POSTROUTING") -> set:
    """The chains a packet can reach from `start` through -j/-g jumps (a rule in a chain nothing jumps
    to never applies: `iptables -F` keeps libvirt's LIBVIRT_PRT chain and its rules come back on a
    reload, but the jump from POSTROUTING does not)."""
    edges: dict = {}
    for words in lines:
        if words[:1] == ["-A"] and len(words) > 1:
            for i, w in enumerate(words[:-1]):
                if w in ("-j", "--jump", "-g", "--goto"):
                    edges.setdefault(words[1], set()).add(words[i + 1])
    seen, todo = {start}, [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def parse_iptables_nat(backend: str, text: str) -> list:
    """MASQUERADE rules from `iptables -t nat -S` output, in chains reachable from POSTROUTING."""
    out = []
    lines = [line.split() for line in text.splitlines()]
    reachable = _reachable_chains(lines)
    for line in text.splitlines():
        words = line.split()
        if words[:1] != ["-A"] or "MASQUERADE" not in words or words[1] not in reachable:
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


# --- bridges' address assignment, conntrack, the kernel log (issue 16) -----------------------------
SYS_CLASS_NET = "/sys/class/net"


def read_addr_assign_type(ifname: str, sys_class_net: str = SYS_CLASS_NET) -> Optional[int]:
    """The link's addr_assign_type (0 permanent, 1 random, 2 stolen, 3 set by userspace); None when
    unreadable. A bridge whose address was never set follows its lowest port MAC (not 3)."""
    if not ifname or "/" in ifname or ifname in (".", ".."):
        return None
    try:
        with open(os.path.join(sys_class_net, ifname, "addr_assign_type")) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def _writable(key: str) -> bool:
    """Is this sysctl writable here? (In a child network namespace conntrack's max and buckets are
    read-only: the table size is the host's, set in the initial namespace.)"""
    try:
        return bool(os.stat(os.path.join(ops.PROC_SYS, key)).st_mode & 0o200)
    except OSError:
        return False


def read_conntrack() -> Optional[dict]:
    """nf_conntrack's table use: count (this namespace's entries), max, buckets, and whether max and
    buckets can be written here. None when conntrack is not loaded."""
    keys = {k: f"net/netfilter/nf_conntrack_{k}" for k in ("count", "max", "buckets")}
    vals = {k: ops.read_sysctl(v) for k, v in keys.items()}
    try:
        out = {k: int(v) for k, v in vals.items() if v is not None}
    except ValueError:
        return None
    if "count" not in out or "max" not in out:
        return None
    out["max_writable"] = _writable(keys["max"])
    out["buckets_writable"] = _writable(keys["buckets"])
    return out


def read_kernel_events(window: float = 600.0, path: Optional[str] = None, now: Optional[float] = None) -> list:
    """The kernel-log lines netmedic knows (netmedic.kmsg.PATTERNS) logged within the last `window`
    seconds, read from the start of the kernel's ring buffer (/dev/kmsg, non-blocking): a list of
    kmsg.KernelEvent, oldest first. Empty when the log is unreadable."""
    from netmedic import kmsg

    return kmsg.recent(window, path=path, now=now)


LIBVIRT_NETWORK_DAEMONS = ("virtnetworkd", "libvirtd")  # modular daemon first, then the monolithic one
LIBVIRT_NAT_CHAIN = "LIBVIRT_PRT"  # libvirt's (< 10.4, iptables backend) nat chain, jumped to from POSTROUTING


def read_libvirt_firewall(chains: bool = True) -> dict:
    """What the libvirt_reload healer must know: the daemons that own the networks' rules (name -> pid,
    in this network namespace), and with `chains` the state of libvirt's iptables nat chain
    ('reachable', 'unreachable': it exists but nothing jumps to it, 'missing', or None when no iptables
    nat table is listed) and whether libvirt's own nftables table (libvirt >= 10.4) exists."""
    out: dict = {"daemons": read_libvirt_daemons(), "chain": None, "nft_table": None}
    if not chains:
        return out
    for backend in ("nft", "legacy"):
        if backend == "legacy" and not _legacy_nat_loaded():
            continue
        binary = ops._iptables_binary(backend)
        text = _run([binary, "-w", "5", "-t", "nat", "-S"]) if binary else None
        if text is None:
            continue
        lines = [line.split() for line in text.splitlines()]
        exists = ["-N", LIBVIRT_NAT_CHAIN] in [w[:2] for w in lines]
        state = ("reachable" if LIBVIRT_NAT_CHAIN in _reachable_chains(lines) else "unreachable") if exists \
            else "missing"
        if out["chain"] is None or state == "reachable" or (state == "unreachable" and out["chain"] == "missing"):
            out["chain"] = state
    nft = shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None)
    if nft:
        out["nft_table"] = _run([nft, "list", "table", "ip", "libvirt_network"]) is not None
    return out


def read_libvirt_daemons(proc: str = "/proc") -> dict:
    """The libvirt daemons that own the networks' firewall rules, running in this network namespace:
    name -> pid (the lowest pid of each name). Read from /proc/PID/comm."""
    here = _netns_inode("self")
    out: dict = {}
    try:
        pids = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    except OSError:
        return out
    for pid in pids:
        try:
            with open(f"{proc}/{pid}/comm") as fh:
                comm = fh.read().strip()
        except OSError:
            continue
        if comm in LIBVIRT_NETWORK_DAEMONS and comm not in out and _netns_inode(str(pid)) == here:
            out[comm] = pid
    return out
