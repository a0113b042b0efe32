"""netmedic.nl's parsers and helpers without a kernel: pyroute2 messages built by hand, synthetic
notification datagrams, MAC normalisation and errno text (tests/integration/test_nl.py runs the rest
against real kernels)."""
from __future__ import annotations

import struct

import pytest
from snapshots import pyroute2_events

from netmedic import nl


def test_link_from_msg_bond_mode():
    """bond is not built into this kernel: the parse of IFLA_BOND_MODE, on a message pyroute2 encodes."""
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    for mode in (0, 4):
        msg = ifinfmsg()
        msg["index"] = 7
        msg["flags"] = 0x1  # IFF_UP, no carrier
        msg["attrs"] = [["IFLA_IFNAME", "bond0"], ["IFLA_ADDRESS", "AA:BB:CC:DD:EE:01"],
                        ["IFLA_MTU", 9000], ["IFLA_OPERSTATE", "DOWN"], ["IFLA_MASTER", 3],
                        ["IFLA_LINKINFO", {"attrs": [["IFLA_INFO_KIND", "bond"],
                                                     ["IFLA_INFO_DATA", {"attrs": [["IFLA_BOND_MODE", mode]]}]]}]]
        msg["header"]["type"] = 16
        msg.encode()
        parsed = ifinfmsg(msg.data)
        parsed.decode()
        info = nl.netlink._link_from_msg(parsed)
        assert info == nl.LinkInfo(index=7, name="bond0", kind="bond", mac="aa:bb:cc:dd:ee:01", mtu=9000,
                                   up=True, carrier=False, operstate="DOWN", master=3, bond_mode=mode)


def test_parse_events_synthetic():
    """Parser edge cases on messages pyroute2 encodes: several messages in one datagram, non-bridge
    neighbours, AF_BRIDGE link deletion, truncated data."""
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    from pyroute2.netlink.rtnl.ndmsg import ndmsg

    def neigh(mtype, family, ifindex, mac, master=None, seq=1):
        m = ndmsg()
        m["header"]["type"] = mtype
        m["header"]["sequence_number"] = seq
        m["family"] = family
        m["ifindex"] = ifindex
        m["state"] = nl.NUD_REACHABLE
        attrs = [["NDA_LLADDR", mac]]
        if master is not None:
            attrs.append(["NDA_MASTER", master])
        if family == 2:
            attrs.insert(0, ["NDA_DST", "198.51.100.7"])
        m["attrs"] = attrs
        m.encode()
        return bytes(m.data)

    def link(mtype, family, index, name, master=None):
        m = ifinfmsg()
        m["header"]["type"] = mtype
        m["family"] = family
        m["index"] = index
        attrs = [["IFLA_IFNAME", name], ["IFLA_MTU", 1500]]
        if master is not None:
            attrs.append(["IFLA_MASTER", master])
        m["attrs"] = attrs
        m.encode()
        return bytes(m.data)

    datagram = b"".join([
        neigh(28, 7, 5, "52:54:00:AA:BB:CC", master=3),
        neigh(28, 2, 3, "02:00:00:00:00:07"),  # AF_INET: ignored
        neigh(29, 7, 6, "52:54:00:aa:bb:cd"),  # self entry: no NDA_MASTER
        link(16, 0, 5, "vnet0", master=3),
        link(17, 7, 5, "vnet0", master=3),  # port left the bridge: ignored
        link(16, 7, 5, "vnet0", master=3),  # port notification
        link(17, 0, 6, "vnet1"),
    ])
    expected = [
        nl.Event("fdb", "new", 5, None, 3, "52:54:00:aa:bb:cc"),
        nl.Event("fdb", "del", 6, None, None, "52:54:00:aa:bb:cd"),
        nl.Event("link", "new", 5, "vnet0", 3),
        nl.Event("link", "new", 5, "vnet0", 3),
        nl.Event("link", "del", 6, "vnet1", None),
    ]
    assert nl.listener._parse_events(datagram) == expected
    assert pyroute2_events(datagram) == expected
    assert nl.listener._parse_events(bytearray(datagram) + bytearray(100), len(datagram)) == expected
    for cut in range(0, len(datagram), 7):  # truncated input never raises
        nl.listener._parse_events(datagram[:cut])
    bad = bytearray(datagram)
    struct.pack_into("=I", bad, 0, 10)  # nlmsg_len below the header size
    assert nl.listener._parse_events(bytes(bad)) == []


def test_mac_validation():
    assert nl.uapi._mac("52:54:00:AA:bb:CC") == "52:54:00:aa:bb:cc"
    assert nl.uapi._mac("52-54-00-aa-bb-cc") == "52:54:00:aa:bb:cc"
    for bad in ("", "52:54:00:aa:bb", "52:54:00:aa:bb:cc:dd", "zz:54:00:aa:bb:cc", "5254.00aa.bbcc"):
        with pytest.raises(ValueError):
            nl.uapi._mac(bad)


def test_errno_text():
    assert nl.uapi._errno_text(1) == "Operation not permitted (EPERM)"
    assert nl.uapi._errno_text(-95) == "Operation not supported (EOPNOTSUPP)"
    assert nl.uapi._errno_text(22, "mtu less than device minimum") == \
        "Invalid argument (EINVAL): mtu less than device minimum"
    assert nl.uapi._errno_text(22, "Invalid argument") == "Invalid argument (EINVAL)"
