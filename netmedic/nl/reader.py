"""The lean reader of the hot path: a plain rtnetlink socket (RawRtnl) and parsers of the raw replies.

pyroute2 parses ~1 ms per link, so a 1,000-VM host (2,000+ links) spent seconds of every reconcile in
links(). This reads the same RTM_NEWLINK dump with only the attributes LinkInfo needs, and fdb entries
by MAC in batches; tests/integration/test_nl.py checks every parser against pyroute2's parse of the same namespace.
"""
from __future__ import annotations

import errno
import socket
import struct
from typing import Optional

from netmedic.errors import HostError
from netmedic.nl.data import (
    BR_STATE_DISABLED,
    NTF_MASTER,
    BridgeInfo,
    FdbInfo,
    LinkInfo,
    PortInfo,
)
from netmedic.nl.uapi import (
    _AF_BRIDGE,
    _AF_UNSPEC,
    _IFA_ADDRESS,
    _IFA_LOCAL,
    _IFADDRMSG,
    _IFF_LOWER_UP,
    _IFF_UP,
    _IFINFOMSG,
    _IFLA_EXT_MASK,
    _IFLA_IFNAME,
    _IFLA_MASTER,
    _NDA_LLADDR,
    _NDA_MASTER,
    _NDA_VLAN,
    _NDMSG,
    _NLM_F_DUMP,
    _NLM_F_DUMP_INTR,
    _NLM_F_REQUEST,
    _NLMSGHDR,
    _RTATTR,
    _RTEXT_FILTER_SKIP_STATS,
    _RTM_GETADDR,
    _RTM_GETLINK,
    _RTM_GETNEIGH,
    _RTM_NEWADDR,
    _RTM_NEWLINK,
    _RTM_NEWNEIGH,
    _U32,
    _errno_text,
    _mac,
)

_OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_U8 = struct.Struct("=B")
_I32 = struct.Struct("=i")


def _attrs(data, pos: int, end: int) -> dict:
    """{type: (start, end)} of the rtattrs in data[pos:end] (last one wins)."""
    out = {}
    while pos + 4 <= end:
        rta_len, rta_type = _RTATTR.unpack_from(data, pos)
        if rta_len < 4 or pos + rta_len > end:
            break
        out[rta_type & 0x3FFF] = (pos + 4, pos + rta_len)
        pos += (rta_len + 3) & ~3
    return out


def _u(data, span, default=None):
    if span is None:
        return default
    start, end = span
    if end - start >= 4:
        return _U32.unpack_from(data, start)[0]
    if end - start >= 1:
        return data[start]
    return default


def _text(data, span) -> Optional[str]:
    if span is None:
        return None
    return bytes(data[span[0]:span[1]]).split(b"\0", 1)[0].decode("utf-8", "replace")


def _link_from_raw(data, off: int, msg_end: int) -> LinkInfo:
    _family, _itype, index, flags, _change = _IFINFOMSG.unpack_from(data, off + 16)
    a = _attrs(data, off + 32, msg_end)
    kind = slave_kind = None
    bridge = port = bond_mode = None
    if 18 in a:  # IFLA_LINKINFO
        li = _attrs(data, *a[18])
        kind, slave_kind = _text(data, li.get(1)), _text(data, li.get(4))
        if kind == "bridge" and 2 in li:
            d = _attrs(data, *li[2])
            bridge = BridgeInfo(stp_state=_u(data, d.get(5), 0), nf_call_iptables=bool(_u(data, d.get(36), 0)),
                                vlan_filtering=bool(_u(data, d.get(7), 0)),
                                forward_delay=_u(data, d.get(1), 0), ageing_time=_u(data, d.get(4), 0))
        elif kind == "bond" and 2 in li:
            bond_mode = _u(data, _attrs(data, *li[2]).get(1))
        if slave_kind == "bridge" and 5 in li:
            d = _attrs(data, *li[5])
            port = PortInfo(state=_u(data, d.get(1), BR_STATE_DISABLED), learning=bool(_u(data, d.get(8), 1)),
                            flood=bool(_u(data, d.get(9), 1)))
    mac = ":".join(f"{b:02x}" for b in data[a[1][0]:a[1][1]]) if 1 in a else ""
    oper = _u(data, a.get(16), 0)
    master = _u(data, a.get(_IFLA_MASTER))
    return LinkInfo(index=index, name=_text(data, a.get(_IFLA_IFNAME)) or "", kind=kind, mac=mac,
                    mtu=_u(data, a.get(4), 0), up=bool(flags & _IFF_UP), carrier=bool(flags & _IFF_LOWER_UP),
                    operstate=_OPERSTATES[oper] if oper < len(_OPERSTATES) else str(oper),
                    master=master or None, bridge=bridge, port=port, bond_mode=bond_mode)


