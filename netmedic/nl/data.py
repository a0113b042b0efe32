"""The plain data of netlink: constants and the frozen dataclasses every layer above the kernel works on.

Importing this module touches nothing on the host (no socket, no pyroute2): invariants and healers use
it, and so do unit tests without root.
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
class VlanInfo:
    """One VLAN of a bridge port's VLAN table (vlan_filtering bridges; `bridge vlan show`)."""

    vid: int
    pvid: bool  # untagged ingress frames are classified into this VLAN
    untagged: bool  # egress untagged


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
    mac: Optional[str] = None  # NDA_LLADDR (fdb) or IFLA_ADDRESS (link, when it has one)


class Overflow(Exception):
    """The netlink socket overflowed (ENOBUFS): events were lost; the listener has been reopened and the
    caller must resync with a full observation."""
