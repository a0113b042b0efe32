"""`diagnose --probe`: what diagnose itself sends and watches (no invariant judges this).

One capture loop on raw AF_PACKET sockets (no tcpdump, no text parsing):
- an ARP probe of the VM's address sent from its bridge, and the replies (who answers for the address);
- frames carrying the VM's MAC on the bridge's uplinks: a byte copy of a frame the uplink sent out
  shortly before is a reflection, any other a remote duplicate's;
- the VM MAC's DHCP exchange (DISCOVER / OFFER / REQUEST / ACK / NAK, matched on the BOOTP chaddr) on
  the VM's tap, the bridge's uplinks and the bridge itself, with the direction on each.

How long the DHCP watch lasts, and why: a DHCP client retransmits its DISCOVER every few seconds (RFC
2131 §4.1: about 4 s, then 8 s, randomized by ±1 s; busybox udhcpc every 3 s; ISC dhclient from 1-2 s,
backing off). DHCP_SECONDS (12 s) sees at least two attempts of each; the watch ends as soon as an ACK
has reached the tap.

Each DHCP frame's IPv4 UDP checksum is verified (`udp_checksum`: pseudo-header + UDP). The kernel says, in
PACKET_AUXDATA, when a frame's checksum is not computed yet (TP_STATUS_CSUMNOTREADY: checksum offload, a
CHECKSUM_PARTIAL frame whose field holds only the pseudo-header sum): that is "partial", not "bad" — the
device would fill it, but a frame leaving a tap for a guest is handed over as it is.
"""
from __future__ import annotations

import ipaddress
import select
import socket
import struct
import time
from typing import Optional

from netmedic.nl.uapi import hexmac

ETH_P_ALL, ETH_P_ARP, PACKET_OUTGOING = 0x0003, 0x0806, 4
# <linux/if_packet.h>: struct tpacket_auxdata {u32 tp_status, tp_len, tp_snaplen; u16 tp_mac, tp_net,
# tp_vlan_tci, tp_vlan_tpid} (20 bytes), read through recvmsg's ancillary data once PACKET_AUXDATA is set.
SOL_PACKET, PACKET_AUXDATA, TP_STATUS_CSUMNOTREADY = 263, 8, 8
AUXDATA_SPACE = socket.CMSG_SPACE(20)
DHCP_SECONDS = 12.0
DHCP_TYPES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK", 7: "RELEASE",
              8: "INFORM"}
MAX_EVENTS = 64


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def arp_request(src_mac: str, src_ip: Optional[str], target_ip: str) -> bytes:
    """A broadcast ARP request; with no src_ip an RFC 5227 ARP probe (sender IP 0.0.0.0)."""
    smac = _mac_bytes(src_mac)
    sip = ipaddress.IPv4Address(src_ip or "0.0.0.0").packed
    return (b"\xff" * 6 + smac + struct.pack("!H", ETH_P_ARP)
            + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + smac + sip + b"\0" * 6
            + ipaddress.IPv4Address(target_ip).packed)


def _ipv4_udp(frame: bytes) -> Optional[tuple]:
    """(IPv4 header offset, UDP header offset) of an IPv4 UDP frame's first fragment (Ethernet, optional
    802.1Q / 802.1ad tags), or None."""
    off = 12
    if len(frame) < off + 2:
        return None
    ethertype = struct.unpack_from("!H", frame, off)[0]
    while ethertype in (0x8100, 0x88A8) and len(frame) >= off + 6:
        off += 4
        ethertype = struct.unpack_from("!H", frame, off)[0]
    off += 2
    if ethertype != 0x0800 or len(frame) < off + 20:
        return None
    ihl = (frame[off] & 0x0F) * 4
    frag = struct.unpack_from("!H", frame, off + 6)[0]
    if frame[off + 9] != 17 or frag & 0x1FFF or ihl < 20:  # UDP, first fragment
        return None
    if len(frame) < off + ihl + 8:
        return None
    return off, off + ihl