class RawRtnl:
    """A plain rtnetlink socket for the read requests of the hot path, answered with the lean parsers:
    link dumps (optionally filtered kernel-side by master), single links by name or ifindex, and fdb
    lookups by MAC sent in batches (one send() of many requests, one reply each). The results equal
    pyroute2's parse of the same messages (tests/integration/test_nl.py)."""

    _BATCH = 64  # requests per send(): their replies (~100 bytes each) stay far below the receive buffer

    def __init__(self) -> None:
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                      socket.NETLINK_ROUTE)
        except OSError as exc:
            raise HostError(f"open an rtnetlink socket: {_errno_text(exc.errno)}") from None
        try:
            self.sock.bind((0, 0))
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        except OSError as exc:
            self.sock.close()
            raise HostError(f"open an rtnetlink socket: {_errno_text(exc.errno)}") from None
        self.seq = 0
        self.buf = bytearray(1 << 20)
        self._link_cache: dict = {}  # ifindex -> (message without its header, LinkInfo)

    def close(self) -> None:
        self.sock.close()

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0x7FFFFFFF or 1
        return self.seq

    def _drain_stale(self) -> None:
        """Replies to an earlier request that raised half-way would be taken for this one's."""
        while True:
            try:
                self.sock.recv_into(self.buf, 0, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return

    def _messages(self, what: str):
        """Yield (seq, type, flags, offset, end) of every message received until the caller stops."""
        buf = self.buf
        while True:
            try:
                n = self.sock.recv_into(buf)
            except OSError as exc:
                raise HostError(f"{what}: {_errno_text(exc.errno)}") from None
            off = 0
            while off + 16 <= n:
                msg_len, msg_type, msg_flags, msg_seq, _pid = _NLMSGHDR.unpack_from(buf, off)
                if msg_len < 16 or off + msg_len > n:
                    break
                yield msg_seq, msg_type, msg_flags, off, off + msg_len
                off += (msg_len + 3) & ~3

    def _dump(self, what: str, msg_type: int, body: bytes, reply_type: int, min_len: int, parse) -> list:
        """One NLM_F_DUMP request; parse(buf, off, end) of every reply of `reply_type`, in order."""
        seq = self._next_seq()
        self._drain_stale()
        self.sock.send(_NLMSGHDR.pack(16 + len(body), msg_type, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0) + body)
        out = []
        for msg_seq, mtype, msg_flags, off, end in self._messages(what):
            if msg_seq != seq:
                continue
            if mtype == _NLMSG_DONE:
                if msg_flags & _NLM_F_DUMP_INTR:
                    raise HostError(f"{what}: the dump was interrupted by a change; retry")
                return out
            if mtype == _NLMSG_ERROR:
                raise HostError(f"{what}: {_errno_text(-_I32.unpack_from(self.buf, off + 16)[0])}")
            if mtype == reply_type and end - off >= min_len:
                out.append(parse(self.buf, off, end))
        return out  # not reached: _messages() only ends by raising

    def dump_links(self, master: Optional[int] = None) -> list:
        """Every link (with `master`: only the links enslaved to that ifindex, filtered by the kernel).

        A link whose message is byte for byte the one of the previous dump is not parsed again (LinkInfo
        is frozen): on a 1,000-VM host nearly every message of a periodic pass is unchanged."""
        what = "list links" if master is None else f"list the ports of ifindex {master}"
        body = _IFINFOMSG.pack(_AF_UNSPEC, 0, 0, 0, 0)
        # no counters (IFLA_STATS/STATS64, a third of each message): LinkInfo has none
        body += _RTATTR.pack(8, _IFLA_EXT_MASK) + _U32.pack(_RTEXT_FILTER_SKIP_STATS)
        if master is not None:
            body += _RTATTR.pack(8, _IFLA_MASTER) + _U32.pack(int(master))
        cache, fresh = self._link_cache, {}

        def parse(buf, off, end):
            raw = buf[off + 16:end]  # a copy, without the header (its seq changes at every dump)
            index = _I32.unpack_from(raw, 4)[0]
            hit = cache.get(index)
            link = hit[1] if hit is not None and hit[0] == raw else _link_from_raw(buf, off, end)
            fresh[index] = (raw, link)
            return link

        links = self._dump(what, _RTM_GETLINK, body, _RTM_NEWLINK, 32, parse)
        if master is None:
            self._link_cache = fresh  # a full dump: links that are gone leave the cache
        else:
            cache.update(fresh)
        return links

    def dump_addresses(self) -> list:
        """[(ifindex, 'address/prefixlen')] of every IPv4/IPv6 address (IFA_LOCAL, else IFA_ADDRESS: the
        local end of a point-to-point address), in the kernel's order."""
        return [a for a in self._dump("list addresses", _RTM_GETADDR, _IFADDRMSG.pack(_AF_UNSPEC, 0, 0, 0, 0),
                                      _RTM_NEWADDR, 24, _addr_from_raw) if a is not None]

    def get_link(self, name: Optional[str] = None, index: int = 0) -> Optional[LinkInfo]:
        """One link by name or ifindex; None when there is no such link."""
        seq = self._next_seq()
        body = _IFINFOMSG.pack(_AF_UNSPEC, 0, int(index), 0, 0)
        if name is not None:
            raw = name.encode() + b"\0"
            body += _RTATTR.pack(4 + len(raw), _IFLA_IFNAME) + raw + b"\0" * (-len(raw) % 4)
        what = f"read link {name if name is not None else f'ifindex {index}'}"
        self._drain_stale()
        self.sock.send(_NLMSGHDR.pack(16 + len(body), _RTM_GETLINK, _NLM_F_REQUEST, seq, 0) + body)
        for msg_seq, msg_type, _flags, off, end in self._messages(what):
            if msg_seq != seq:
                continue
            if msg_type == _NLMSG_ERROR:
                code = -_I32.unpack_from(self.buf, off + 16)[0]
                if code in (errno.ENODEV, errno.ENOENT) or code == 0:
                    return None
                raise HostError(f"{what}: {_errno_text(code)}")
            if msg_type == _RTM_NEWLINK and end - off >= 32:
                return _link_from_raw(self.buf, off, end)
        return None  # not reached

    def fdb_get_many(self, queries: list) -> list:
        """[(bridge_index, mac, vlan or None)] -> [FdbInfo or None], in order: RTM_GETNEIGH per MAC
        (what `bridge fdb get MAC br BR` sends), many per send()."""
        out: list = [None] * len(queries)
        for first in range(0, len(queries), self._BATCH):
            chunk = queries[first:first + self._BATCH]
            seqs = {}
            req = bytearray()
            for i, (bridge_index, mac, vlan) in enumerate(chunk):
                seq = self._next_seq()
                seqs[seq] = first + i
                body = _NDMSG.pack(_AF_BRIDGE, 0, 0, 0, 0)
                body += _RTATTR.pack(10, _NDA_LLADDR) + bytes.fromhex(_mac(mac).replace(":", "")) + b"\0\0"
                body += _RTATTR.pack(8, _NDA_MASTER) + _U32.pack(int(bridge_index))
                if vlan is not None:
                    body += _RTATTR.pack(6, _NDA_VLAN) + struct.pack("=H", int(vlan)) + b"\0\0"
                req += _NLMSGHDR.pack(16 + len(body), _RTM_GETNEIGH, _NLM_F_REQUEST, seq, 0) + body
            self._drain_stale()
            self.sock.send(bytes(req))
            for msg_seq, msg_type, _flags, off, end in self._messages("look up fdb entries"):
                pos = seqs.pop(msg_seq, None)
                if pos is None:
                    continue
                if msg_type == _NLMSG_ERROR:
                    code = -_I32.unpack_from(self.buf, off + 16)[0]
                    if code not in (0, errno.ENOENT):
                        bridge_index, mac, _vlan = queries[pos]
                        raise HostError(f"look up fdb entry {mac} on bridge ifindex {bridge_index}: "
                                        f"{_errno_text(code)}")
                elif msg_type == _RTM_NEWNEIGH:
                    out[pos] = _fdb_from_raw(self.buf, off, end)
                if not seqs:
                    break
        return out


def _fdb_from_raw(data, off: int, msg_end: int) -> FdbInfo:
    """FdbInfo from a raw RTM_NEWNEIGH (family AF_BRIDGE); the same rules as _fdb_from_msg."""
    _family, ifindex, state, flags, _ntype = _NDMSG.unpack_from(data, off + 16)
    a = _attrs(data, off + 28, msg_end)
    master = _u(data, a.get(_NDA_MASTER))
    vlan = a.get(_NDA_VLAN)
    if master:
        flags |= NTF_MASTER
    return FdbInfo(mac=":".join(f"{b:02x}" for b in data[a[_NDA_LLADDR][0]:a[_NDA_LLADDR][1]])
                   if _NDA_LLADDR in a else "",
                   port_index=ifindex, bridge_index=master or None,
                   vlan=struct.unpack_from("=H", data, vlan[0])[0] if vlan and vlan[1] - vlan[0] >= 2 else None,
                   state=state, flags=flags)


_FAMILIES = {socket.AF_INET: 4, socket.AF_INET6: 16}


def _addr_from_raw(data, off: int, msg_end: int):
    """(ifindex, 'address/prefixlen') from a raw RTM_NEWADDR, or None for another family."""
    family, prefixlen, _flags, _scope, index = _IFADDRMSG.unpack_from(data, off + 16)
    size = _FAMILIES.get(family)
    if size is None:
        return None
    a = _attrs(data, off + 24, msg_end)
    span = a.get(_IFA_LOCAL) or a.get(_IFA_ADDRESS)
    if span is None or span[1] - span[0] < size:
        return None
    return index, f"{socket.inet_ntop(family, bytes(data[span[0]:span[0] + size]))}/{prefixlen}"


def dump_links_raw(master: Optional[int] = None) -> list:
    """Every link of this network namespace (with `master`: its ports), from one RTM_GETLINK dump."""
    rt = RawRtnl()
    try:
        return rt.dump_links(master)
    finally:
        rt.close()
