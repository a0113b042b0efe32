"""The one place that talks to the kernel's rtnetlink, through pyroute2 (plain data in netmedic.nl.data).

Works with pyroute2 0.7.2 (Debian 12's python3-pyroute2) and 0.9.x (PyPI). Everything above this
module works on the plain frozen dataclasses below, so it is testable without root.

Acts only in the network namespace the process runs in.
"""
from __future__ import annotations

import errno
import os
import re
import select
import socket
import struct
import types
from typing import Optional

from netmedic.errors import HostError
from netmedic.nl.data import (  # noqa: F401  (re-exported: netmedic.nl is their historical home)
    BR_STATE_BLOCKING,
    BR_STATE_DISABLED,
    BR_STATE_FORWARDING,
    BR_STATE_LEARNING,
    BR_STATE_LISTENING,
    NTF_EXT_LEARNED,
    NTF_MASTER,
    NTF_OFFLOADED,
    NTF_SELF,
    NTF_STICKY,
    NUD_NOARP,
    NUD_PERMANENT,
    NUD_REACHABLE,
    PORT_STATE_NAMES,
    BridgeInfo,
    Event,
    FdbInfo,
    LinkInfo,
    Overflow,
    PortInfo,
    VlanInfo,
)

# --- internals ---------------------------------------------------------------------------------
# Values from the kernel UAPI headers (identical in pyroute2 0.7.2 and 0.9.x; `socket` lacks some).
_SOL_NETLINK = 270
_NETLINK_GET_STRICT_CHK = 12  # linux/netlink.h
_SO_RCVBUFFORCE = 33  # asm-generic/socket.h; not exported by the socket module
_RTMGRP_LINK = 0x1
_RTMGRP_NEIGH = 0x4
_RTM_NEWLINK = 16
_RTM_DELLINK = 17
_RTM_GETLINK = 18
_RTM_SETLINK = 19
_IFLA_EXT_MASK_BRVLAN = 2  # RTEXT_FILTER_BRVLAN
_IFLA_EXT_MASK = 29
_RTEXT_FILTER_SKIP_STATS = 8
_BRIDGE_VLAN_INFO_PVID = 0x2
_BRIDGE_VLAN_INFO_UNTAGGED = 0x4
_RTM_NEWNEIGH = 28
_RTM_DELNEIGH = 29
_RTM_GETNEIGH = 30
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_DUMP = 0x300
_NLM_F_DUMP_INTR = 0x10
_NLM_F_REPLACE = 0x100
_NLM_F_CREATE = 0x400
_IFF_UP = 0x1
_IFF_LOWER_UP = 0x10000
_IFLA_ADDRESS = 1
_IFLA_IFNAME = 3
_IFLA_MASTER = 10
_NDA_LLADDR = 2
_NDA_MASTER = 9
_NDA_VLAN = 5
_AF_UNSPEC = 0
_AF_BRIDGE = 7
_IFNAMSIZ = 16

_ERRNO_NAMES = {errno.EOPNOTSUPP: "EOPNOTSUPP", errno.EDEADLK: "EDEADLK"}  # the kernel's names
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _mac(mac: str) -> str:
    """Lower-case colon form of an Ethernet address; ValueError when it is not one."""
    norm = str(mac).strip().lower().replace("-", ":")
    if not _MAC_RE.match(norm):
        raise ValueError(f"not an Ethernet MAC address: {mac!r}")
    return norm


def _errno_text(code: int, detail: Optional[str] = None) -> str:
    """'Operation not permitted (EPERM)', plus the kernel's extended ack when it says more."""
    code = abs(int(code)) if code is not None else 0
    strerror = os.strerror(code) if code else "error"
    text = f"{strerror} ({_ERRNO_NAMES.get(code) or errno.errorcode.get(code, code)})"
    if detail:
        detail = " ".join(str(detail).split())
        if detail and detail != strerror:
            text += f": {detail}"
    return text


_PYROUTE2 = None


def _pyroute2():
    """pyroute2, imported on first use (~0.2 s): importing this module for its dataclasses stays cheap."""
    global _PYROUTE2
    if _PYROUTE2 is None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkDumpInterrupted, NetlinkError
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
        from pyroute2.netlink.rtnl.ndmsg import ndmsg

        _PYROUTE2 = types.SimpleNamespace(IPRoute=IPRoute, NetlinkError=NetlinkError,
                                          NetlinkDumpInterrupted=NetlinkDumpInterrupted, ndmsg=ndmsg,
                                          ifinfmsg=ifinfmsg)
    return _PYROUTE2


