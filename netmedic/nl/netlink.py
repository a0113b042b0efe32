"""Netlink: netmedic's pyroute2 connection, with the writes (fdb pins, port state, VLANs, MTU, master)
and the pyroute2 reads; the hot-path reads go through netmedic.nl.reader.RawRtnl (Netlink.raw).

Works with pyroute2 0.7.2 (Debian 12's python3-pyroute2) and 0.9.x (PyPI); pyroute2 is imported on
first use. Acts only in the network namespace the process runs in.

Why ~500 lines: each write and its pyroute2 0.7.2/0.9.x differences sit together (one method per
kernel operation); splitting them would separate a write from the version quirks it depends on.
"""
from __future__ import annotations

import errno
import types
from typing import Optional

from netmedic.errors import HostError
from netmedic.nl.data import (
    BR_STATE_DISABLED,
    NTF_MASTER,
    NTF_STICKY,
    NUD_NOARP,
    PORT_STATE_NAMES,
    BridgeInfo,
    FdbInfo,
    LinkInfo,
    PortInfo,
    VlanInfo,
)
from netmedic.nl.reader import (
    RawRtnl,
)
from netmedic.nl.uapi import (
    _AF_BRIDGE,
    _AF_UNSPEC,
    _BRIDGE_VLAN_INFO_PVID,
    _BRIDGE_VLAN_INFO_UNTAGGED,
    _IFF_LOWER_UP,
    _IFF_UP,
    _IFLA_EXT_MASK_BRVLAN,
    _IFNAMSIZ,
    _NETLINK_GET_STRICT_CHK,
    _NLM_F_ACK,
    _NLM_F_CREATE,
    _NLM_F_DUMP,
    _NLM_F_DUMP_INTR,
    _NLM_F_REPLACE,
    _NLM_F_REQUEST,
    _RTM_DELLINK,
    _RTM_DELNEIGH,
    _RTM_GETLINK,
    _RTM_GETNEIGH,
    _RTM_NEWLINK,
    _RTM_NEWNEIGH,
    _RTM_SETLINK,
    _SOL_NETLINK,
    _errno_text,
    _mac,
)

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
        # Both sockets open on first use: a pass that only reads goes through the lean reader (RawRtnl)
        # and never pays pyroute2's import and IPRoute's setup (~0.3 s in a one-shot command or a hook).
        self._ipr = None
        self._raw: Optional[RawRtnl] = None
        self._closed = False

    @property
    def _pr(self):
        return _pyroute2()

    def _open_ipr(self):
        pr = _pyroute2()
        try:
            try:
                ipr = pr.IPRoute(ext_ack=True)  # the kernel's extended ack text goes into HostError
            except TypeError:
                ipr = pr.IPRoute()
        except OSError as exc:
            raise HostError(f"open an rtnetlink socket: {_errno_text(exc.errno)}") from None
        # pyroute2 0.9.x: the sync IPRoute never sets status['nlm_generator'] (NetlinkSocket.__init__
        # does), so IPRoute.nlm_request() raises KeyError. Set it the way the base class would.
        asyncore = getattr(ipr, "asyncore", None)
        if asyncore is not None:
            status = asyncore.status
            if "nlm_generator" not in status:
                status["nlm_generator"] = False
        return ipr

    def close(self) -> None:
        self._closed = True
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
        """pyroute2's IPRoute (opened on first use: the writes and the reads the lean reader lacks)."""
        if self._closed:
            raise HostError("netlink connection already closed")
        if self._ipr is None:
            self._ipr = self._open_ipr()
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
            if not self._closed and int(index) > 0:
                link = self.raw.get_link(index=int(index))
                name = link.name if link is not None else None
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
            if self._closed:
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
        """IPv4/IPv6 addresses by ifindex, as 'addr/prefixlen' (the lean reader: pyroute2's parse of the
        dump cost most of a narrowed pass)."""
        out: dict[int, list[str]] = {}
        for index, addr in self.raw.dump_addresses():
            out.setdefault(index, []).append(addr)
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