def parse_dhcp(frame: bytes) -> Optional[tuple]:
    """(message type name, client MAC, xid) of a DHCPv4 frame (Ethernet, optional 802.1Q tags, IPv4, UDP
    67/68, BOOTP with the magic cookie), or None."""
    at = _ipv4_udp(frame)
    if at is None:
        return None
    udp = at[1]
    sport, dport = struct.unpack_from("!HH", frame, udp)
    if not ({sport, dport} <= {67, 68}):
        return None
    b = udp + 8
    if len(frame) < b + 240 or frame[b + 236:b + 240] != b"\x63\x82\x53\x63":
        return None
    chaddr = hexmac(frame[b + 28:b + 34])
    xid = struct.unpack_from("!I", frame, b + 4)[0]
    i = b + 240
    while i < len(frame):
        code = frame[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(frame):
            break
        length = frame[i + 1]
        if code == 53 and length >= 1 and i + 2 < len(frame):
            return DHCP_TYPES.get(frame[i + 2], str(frame[i + 2])), chaddr, xid
        i += 2 + length
    return None


def _ones_sum(data: bytes) -> int:
    """The 16-bit one's complement sum of `data` (RFC 1071) modulo 0xFFFF (0 stands for both zeros): as 2**16
    is 1 modulo 0xFFFF, the bytes read as one big-endian integer are congruent to the sum of their words."""
    if len(data) % 2:
        data += b"\0"
    return int.from_bytes(data, "big") % 0xFFFF


def udp_checksum(frame: bytes, not_ready: bool = False) -> Optional[tuple]:
    """(status, checksum found, checksum expected) of an IPv4 UDP frame, or None when it is not one or is cut
    short. status: "ok"; "none" (0: no checksum, valid for IPv4); "bad"; "partial" when `not_ready` (the
    kernel's TP_STATUS_CSUMNOTREADY: offload will fill it later — the field holds the pseudo-header sum)."""
    at = _ipv4_udp(frame)
    if at is None:
        return None
    ip, udp = at
    length, found = struct.unpack_from("!HH", frame, udp + 4)
    if length < 8 or len(frame) < udp + length:
        return None
    pseudo = frame[ip + 12:ip + 20] + struct.pack("!BBH", 0, 17, length)
    rest = _ones_sum(pseudo + frame[udp:udp + 6] + frame[udp + 8:udp + length])
    expected = 0xFFFF - rest  # a computed 0 is sent as 0xFFFF (RFC 768)
    if not_ready:
        status = "partial"
    elif found == 0:
        status = "none"
    else:
        status = "ok" if (rest + found) % 0xFFFF == 0 else "bad"
    return status, found, expected


def _recv(s: socket.socket) -> tuple:
    """(frame, address, checksum not ready) from a capture socket with PACKET_AUXDATA on."""
    data, anc, _flags, addr = s.recvmsg(65535, AUXDATA_SPACE)
    not_ready = False
    for level, kind, aux in anc:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(aux) >= 4:
            not_ready = bool(struct.unpack_from("=I", aux)[0] & TP_STATUS_CSUMNOTREADY)
    return data, addr, not_ready


def checksum_fields(frame: bytes, not_ready: bool) -> dict:
    """An event's `udp_checksum` (ok, none, bad, partial; None when it cannot be checked) and, unless ok or
    none, the checksum found and the one expected."""
    got = udp_checksum(frame, not_ready)
    if got is None:
        return {"udp_checksum": None}
    status, found, expected = got
    if status in ("ok", "none"):
        return {"udp_checksum": status}
    return {"udp_checksum": status, "checksum_found": f"0x{found:04x}", "checksum_expected": f"0x{expected:04x}"}


def _open(name: str) -> Optional[socket.socket]:
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((name, ETH_P_ALL))
        s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        s.setblocking(False)
        return s
    except OSError:
        return None


def run_probe(snap, nic, vm_ip: Optional[str], seconds: float = 1.5, dhcp_seconds: float = DHCP_SECONDS,
              uplinks: tuple = ()) -> dict:
    """ARP-probe the VM's address from its bridge while capturing on the tap, the uplinks and the bridge
    (see the module docstring). `uplinks`: LinkInfo of the bridge's uplink ports."""
    br = snap.bridge(nic.bridge)
    vm = _mac_bytes(nic.mac)
    roles: dict = {}  # socket -> (interface name, role)
    arp = None
    result = {"arp": None, "capture": None, "dhcp": None}
    try:
        for u in uplinks:
            s = _open(u.name)
            if s is not None:
                roles[s] = (u.name, "uplink")
        for name, role in ((nic.tap, "tap"), (br.name if br is not None else None, "bridge")):
            s = _open(name) if name else None
            if s is not None:
                roles[s] = (name, role)
        if vm_ip and br is not None and ipaddress.ip_address(vm_ip).version == 4:
            arp = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
            arp.bind((br.name, ETH_P_ARP))
            arp.setblocking(False)
            src_ip = None
            for a in (snap.addresses or {}).get(br.index, []):
                iface = ipaddress.ip_interface(a)
                if iface.version == 4 and ipaddress.ip_address(vm_ip) in iface.network:
                    src_ip = str(iface.ip)
            arp.send(arp_request(br.mac, src_ip, vm_ip))
            result["arp"] = {"target": vm_ip, "sender_ip": src_ip or "0.0.0.0", "from": br.name, "replies": []}
        outgoing: list = []  # (time, bytes) sent out of an uplink with the VM's MAC
        counts = {"outgoing": 0, "incoming": 0, "reflected": 0, "remote": 0}
        events: list = []
        seen: dict = {}  # interface -> sorted list of "TYPE in|out"
        start = time.monotonic()
        arp_end, dhcp_end = start + seconds, start + max(0.0, dhcp_seconds)
        acked = False
        while True:
            now = time.monotonic()
            deadline = max(arp_end, start if acked else dhcp_end)
            if now >= deadline:
                break
            rlist = list(roles) + ([arp] if arp is not None else [])
            ready, _, _ = select.select(rlist, [], [], deadline - now)
            now = time.monotonic()
            for s in ready:
                try:
                    if s is arp:
                        data, addr = s.recvfrom(65535)
                    else:
                        data, addr, not_ready = _recv(s)
                except (BlockingIOError, InterruptedError):
                    continue
                if s is arp:
                    if len(data) >= 42 and data[20:22] == b"\x00\x02" and \
                            ipaddress.IPv4Address(data[28:32]) == ipaddress.IPv4Address(vm_ip):
                        mac = hexmac(data[22:28])
                        if mac not in result["arp"]["replies"]:
                            result["arp"]["replies"].append(mac)
                    continue
                name, role = roles[s]
                out = addr[2] == PACKET_OUTGOING
                dhcp = parse_dhcp(data)
                if dhcp is not None and dhcp[1] == nic.mac and now <= dhcp_end:
                    direction = "out" if out else "in"
                    seen.setdefault(name, set()).add(f"{dhcp[0]} {direction}")
                    if len(events) < MAX_EVENTS:
                        events.append({"t": round(now - start, 3), "interface": name, "role": role,
                                       "direction": direction, "type": dhcp[0], "xid": f"{dhcp[2]:08x}",
                                       **checksum_fields(data, not_ready)})
                    if role == "tap" and out and dhcp[0] == "ACK":
                        acked = True
                if role != "uplink" or data[6:12] != vm or now > arp_end:
                    continue
                if out:
                    counts["outgoing"] += 1
                    outgoing.append((now, data))
                    continue
                counts["incoming"] += 1
                match = next((i for i, (t, d) in enumerate(outgoing) if d == data and now - t < 1.0), None)
                if match is not None:
                    counts["reflected"] += 1
                    del outgoing[match]
                else:
                    counts["remote"] += 1
        ups = [n for n, r in roles.values() if r == "uplink"]
        result["capture"] = {"ports": ups, "seconds": seconds, **counts}
        result["dhcp"] = {"seconds": round(time.monotonic() - start, 2), "window_seconds": dhcp_seconds,
                          "stopped_at_ack": acked, "tap": nic.tap, "uplinks": ups,
                          "bridge": br.name if br is not None else None,
                          "seen": {k: sorted(v) for k, v in seen.items()}, "events": events}
    finally:
        for s in list(roles) + ([arp] if arp is not None else []):
            try:
                s.close()
            except OSError:
                pass
    return result