def _link_from_msg(msg) -> LinkInfo:
    """LinkInfo from a pyroute2 ifinfmsg (RTM_NEWLINK); same accessors in pyroute2 0.7.2 and 0.9.x."""
    kind = slave_kind = data = slave_data = None
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    if linkinfo is not None:
        kind = linkinfo.get_attr("IFLA_INFO_KIND")
        slave_kind = linkinfo.get_attr("IFLA_INFO_SLAVE_KIND")
        data = linkinfo.get_attr("IFLA_INFO_DATA")
        slave_data = linkinfo.get_attr("IFLA_INFO_SLAVE_DATA")
    bridge = port = bond_mode = None
    if kind == "bridge" and data is not None and hasattr(data, "get_attr"):
        bridge = BridgeInfo(
            stp_state=int(data.get_attr("IFLA_BR_STP_STATE") or 0),
            nf_call_iptables=bool(data.get_attr("IFLA_BR_NF_CALL_IPTABLES")),
            vlan_filtering=bool(data.get_attr("IFLA_BR_VLAN_FILTERING")),
            forward_delay=int(data.get_attr("IFLA_BR_FORWARD_DELAY") or 0),
            ageing_time=int(data.get_attr("IFLA_BR_AGEING_TIME") or 0),
        )
    elif kind == "bond" and data is not None and hasattr(data, "get_attr"):
        mode = data.get_attr("IFLA_BOND_MODE")
        bond_mode = int(mode) if mode is not None else None
    if slave_kind == "bridge" and slave_data is not None and hasattr(slave_data, "get_attr"):
        state = slave_data.get_attr("IFLA_BRPORT_STATE")
        learning = slave_data.get_attr("IFLA_BRPORT_LEARNING")
        flood = slave_data.get_attr("IFLA_BRPORT_UNICAST_FLOOD")
        port = PortInfo(
            state=int(state) if state is not None else BR_STATE_DISABLED,
            learning=bool(learning) if learning is not None else True,
            flood=bool(flood) if flood is not None else True,
        )
    flags = int(msg["flags"] or 0)
    master = msg.get_attr("IFLA_MASTER")
    return LinkInfo(
        index=int(msg["index"]),
        name=msg.get_attr("IFLA_IFNAME") or "",
        kind=kind,
        mac=(msg.get_attr("IFLA_ADDRESS") or "").lower(),
        mtu=int(msg.get_attr("IFLA_MTU") or 0),
        up=bool(flags & _IFF_UP),
        carrier=bool(flags & _IFF_LOWER_UP),
        operstate=str(msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN"),
        master=int(master) if master else None,
        bridge=bridge,
        port=port,
        bond_mode=bond_mode,
    )


def _fdb_from_msg(msg) -> FdbInfo:
    """FdbInfo from a pyroute2 ndmsg of family AF_BRIDGE.

    The kernel marks an entry of the bridge's own table with NDA_MASTER and leaves NTF_MASTER out of
    ndm_flags; NTF_MASTER is added here so flags say what `bridge fdb` shows as "master"."""
    master = msg.get_attr("NDA_MASTER")
    vlan = msg.get_attr("NDA_VLAN")
    flags = int(msg["flags"] or 0)
    if master:
        flags |= NTF_MASTER
    return FdbInfo(
        mac=(msg.get_attr("NDA_LLADDR") or "").lower(),
        port_index=int(msg["ifindex"]),
        bridge_index=int(master) if master else None,
        vlan=int(vlan) if vlan is not None else None,
        state=int(msg["state"] or 0),
        flags=flags,
    )


def _vlans_from_msg(msg) -> tuple:
    """VlanInfo tuple from an AF_BRIDGE RTM_NEWLINK's IFLA_AF_SPEC (IFLA_BRIDGE_VLAN_INFO entries)."""
    spec = msg.get_attr("IFLA_AF_SPEC")
    if spec is None or not hasattr(spec, "get_attrs"):
        return ()
    out = []
    for info in spec.get_attrs("IFLA_BRIDGE_VLAN_INFO"):
        try:
            vid, flags = int(info["vid"]), int(info["flags"] or 0)
        except (KeyError, TypeError, ValueError):
            continue
        out.append(VlanInfo(vid=vid, pvid=bool(flags & _BRIDGE_VLAN_INFO_PVID),
                            untagged=bool(flags & _BRIDGE_VLAN_INFO_UNTAGGED)))
    return tuple(out)


class Netlink:
    """A pyroute2 IPRoute in the current network namespace, with the few calls netmedic needs."""

    def __init__(self) -> None:
        pr = _pyroute2()
        self._pr = pr
        try:
            try:
                ipr = pr.IPRoute(ext_ack=True)  # the kernel's extended ack text goes into HostError
            except TypeError:
                ipr = pr.IPRoute()
        except OSError as exc:
            raise HostError(f"open an rtnetlink socket: {_errno_text(exc.errno)}") from None
        self._ipr = ipr
        self._raw: Optional[RawRtnl] = None
        # pyroute2 0.9.x: the sync IPRoute never sets status['nlm_generator'] (NetlinkSocket.__init__
        # does), so IPRoute.nlm_request() raises KeyError. Set it the way the base class would.
        asyncore = getattr(ipr, "asyncore", None)
        if asyncore is not None:
            status = asyncore.status
            if "nlm_generator" not in status:
                status["nlm_generator"] = False

    def close(self) -> None:
        ipr, self._ipr = getattr(self, "_ipr", None), None
        raw, self._raw = getattr(self, "_raw", None), None
        if raw is not None:
            raw.close()
        if ipr is not None:
            ipr.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- helpers ---------------------------------------------------------------------------
    @property
    def ipr(self):
        if self._ipr is None:
            raise HostError("netlink connection already closed")
        return self._ipr

    def _request(self, msg, msg_type: int, msg_flags: int) -> list:
        """One request through pyroute2, the parsed replies as a list; a kernel error raises
        NetlinkError at once.

        Every write goes through here, not through IPRoute.link('set')/fdb(): pyroute2 0.7.2's
        nlm_request() retries a request the kernel answers with EBUSY 30 times, 0.3 s apart, logging a
        warning each time (a 9 s stall, e.g. set_port on a bridge running kernel STP); 0.9.x retries
        only a failed send(). So on 0.7.2 do what its nlm_request() does, without the retry loop.
        """
        ipr = self.ipr
        if hasattr(ipr, "asyncore"):  # pyroute2 >= 0.9
            return list(ipr.nlm_request(msg, msg_type=msg_type, msg_flags=msg_flags))
        seq = ipr.addr_pool.alloc()
        try:
            with ipr.lock[seq]:
                ipr.put(msg, msg_type, msg_flags, msg_seq=seq)
                replies = list(ipr.get(msg_seq=seq))
        finally:
            ipr.addr_pool.free(seq, ban=0xFF)  # as nlm_request(): a late reply to seq is dropped
        if any(r["header"]["flags"] & _NLM_F_DUMP_INTR for r in replies):
            raise self._pr.NetlinkDumpInterrupted()
        return replies

    def _set_strict(self, on: bool) -> None:
        """NETLINK_GET_STRICT_CHK: without it the kernel ignores NDA_MASTER in an fdb dump request
        (an ndmsg plus one u32 attribute is taken for the legacy form and dumps every bridge)."""
        ipr = self.ipr
        sock = ipr.asyncore.socket if hasattr(ipr, "asyncore") else ipr
        sock.setsockopt(_SOL_NETLINK, _NETLINK_GET_STRICT_CHK, 1 if on else 0)

    def _ndmsg(self, ifindex: int = 0, state: int = 0, flags: int = 0, attrs=()):
        msg = self._pr.ndmsg()
        msg["family"] = _AF_BRIDGE
        msg["ifindex"] = int(ifindex)
        msg["state"] = state
        msg["flags"] = flags
        msg["attrs"] = [list(a) for a in attrs]
        return msg

    def _name(self, index) -> str:
        """'vnet0 (ifindex 5)' for messages; 'ifindex 5' when the name cannot be read."""
        name = None
        try:
            if self._ipr is not None and int(index) > 0:
                msgs = self._ipr.link("get", index=int(index))
                if msgs:
                    name = msgs[0].get_attr("IFLA_IFNAME")
        except Exception:  # noqa: BLE001 - best effort, only for an error message
            name = None
        return f"{name} (ifindex {index})" if name else f"ifindex {index}"

    def _host_error(self, what: str, exc) -> HostError:
        code = getattr(exc, "code", None)
        if code is None:
            code = getattr(exc, "errno", None)
        detail = None
        args = getattr(exc, "args", ())
        if len(args) >= 2 and isinstance(args[1], str):
            detail = args[1]
        return HostError(f"{what}: {_errno_text(code or 0, detail)}")

    def _errors(self):
        """Exceptions that mean 'the kernel (or the socket) refused'."""
        return (self._pr.NetlinkError, OSError)

    def _link_set(self, what, index: int, attrs=(), flags: int = 0, change: int = 0) -> None:
        """RTM_NEWLINK on an existing link (what `ip link set` sends); ifi_change 0 leaves the link's
        flags (up/down) alone. what(): the operation, for the error message."""
        msg = self._pr.ifinfmsg()
        msg["family"] = _AF_UNSPEC
        msg["index"] = int(index)
        msg["flags"] = flags
        msg["change"] = change
        msg["attrs"] = [list(a) for a in attrs]
        try:
            self._request(msg, _RTM_NEWLINK, _NLM_F_REQUEST | _NLM_F_ACK)
        except self._errors() as exc:
            raise self._host_error(what(), exc) from None

    # --- reads -----------------------------------------------------------------------------
    @property
    def raw(self) -> RawRtnl:
        """The plain socket of the lean read path (opened on first use)."""
        if self._raw is None:
            if self._ipr is None:
                raise HostError("netlink connection already closed")
            self._raw = RawRtnl()
        return self._raw

    def links(self, master: Optional[int] = None) -> list[LinkInfo]:
        """All links of this network namespace; with `master`, only the links enslaved to that ifindex
        (filtered by the kernel: a bridge's ports cost what the bridge has, not what the host has).
        Read with a lean parser: pyroute2's costs ~1 ms per link."""
        for attempt in range(3):
            try:
                return self.raw.dump_links(master)
            except HostError as exc:
                if "interrupted" not in str(exc) or attempt == 2:
                    raise
        return []  # not reached

    def link(self, name_or_index) -> Optional[LinkInfo]:
        """One link by name or ifindex, None when it does not exist."""
        if isinstance(name_or_index, bool):
            raise TypeError("link(): expected a name or an ifindex, got a bool")
        if isinstance(name_or_index, int):
            if name_or_index <= 0:
                return None
            return self.raw.get_link(index=name_or_index)
        name = str(name_or_index)
        if not name or len(name.encode()) >= _IFNAMSIZ or "/" in name or "\0" in name:
            return None  # no link can have that name
        return self.raw.get_link(name=name)

    def fdb_get(self, bridge_index: int, mac: str, vlan: Optional[int] = None) -> Optional[FdbInfo]:
        """The bridge's fdb entry for MAC (per-MAC kernel lookup, RTM_GETNEIGH without NLM_F_DUMP, like
        `bridge fdb get MAC br BR`), or None when the bridge has no entry for it. Cost independent of
        the fdb's size."""
        return self.fdb_get_many([(bridge_index, mac, vlan)])[0]

    def fdb_get_many(self, queries) -> list:
        """fdb_get() for many (bridge_index, mac, vlan or None) at once, in order: the lookups are sent
        in batches, so 1,000 VM MACs cost a few milliseconds."""
        queries = [(int(b), _mac(m), v) for b, m, v in queries]
        return self.raw.fdb_get_many(queries)

    def fdb_dump(self, bridge_index: int) -> list[FdbInfo]:
        """Every fdb entry of one bridge, filtered kernel-side (NDA_MASTER in the dump request)."""
        # Only the bridge's own table (entries carrying NDA_MASTER): the kernel's filtered dump also
        # returns the ports' and the bridge's "self" entries (their unicast/multicast address lists).
        bridge_index = int(bridge_index)
        attempt = 0
        while True:
            msg = self._ndmsg(attrs=[("NDA_MASTER", bridge_index)])
            try:
                self._set_strict(True)
                try:
                    replies = self._request(msg, _RTM_GETNEIGH, _NLM_F_REQUEST | _NLM_F_DUMP)
                finally:
                    self._set_strict(False)
                break
            except self._pr.NetlinkDumpInterrupted as exc:  # the fdb changed during the dump
                attempt += 1
                if attempt >= 3:
                    raise self._host_error(f"dump the fdb of bridge {self._name(bridge_index)}", exc) \
                        from None
            except self._errors() as exc:
                raise self._host_error(f"dump the fdb of bridge {self._name(bridge_index)}", exc) from None
        out = []
        for reply in replies:
            if reply["header"]["type"] != _RTM_NEWNEIGH or reply["family"] != _AF_BRIDGE:
                continue
            entry = _fdb_from_msg(reply)
            if entry.bridge_index == bridge_index:
                out.append(entry)
        if not out and self.link(bridge_index) is None:
            # A dump's error (ENODEV for a missing bridge) comes in NLMSG_DONE, which pyroute2 drops;
            # a live bridge always has at least its own address in its fdb.
            raise HostError(f"dump the fdb of bridge ifindex {bridge_index}: "
                            f"{_errno_text(errno.ENODEV)}")
        return out

    def addresses(self) -> dict[int, list[str]]:
        """IPv4/IPv6 addresses by ifindex, as 'addr/prefixlen'."""
        out: dict[int, list[str]] = {}
        try:
            msgs = self.ipr.addr("dump")
            for msg in msgs:
                addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
                if addr:
                    out.setdefault(int(msg["index"]), []).append(f"{addr}/{msg['prefixlen']}")
        except self._errors() as exc:
            raise self._host_error("list addresses", exc) from None
        return out

    def port_vlans(self) -> dict:
        """ifindex -> tuple of VlanInfo: every bridge port's VLAN table (`bridge vlan show`), from one
        AF_BRIDGE link dump with RTEXT_FILTER_BRVLAN. A kernel without bridge VLAN filtering reports
        no VLANs: the ports are then absent or map to ()."""
        msg = self._pr.ifinfmsg()
        msg["family"] = _AF_BRIDGE
        msg["attrs"] = [["IFLA_EXT_MASK", _IFLA_EXT_MASK_BRVLAN]]
        try:
            replies = self._request(msg, _RTM_GETLINK, _NLM_F_REQUEST | _NLM_F_DUMP)
        except self._errors() as exc:
            raise self._host_error("list bridge port VLANs", exc) from None
        out: dict = {}
        for reply in replies:
            if reply["header"]["type"] != _RTM_NEWLINK:
                continue
            out[int(reply["index"])] = _vlans_from_msg(reply)
        return out

    # --- writes ----------------------------------------------------------------------------
    def vlan_add(self, port_index: int, vid: int, pvid: bool = False, untagged: bool = False) -> None:
        """`bridge vlan add vid VID dev PORT [pvid] [untagged]` (RTM_SETLINK, AF_BRIDGE, IFLA_AF_SPEC)."""
        flags = (_BRIDGE_VLAN_INFO_PVID if pvid else 0) | (_BRIDGE_VLAN_INFO_UNTAGGED if untagged else 0)
        msg = self._pr.ifinfmsg()
        msg["family"] = _AF_BRIDGE
        msg["index"] = int(port_index)
        msg["attrs"] = [["IFLA_AF_SPEC", {"attrs": [["IFLA_BRIDGE_VLAN_INFO",
                                                      {"flags": flags, "vid": int(vid)}]]}]]
        try:
            self._request(msg, _RTM_SETLINK, _NLM_F_REQUEST | _NLM_F_ACK)
        except self._errors() as exc:
            raise self._host_error(f"add vlan {vid} to {self._name(port_index)}", exc) from None

    def vlan_delete(self, port_index: int, vid: int) -> None:
        """`bridge vlan del vid VID dev PORT`."""
        msg = self._pr.ifinfmsg()
        msg["family"] = _AF_BRIDGE
        msg["index"] = int(port_index)
        msg["attrs"] = [["IFLA_AF_SPEC", {"attrs": [["IFLA_BRIDGE_VLAN_INFO", {"flags": 0, "vid": int(vid)}]]}]]
        try:
            self._request(msg, _RTM_DELLINK, _NLM_F_REQUEST | _NLM_F_ACK)
        except self._errors() as exc:
            raise self._host_error(f"delete vlan {vid} from {self._name(port_index)}", exc) from None

    def fdb_pin(self, port_index: int, mac: str, vlan: Optional[int] = None) -> None:
        """Make MAC a 'static sticky' master entry on the port (replace: also moves an entry that was
        learned on another port). Learning can no longer move it."""
        mac = _mac(mac)
        attrs = [("NDA_LLADDR", mac)]
        if vlan is not None:
            attrs.append(("NDA_VLAN", int(vlan)))
        # `bridge fdb replace MAC dev PORT master static sticky`: replace fills in no defaults.
        msg = self._ndmsg(port_index, state=NUD_NOARP, flags=NTF_MASTER | NTF_STICKY, attrs=attrs)
        try:
            self._request(msg, _RTM_NEWNEIGH,
                          _NLM_F_REQUEST | _NLM_F_ACK | _NLM_F_CREATE | _NLM_F_REPLACE)
        except self._errors() as exc:
            vid = f" vlan {vlan}" if vlan is not None else ""
            raise self._host_error(f"pin fdb entry {mac}{vid} on {self._name(port_index)}", exc) from None

    def fdb_delete(self, port_index: int, mac: str, vlan: Optional[int] = None) -> None:
        """Delete the master fdb entry for MAC on the port. Missing entry: no error."""
        mac = _mac(mac)
        attrs = [("NDA_LLADDR", mac)]
        if vlan is not None:
            attrs.append(("NDA_VLAN", int(vlan)))
        msg = self._ndmsg(port_index, state=0, flags=NTF_MASTER, attrs=attrs)
        try:
            self._request(msg, _RTM_DELNEIGH, _NLM_F_REQUEST | _NLM_F_ACK)
        except self._pr.NetlinkError as exc:
            if exc.code == errno.ENOENT:  # no entry, or the entry points to another port
                return
            vid = f" vlan {vlan}" if vlan is not None else ""
            raise self._host_error(f"delete fdb entry {mac}{vid} on {self._name(port_index)}", exc) \
                from None
        except OSError as exc:
            raise self._host_error(f"delete fdb entry {mac} on {self._name(port_index)}", exc) from None

    def set_master(self, index: int, master_index: int) -> None:
        """Enslave the link to master_index; 0 releases it (nomaster)."""
        master_index = int(master_index or 0)
        if master_index:
            def what():
                return f"set master of {self._name(index)} to {master_index}"
        else:
            def what():
                return f"release {self._name(index)} from its master"
        self._link_set(what, index, attrs=[("IFLA_MASTER", master_index)])

    def set_up(self, index: int, up: bool) -> None:
        state = "up" if up else "down"
        self._link_set(lambda: f"set {self._name(index)} {state}", index, flags=_IFF_UP if up else 0,
                       change=_IFF_UP)

    def set_mtu(self, index: int, mtu: int) -> None:
        mtu = int(mtu)
        self._link_set(lambda: f"set mtu of {self._name(index)} to {mtu}", index, attrs=[("IFLA_MTU", mtu)])

    def set_port(self, index: int, state: Optional[int] = None, learning: Optional[bool] = None,
                 flood: Optional[bool] = None) -> None:
        """Set bridge-port attributes (IFLA_BRPORT_*) without touching the link's up/down state."""
        # RTM_NEWLINK with IFLA_LINKINFO {IFLA_INFO_SLAVE_KIND bridge, IFLA_INFO_SLAVE_DATA {...}}, as
        # `ip link set PORT type bridge_slave state 3` (ifi_change 0: up/down untouched). NOT
        # brport('set', state=...), which brings the link down.
        data = []
        words = []
        if state is not None:
            data.append(["IFLA_BRPORT_STATE", int(state)])
            words.append(f"state {PORT_STATE_NAMES.get(int(state), int(state))}")
        if learning is not None:
            data.append(["IFLA_BRPORT_LEARNING", 1 if learning else 0])
            words.append(f"learning {'on' if learning else 'off'}")
        if flood is not None:
            data.append(["IFLA_BRPORT_UNICAST_FLOOD", 1 if flood else 0])
            words.append(f"flood {'on' if flood else 'off'}")
        if not data:
            return
        linkinfo = {"attrs": [["IFLA_INFO_SLAVE_KIND", "bridge"], ["IFLA_INFO_SLAVE_DATA", {"attrs": data}]]}
        self._link_set(lambda: f"set bridge port {self._name(index)} {', '.join(words)}", index,
                       attrs=[("IFLA_LINKINFO", linkinfo)])

    def set_bridge(self, index: int, nf_call_iptables: Optional[bool] = None, stp_state: Optional[int] = None,
                   forward_delay: Optional[int] = None) -> None:
        """Set bridge attributes (IFLA_BR_*). forward_delay in centiseconds, as the kernel reports it."""
        data, words = [], []
        if forward_delay is not None:  # before STP: turning STP on with a delay below 2 s is refused
            data.append(["IFLA_BR_FORWARD_DELAY", int(forward_delay)])
            words.append(f"forward_delay {int(forward_delay) / 100:g} s")
        if stp_state is not None:
            data.append(["IFLA_BR_STP_STATE", int(stp_state)])
            words.append(f"stp_state {int(stp_state)}")
        if nf_call_iptables is not None:
            data.append(["IFLA_BR_NF_CALL_IPTABLES", 1 if nf_call_iptables else 0])
            words.append(f"nf_call_iptables {1 if nf_call_iptables else 0}")
        if not data:
            return
        linkinfo = {"attrs": [["IFLA_INFO_KIND", "bridge"], ["IFLA_INFO_DATA", {"attrs": data}]]}
        self._link_set(lambda: f"set {', '.join(words)} on bridge {self._name(index)}", index,
                       attrs=[("IFLA_LINKINFO", linkinfo)])

    def set_address(self, index: int, mac: str) -> None:
        """Set the link's MAC address (on a bridge this makes it fixed: addr_assign_type 3, set)."""
        mac = _mac(mac)
        self._link_set(lambda: f"set address of {self._name(index)} to {mac}", index,
                       attrs=[("IFLA_ADDRESS", mac)])


# --- the listener: a plain netlink socket and a lean parser (pyroute2 parses ~10k msgs/s at most) ----
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
_RTATTR = struct.Struct("=HH")  # len, type
_U32 = struct.Struct("=I")
_READ_BATCH = 2048  # datagrams per read(): bounded, so a flood cannot keep read() from returning


def _parse_events(data, length: Optional[int] = None) -> list[Event]:
    """Events from one datagram of rtnetlink notifications (any number of messages).

    link: RTM_NEWLINK/RTM_DELLINK of family AF_UNSPEC, and RTM_NEWLINK of family AF_BRIDGE (the
    bridge's port notifications: a port state change produces only that one) as 'new'. The bridge's
    AF_BRIDGE RTM_DELLINK means "port left the bridge", not "link deleted": skipped (an AF_UNSPEC
    RTM_NEWLINK without master reports the release). fdb: RTM_NEWNEIGH/RTM_DELNEIGH of family
    AF_BRIDGE only; other neighbour messages (ARP/NDP) are ignored.
    """
    events = []
    end = len(data) if length is None else length
    hdr_unpack = _NLMSGHDR.unpack_from
    rta_unpack = _RTATTR.unpack_from
    u32_unpack = _U32.unpack_from
    off = 0
    while off + 16 <= end:
        msg_len, msg_type, _flags, _seq, _pid = hdr_unpack(data, off)
        if msg_len < 16 or off + msg_len > end:
            break
        msg_end = off + msg_len
        if msg_type == _RTM_NEWNEIGH or msg_type == _RTM_DELNEIGH:
            if msg_len >= 28:
                family, ifindex, _state, _nflags, _ntype = _NDMSG.unpack_from(data, off + 16)
                if family == _AF_BRIDGE:
                    mac = None
                    master = None
                    pos = off + 28
                    while pos + 4 <= msg_end:
                        rta_len, rta_type = rta_unpack(data, pos)
                        if rta_len < 4 or pos + rta_len > msg_end:
                            break
                        rta_type &= 0x3FFF  # NLA_F_NESTED / NLA_F_NET_BYTEORDER
                        if rta_type == _NDA_LLADDR:
                            mac = bytes(data[pos + 4:pos + rta_len]).hex(":")
                        elif rta_type == _NDA_MASTER and rta_len >= 8:
                            master = u32_unpack(data, pos + 4)[0] or None
                        pos += (rta_len + 3) & ~3
                    events.append(Event("fdb", "new" if msg_type == _RTM_NEWNEIGH else "del", ifindex,
                                        None, master, mac))
        elif msg_type == _RTM_NEWLINK or msg_type == _RTM_DELLINK:
            if msg_len >= 32:
                family, _itype, index, _iflags, _change = _IFINFOMSG.unpack_from(data, off + 16)
                if family == _AF_UNSPEC or (family == _AF_BRIDGE and msg_type == _RTM_NEWLINK):
                    name = None
                    master = None
                    mac = None
                    pos = off + 32
                    while pos + 4 <= msg_end:
                        rta_len, rta_type = rta_unpack(data, pos)
                        if rta_len < 4 or pos + rta_len > msg_end:
                            break
                        rta_type &= 0x3FFF
                        if rta_type == _IFLA_IFNAME:
                            name = bytes(data[pos + 4:pos + rta_len]).split(b"\0", 1)[0].decode(
                                "utf-8", "replace")
                        elif rta_type == _IFLA_MASTER and rta_len >= 8:
                            master = u32_unpack(data, pos + 4)[0] or None
                        elif rta_type == _IFLA_ADDRESS and rta_len > 4:
                            mac = bytes(data[pos + 4:pos + rta_len]).hex(":")
                        pos += (rta_len + 3) & ~3
                    events.append(Event("link", "new" if msg_type == _RTM_NEWLINK else "del", index,
                                        name, master, mac))
        off += (msg_len + 3) & ~3
    return events


class Listener:
    """Subscribes to link and neighbour (fdb) notifications of this network namespace.

    A plain AF_NETLINK socket and a lean parser of the raw messages (pyroute2's parser keeps up with
    ~7-9k fdb events/s; a bridge under a MAC flap produces more). fileno() is an epoll descriptor
    watching that socket: it stays the same when an Overflow replaces the socket, so the caller's
    selector/epoll registration stays valid.
    """

    def __init__(self, rcvbuf: int = 4 * 1024 * 1024) -> None:
        self._rcvbuf = int(rcvbuf)
        self._buf = bytearray(65536)
        self._view = memoryview(self._buf)
        self._sock: Optional[socket.socket] = None
        self._closed = False
        self._ep = select.epoll()
        try:
            self._sock = self._open()
        except BaseException:
            self._ep.close()
            raise

    def _open(self) -> socket.socket:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        except OSError as exc:
            raise HostError(f"open an rtnetlink socket: {_errno_text(exc.errno)}") from None
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, self._rcvbuf)  # beyond rmem_max
            except OSError:  # no CAP_NET_ADMIN: capped at net.core.rmem_max
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)
            sock.bind((0, _RTMGRP_LINK | _RTMGRP_NEIGH))
            sock.setblocking(False)
            self._ep.register(sock.fileno(), select.EPOLLIN)
        except OSError as exc:
            sock.close()
            raise HostError(f"subscribe to link and fdb notifications: {_errno_text(exc.errno)}") from None
        return sock

    def fileno(self) -> int:
        """A descriptor that polls readable while notifications are queued (stable across Overflow)."""
        if self._closed:
            raise ValueError("listener is closed")
        return self._ep.fileno()

    def read(self) -> list[Event]:
        """Events available now (call when fileno() is readable). Raises Overflow after reopening the
        socket when the kernel dropped notifications (ENOBUFS)."""
        if self._closed:
            raise ValueError("listener is closed")
        sock = self._sock
        if sock is None:  # the reopen after an overflow failed: try again; events were lost meanwhile
            self._sock = self._open()
            raise Overflow("rtnetlink notifications were lost while the listener was reopened")
        events: list[Event] = []
        recv_into = sock.recv_into
        buf = self._buf
        view = self._view
        for _ in range(_READ_BATCH):  # bounded: fileno() stays readable when more is queued
            try:
                n = recv_into(view)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self._reopen()
                    raise Overflow("rtnetlink notifications were dropped (ENOBUFS); listener reopened") \
                        from None
                raise HostError(f"read link and fdb notifications: {_errno_text(exc.errno)}") from None
            if n <= 0:
                break
            events.extend(_parse_events(buf, n))
        return events

    def _reopen(self) -> None:
        """After ENOBUFS: close the socket (dropping its backlog of stale notifications), open and
        subscribe a new one."""
        old, self._sock = self._sock, None
        if old is not None:
            try:
                self._ep.unregister(old.fileno())
            except OSError:
                pass
            old.close()
        self._sock = self._open()

    def close(self) -> None:
        self._closed = True
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        if not self._ep.closed:
            self._ep.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- a lean link dump: pyroute2 parses ~1 ms per link, so a 1,000-VM host (2,000+ links) spent seconds
