"""The one module that talks to the kernel's rtnetlink, through pyroute2.

Works with pyroute2 0.7.2 (Debian 12's python3-pyroute2) and 0.9.x (PyPI). Everything above this
module works on the plain frozen dataclasses below, so it is testable without root.

Acts only in the network namespace the process runs in.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

# Neighbour/fdb constants (linux/neighbour.h). pyroute2 0.7.2 has no NTF_STICKY: keep our own.
NUD_PERMANENT = 0x80
NUD_NOARP = 0x40
NUD_REACHABLE = 0x02
NTF_SELF = 0x02
NTF_MASTER = 0x04
NTF_EXT_LEARNED = 0x10
NTF_OFFLOADED = 0x20
NTF_STICKY = 0x40

# Bridge port STP states (linux/if_bridge.h).
BR_STATE_DISABLED = 0
BR_STATE_LISTENING = 1
BR_STATE_LEARNING = 2
BR_STATE_FORWARDING = 3
BR_STATE_BLOCKING = 4
PORT_STATE_NAMES = {0: "disabled", 1: "listening", 2: "learning", 3: "forwarding", 4: "blocking"}


@dataclasses.dataclass(frozen=True)
class BridgeInfo:
    """Attributes of a link of kind 'bridge' (IFLA_INFO_DATA)."""

    stp_state: int  # 0 = STP off
    nf_call_iptables: bool  # per-bridge option; effective = this OR the netns sysctl
    vlan_filtering: bool
    forward_delay: int  # centiseconds, as the kernel reports it
    ageing_time: int  # centiseconds


@dataclasses.dataclass(frozen=True)
class PortInfo:
    """Attributes of a bridge port (IFLA_INFO_SLAVE_DATA of slave kind 'bridge')."""

    state: int  # BR_STATE_*
    learning: bool
    flood: bool  # unicast flood


@dataclasses.dataclass(frozen=True)
class LinkInfo:
    index: int
    name: str
    kind: Optional[str]  # IFLA_INFO_KIND: 'bridge', 'veth', 'tun', 'bond', 'team', 'macvtap', ... or None
    mac: str  # lower-case "aa:bb:cc:dd:ee:ff" ("" when the link has none)
    mtu: int
    up: bool  # IFF_UP (administrative)
    carrier: bool  # IFF_LOWER_UP
    operstate: str  # 'UP', 'DOWN', 'UNKNOWN', ...
    master: Optional[int]  # IFLA_MASTER ifindex, None when not enslaved
    bridge: Optional[BridgeInfo] = None  # set when kind == 'bridge'
    port: Optional[PortInfo] = None  # set when enslaved to a bridge (slave kind 'bridge')
    bond_mode: Optional[int] = None  # IFLA_BOND_MODE when kind == 'bond' (0 = balance-rr)


@dataclasses.dataclass(frozen=True)
class FdbInfo:
    mac: str  # lower-case
    port_index: int  # the port (ndm_ifindex) the entry points to
    bridge_index: Optional[int]  # NDA_MASTER
    vlan: Optional[int]
    state: int  # NUD_* bits
    flags: int  # NTF_* bits

    @property
    def sticky(self) -> bool:
        return bool(self.flags & NTF_STICKY)

    @property
    def static(self) -> bool:
        return bool(self.state & NUD_NOARP)

    @property
    def local(self) -> bool:
        """A bridge-local ('permanent') entry: the bridge's or a port's own address."""
        return bool(self.state & NUD_PERMANENT)


@dataclasses.dataclass(frozen=True)
class Event:
    """One rtnetlink notification, reduced to what the dispatcher needs."""

    kind: str  # 'link' or 'fdb'
    action: str  # 'new' or 'del'
    index: int  # link ifindex (link) or port ifindex (fdb)
    name: Optional[str] = None  # link name (link events)
    master: Optional[int] = None  # IFLA_MASTER (link) or NDA_MASTER (fdb)
    mac: Optional[str] = None  # fdb events


class Overflow(Exception):
    """The netlink socket overflowed (ENOBUFS): events were lost; the listener has been reopened and the
    caller must resync with a full observation."""


class Netlink:
    """A pyroute2 IPRoute in the current network namespace, with the few calls netmedic needs."""

    def __init__(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- reads -----------------------------------------------------------------------------
    def links(self) -> list[LinkInfo]:
        """All links of this network namespace."""
        raise NotImplementedError

    def link(self, name_or_index) -> Optional[LinkInfo]:
        """One link by name or ifindex, None when it does not exist."""
        raise NotImplementedError

    def fdb_get(self, bridge_index: int, mac: str, vlan: Optional[int] = None) -> Optional[FdbInfo]:
        """The bridge's fdb entry for MAC (per-MAC kernel lookup, RTM_GETNEIGH without NLM_F_DUMP, like
        `bridge fdb get MAC br BR`), or None when the bridge has no entry for it. Cost independent of
        the fdb's size."""
        raise NotImplementedError

    def fdb_dump(self, bridge_index: int) -> list[FdbInfo]:
        """Every fdb entry of one bridge, filtered kernel-side (NDA_MASTER in the dump request)."""
        raise NotImplementedError

    def addresses(self) -> dict[int, list[str]]:
        """IPv4/IPv6 addresses by ifindex, as 'addr/prefixlen'."""
        raise NotImplementedError

    # --- writes ----------------------------------------------------------------------------
    def fdb_pin(self, port_index: int, mac: str, vlan: Optional[int] = None) -> None:
        """Make MAC a 'static sticky' master entry on the port (replace: also moves an entry that was
        learned on another port). Learning can no longer move it."""
        raise NotImplementedError

    def fdb_delete(self, port_index: int, mac: str, vlan: Optional[int] = None) -> None:
        """Delete the master fdb entry for MAC on the port. Missing entry: no error."""
        raise NotImplementedError

    def set_master(self, index: int, master_index: int) -> None:
        """Enslave the link to master_index; 0 releases it (nomaster)."""
        raise NotImplementedError

    def set_up(self, index: int, up: bool) -> None:
        raise NotImplementedError

    def set_mtu(self, index: int, mtu: int) -> None:
        raise NotImplementedError

    def set_port(self, index: int, state: Optional[int] = None, learning: Optional[bool] = None,
                 flood: Optional[bool] = None) -> None:
        """Set bridge-port attributes (IFLA_BRPORT_*) without touching the link's up/down state."""
        raise NotImplementedError

    def set_bridge(self, index: int, nf_call_iptables: Optional[bool] = None) -> None:
        """Set bridge attributes (IFLA_BR_*)."""
        raise NotImplementedError


class Listener:
    """Subscribes to link and neighbour (fdb) notifications of this network namespace."""

    def __init__(self, rcvbuf: int = 4 * 1024 * 1024) -> None:
        raise NotImplementedError

    def fileno(self) -> int:
        raise NotImplementedError

    def read(self) -> list[Event]:
        """Events available now (call when fileno() is readable). Raises Overflow after reopening the
        socket when the kernel dropped notifications (ENOBUFS)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError
