"""Kernel event sources for the facts that have no link/fdb event: forwarding and the firewall.

- NetconfSource: RTM_NEWNETCONF on RTNLGRP_IPV4_NETCONF and RTNLGRP_IPV6_NETCONF (what `ip monitor
  netconf` prints): `net.ipv4.ip_forward`, `net.ipv4.conf.IF.forwarding`, `net.ipv6.conf.{all,IF}.forwarding`
  turned off, the moment it happens. Global → a pass over the bridges of the libvirt NAT/routed networks;
  per interface → the network whose bridge or forward device that interface is.
- NftablesSource: NFNLGRP_NFTABLES (what `nft monitor` prints): every committed nf_tables transaction —
  nftables-native, firewalld's and iptables-nft's — ends with NFT_MSG_NEWGEN carrying the new ruleset
  generation and the process that made it. → a pass over the bridges where the firewall matters (those
  with VMs, and the NAT networks' bridges for their masquerade). netmedic's own writes (its pid) are
  skipped. iptables-legacy changes have no event: the periodic resync covers them.

Both are the daemon's sources (netmedic.daemon.Daemon.add_source): a plain AF_NETLINK socket and a lean
struct parser (no pyroute2), so they behave the same with every pyroute2 version. On ENOBUFS (events
lost) the socket is reopened and a full pass is asked for.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Optional

SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_NETFILTER = 12
RTNLGRP_IPV4_NETCONF = 24
RTNLGRP_IPV6_NETCONF = 25
NFNLGRP_NFTABLES = 7
RTM_NEWNETCONF = 80
NETCONFA_IFINDEX = 1
NETCONFA_FORWARDING = 2
NETCONFA_IFINDEX_ALL = -1
NETCONFA_IFINDEX_DEFAULT = -2
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15
_SO_RCVBUFFORCE = 33
_HDR = struct.Struct("=IHHII")
_RTA = struct.Struct("=HH")
_I32 = struct.Struct("=i")


def _messages(data, end: Optional[int]):
    """(offset, length, type) of each whole netlink message in a datagram."""
    end = len(data) if end is None else end
    off = 0
    while off + 16 <= end:
        length, kind, _flags, _seq, _pid = _HDR.unpack_from(data, off)
        if length < 16 or off + length > end:
            return
        yield off, length, kind
        off += (length + 3) & ~3


def parse_netconf(data, end: Optional[int] = None) -> list:
    """[(family 'ipv4'/'ipv6', ifindex, forwarding value or None, only_forwarding)] from a datagram.
    `only_forwarding`: the message reports that one setting (a sysctl write), not a whole device's
    configuration (a new interface)."""
    out = []
    for off, length, kind in _messages(data, end):
        if kind == RTM_NEWNETCONF and length >= 20:
            family = data[off + 16]
            ifindex = fwd = None
            others = 0
            pos = off + 20
            while pos + 4 <= off + length:
                alen, atype = _RTA.unpack_from(data, pos)
                if alen < 4 or pos + alen > off + length:
                    break
                atype &= 0x3FFF
                if atype == NETCONFA_IFINDEX and alen >= 8:
                    ifindex = _I32.unpack_from(data, pos + 4)[0]
                elif atype == NETCONFA_FORWARDING and alen >= 8:
                    fwd = _I32.unpack_from(data, pos + 4)[0]
                else:
                    others += 1
                pos += (alen + 3) & ~3
            fam = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}.get(family)
            if fam and ifindex is not None:
                out.append((fam, ifindex, fwd, others == 0))
    return out


def parse_nft(data, end: Optional[int] = None) -> list:
    """[(message type, generation or None, pid or None, process name or None)] of the nf_tables
    notifications in a datagram (generation/pid/name only on NFT_MSG_NEWGEN)."""
    from netmedic.firewall import parse_gen

    out = []
    for off, length, kind in _messages(data, end):
        if kind >> 8 == NFNL_SUBSYS_NFTABLES:
            msg = kind & 0xFF
            if msg == NFT_MSG_NEWGEN:
                gen, pid, name = parse_gen(bytes(data[off:off + length]))
                out.append((msg, gen, pid, name))
            else:
                out.append((msg, None, None, None))
    return out


class _NetlinkSource:
    name = "?"
    protocol = 0
    groups: tuple = ()

    def __init__(self, rcvbuf: int = 1 << 20):
        self.rcvbuf = rcvbuf
        self.sock: Optional[socket.socket] = None
        self.error: Optional[str] = None
        self.events = self.overflows = self.passes = 0
        self.last: Optional[str] = None
        self._buf = bytearray(65536)
        try:
            self.sock = self._open()
        except OSError as exc:
            self.error = f"subscribe: {exc.strerror or exc}"

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, self.protocol)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, self.rcvbuf)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.bind((0, 0))
            for group in self.groups:
                sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def fileno(self):
        return self.sock.fileno() if self.sock is not None else None

    def poll(self, daemon, now):
        return None

    def status(self) -> dict:
        return {"state": "listening" if self.sock is not None else "off", "events": self.events,
                "passes": self.passes, "overflows": self.overflows, "last": self.last, "error": self.error}

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def on_readable(self, daemon) -> None:
        view = memoryview(self._buf)
        batch = []
        for _ in range(256):
            try:
                n = self.sock.recv_into(view)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overflows += 1
                    self.close()
                    try:
                        self.sock = self._open()
                    except OSError as exc2:
                        self.error = f"reopen: {exc2.strerror or exc2}"
                    daemon.note_event(self.name, "overflow: full pass")
                    daemon.dispatcher.submit(None, f"{self.name} overflow")
                    return
                raise
            if n <= 0:
                break
            batch.append(bytes(self._buf[:n]))
        if batch:
            self.handle(daemon, batch)

    def handle(self, daemon, batch: list) -> None:
        raise NotImplementedError

    def _submit(self, daemon, bridges, reason: str) -> None:
        self.passes += 1
        self.last = reason
        daemon.note_event(self.name, reason + (f" bridges={','.join(sorted(bridges))}" if bridges else ""))
        daemon.dispatcher.submit(sorted(bridges), reason)


def _networks(daemon) -> list:
    nets = getattr(daemon, "_known_networks", None)
    if nets is None and getattr(daemon, "engine", None) is not None and daemon.engine.inventory is not None:
        nets = daemon.engine.inventory.networks
    return [n for n in (nets or {}).values() if n.bridge and n.forward_mode in ("nat", "route")]


class NetconfSource(_NetlinkSource):
    name = "netconf"
    protocol = socket.NETLINK_ROUTE
    groups = (RTNLGRP_IPV4_NETCONF, RTNLGRP_IPV6_NETCONF)

    def handle(self, daemon, batch: list) -> None:
        bridges: set = set()
        reasons = []
        for data in batch:
            for family, ifindex, fwd, only in parse_netconf(data):
                self.events += 1
                if fwd != 0 or not only:
                    continue  # turned on, another setting, or a new interface's whole configuration
                nets = _networks(daemon)
                if ifindex == NETCONFA_IFINDEX_ALL:
                    hit = {n.bridge for n in nets}
                    what = "all"
                elif ifindex > 0:
                    what = daemon.dispatcher.index_name.get(ifindex)
                    if what is None:
                        try:
                            what = socket.if_indextoname(ifindex)
                        except OSError:
                            continue
                    hit = {n.bridge for n in nets if what in (n.bridge, n.forward_dev)}
                else:
                    continue  # `default`: only for interfaces created later
                if hit:
                    bridges |= hit
                    reasons.append(f"{family} {what} forwarding off")
        if bridges:
            self._submit(daemon, bridges, "netconf: " + "; ".join(dict.fromkeys(reasons)))


class NftablesSource(_NetlinkSource):
    name = "nftables"
    protocol = NETLINK_NETFILTER
    groups = (NFNLGRP_NFTABLES,)

    def __init__(self, rcvbuf: int = 1 << 20):
        super().__init__(rcvbuf)
        self.generation: Optional[int] = None
        self.pid = os.getpid()

    def status(self) -> dict:
        return {**super().status(), "generation": self.generation}

    def handle(self, daemon, batch: list) -> None:
        changed = pending = False
        by = []
        for data in batch:
            for msg, gen, pid, name in parse_nft(data):
                self.events += 1
                if msg != NFT_MSG_NEWGEN:
                    pending = True
                    continue
                self.generation = gen
                pending = False
                if pid == self.pid:
                    continue  # netmedic's own transaction (its accept rule): nothing new to judge
                by.append(f"{name or '?'}[{pid}]")
                changed = True
        changed = changed or pending
        if not changed:
            return
        d = daemon.dispatcher
        bridges = set(d.vm_bridges) | {n.bridge for n in _networks(daemon)}
        if bridges:
            self._submit(daemon, bridges, f"nftables: generation {self.generation}"
                         + (f" by {', '.join(dict.fromkeys(by))}" if by else ""))