# of every reconcile in links(). This reads the same RTM_NEWLINK dump with only the attributes LinkInfo
# needs; tests/test_nl.py checks it against pyroute2's parse of the same namespace.

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
    pyroute2's parse of the same messages (tests/test_nl.py)."""

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

    def dump_links(self, master: Optional[int] = None) -> list:
        """Every link (with `master`: only the links enslaved to that ifindex, filtered by the kernel)."""
        what = "list links" if master is None else f"list the ports of ifindex {master}"
        seq = self._next_seq()
        body = _IFINFOMSG.pack(_AF_UNSPEC, 0, 0, 0, 0)
        # no counters (IFLA_STATS/STATS64, a third of each message): LinkInfo has none
        body += _RTATTR.pack(8, _IFLA_EXT_MASK) + _U32.pack(_RTEXT_FILTER_SKIP_STATS)
        if master is not None:
            body += _RTATTR.pack(8, _IFLA_MASTER) + _U32.pack(int(master))
        self._drain_stale()
        self.sock.send(_NLMSGHDR.pack(16 + len(body), _RTM_GETLINK, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0) + body)
        links = []
        for msg_seq, msg_type, msg_flags, off, end in self._messages(what):
            if msg_seq != seq:
                continue
            if msg_type == _NLMSG_DONE:
                if msg_flags & _NLM_F_DUMP_INTR:
                    raise HostError(f"{what}: the dump was interrupted by a change; retry")
                return links
            if msg_type == _NLMSG_ERROR:
                raise HostError(f"{what}: {_errno_text(-_I32.unpack_from(self.buf, off + 16)[0])}")
            if msg_type == _RTM_NEWLINK and end - off >= 32:
                links.append(_link_from_raw(self.buf, off, end))
        return links  # not reached: _messages() only ends by raising

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


def dump_links_raw(master: Optional[int] = None) -> list:
    """Every link of this network namespace (with `master`: its ports), from one RTM_GETLINK dump."""
    rt = RawRtnl()
    try:
        return rt.dump_links(master)
    finally:
        rt.close()
