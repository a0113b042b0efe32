"""Kernel UAPI values (rtnetlink, neighbour, bridge) and the message layouts netmedic's lean parsers use,
plus the small helpers every netlink module shares (MAC normalisation, errno text).

Values from the kernel UAPI headers (identical in pyroute2 0.7.2 and 0.9.x; `socket` lacks some).
Importing this module touches nothing on the host.
"""
from __future__ import annotations

import errno
import os
import re
import struct
import sys
from typing import Optional

# --- rtnetlink values -----------------------------------------------------------------------------
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
_RTM_NEWADDR = 20
_RTM_GETADDR = 22
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


if sys.version_info >= (3, 8):
    def hexmac(raw) -> str:
        """b"RT..." -> "52:54:...": a link-layer address in the kernel's colon form."""
        return bytes(raw).hex(":")
else:  # Python 3.7 (the 4.19-era distributions): bytes.hex() takes no separator there
    def hexmac(raw) -> str:
        """b"RT..." -> "52:54:...": a link-layer address in the kernel's colon form."""
        return ":".join(format(b, "02x") for b in raw)


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


# Message layouts shared by the lean reader and the listener.
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_RTATTR = struct.Struct("=HH")  # len, type
_U32 = struct.Struct("=I")
