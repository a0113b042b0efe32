"""netmedic's netlink layer, one module per role:

- netmedic.nl.data: the constants and frozen dataclasses every layer above the kernel works on
  (importing it touches nothing; invariants and healers use only this);
- netmedic.nl.uapi: kernel UAPI values, message layouts, MAC and errno helpers;
- netmedic.nl.netlink: Netlink, the pyroute2 connection, with every netlink write;
- netmedic.nl.reader: RawRtnl, the lean reader of the hot path (raw socket, raw parsers);
- netmedic.nl.listener: Listener, the link/fdb notification stream the daemon watches.

The public names are re-exported here (`from netmedic import nl; nl.Netlink, nl.Listener, nl.FdbInfo`).
Works with pyroute2 0.7.2 (Debian 12's python3-pyroute2) and 0.9.x (PyPI); pyroute2 is imported only
when a Netlink is opened. Acts only in the network namespace the process runs in.
"""
from netmedic.errors import HostError
from netmedic.nl.data import (
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
from netmedic.nl.listener import Listener
from netmedic.nl.netlink import Netlink
from netmedic.nl.reader import RawRtnl, dump_links_raw
from netmedic.nl.uapi import hexmac

__all__ = [
    "BR_STATE_BLOCKING", "BR_STATE_DISABLED", "BR_STATE_FORWARDING", "BR_STATE_LEARNING", "BR_STATE_LISTENING",
    "NTF_EXT_LEARNED", "NTF_MASTER", "NTF_OFFLOADED", "NTF_SELF", "NTF_STICKY", "NUD_NOARP", "NUD_PERMANENT",
    "NUD_REACHABLE", "PORT_STATE_NAMES", "BridgeInfo", "Event", "FdbInfo", "HostError", "LinkInfo", "Listener",
    "Netlink", "Overflow", "PortInfo", "RawRtnl", "VlanInfo", "dump_links_raw", "hexmac",
]
