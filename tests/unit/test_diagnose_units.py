"""Unit tests (no root, no namespaces) of the pieces behind `netmedic diagnose`'s new hops: the DHCP frame
parser, the inventory of macvtap/hostdev NICs, the daemon's ring of fdb moves, the new observe-only
invariants on synthetic snapshots, and how violations land on hops."""
from __future__ import annotations

import dataclasses
import struct

from snapshots import bridge, nic, snapshot, tap, uplink, write

from netmedic import inventory
from netmedic.diagnose.dhcp import checksum_drops
from netmedic.diagnose.hops import concerns
from netmedic.diagnose.probe import checksum_fields, parse_dhcp, udp_checksum
from netmedic.facts import Counters, DirectLink, RouteLookup
from netmedic.fdbmoves import FdbMoves
from netmedic.model import Subject, Violation
from netmedic.nl.data import Event
from netmedic.policies import INVARIANTS

MAC = "52:54:00:aa:00:01"


def dhcp_frame(msgtype: int, chaddr: str = MAC, vlan: bool = False, sport: int = 68, dport: int = 67) -> bytes:
    bootp = bytearray(240)
    bootp[0] = 1
    struct.pack_into("!I", bootp, 4, 0x1234ABCD)
    bootp[28:34] = bytes.fromhex(chaddr.replace(":", ""))
    bootp[236:240] = b"\x63\x82\x53\x63"
    bootp += bytes([53, 1, msgtype, 255])
    udp = struct.pack("!HHHH", sport, dport, 8 + len(bootp), 0) + bytes(bootp)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, b"\0" * 4, b"\xff" * 4) + udp
    eth = b"\xff" * 6 + bytes.fromhex(chaddr.replace(":", ""))
    if vlan:
        eth += b"\x81\x00\x00\x0a"
    return eth + b"\x08\x00" + ip


def test_parse_dhcp_reads_the_message_type_and_the_client_mac():
    assert parse_dhcp(dhcp_frame(1)) == ("DISCOVER", MAC, 0x1234ABCD)
    assert parse_dhcp(dhcp_frame(5, vlan=True, sport=67, dport=68))[0] == "ACK"
    assert parse_dhcp(dhcp_frame(2, chaddr="02:00:00:00:00:09"))[:2] == ("OFFER", "02:00:00:00:00:09")
    assert parse_dhcp(dhcp_frame(1, dport=53)) is None  # not DHCP
    assert parse_dhcp(dhcp_frame(1)[:100]) is None  # truncated
    assert parse_dhcp(b"\xff" * 12 + b"\x08\x06" + b"\0" * 28) is None  # ARP


def with_checksum(frame: bytes, vlan: bool = False, src: str = "198.51.100.1", dst: str = "198.51.100.50",
                  flip: bool = False) -> bytes:
    """`frame` (dhcp_frame's) with real addresses and its UDP checksum computed here the long way (RFC 768:
    the one's complement of the one's complement sum, 0 sent as 0xFFFF); `flip`: that value XOR 0xFFFF."""
    eth = 18 if vlan else 14
    f = bytearray(frame)
    f[eth + 12:eth + 20] = bytes(int(x) for x in src.split(".")) + bytes(int(x) for x in dst.split("."))
    udp = bytes(f[eth + 20:])
    words = bytes(f[eth + 12:eth + 20]) + bytes([0, 17]) + len(udp).to_bytes(2, "big") + udp
    words += b"\0" * (len(words) % 2)
    total = 0
    for i in range(0, len(words), 2):
        total += words[i] << 8 | words[i + 1]
    total = total % 0xFFFF  # end-around carry
    csum = (0xFFFF - total) or 0xFFFF
    if flip:
        csum ^= 0xFFFF
    struct.pack_into("!H", f, eth + 26, csum)
    return bytes(f)


def test_udp_checksum_good_bad_zero_and_vlan_tagged():
    for vlan in (False, True):
        good = with_checksum(dhcp_frame(2, vlan=vlan, sport=67, dport=68), vlan)
        status, found, expected = udp_checksum(good)
        assert status == "ok" and found == expected, (vlan, found, expected)
        bad = with_checksum(dhcp_frame(2, vlan=vlan, sport=67, dport=68), vlan, flip=True)
        assert udp_checksum(bad) == ("bad", expected ^ 0xFFFF, expected)
        assert checksum_fields(bad, False) == {"udp_checksum": "bad", "checksum_found": f"0x{expected ^ 0xFFFF:04x}",
                                               "checksum_expected": f"0x{expected:04x}"}
        assert checksum_fields(good, False) == {"udp_checksum": "ok"}
        # The kernel says the checksum is not computed yet (offload): partial, whatever the field holds.
        assert udp_checksum(bad, not_ready=True)[0] == "partial"
    zero = dhcp_frame(2, sport=67, dport=68)  # dhcp_frame leaves the checksum 0: none, valid for IPv4
    assert udp_checksum(zero)[:2] == ("none", 0)
    assert udp_checksum(zero[:-10]) is None  # cut short of the UDP length
    assert udp_checksum(b"\xff" * 12 + b"\x08\x06" + b"\0" * 28) is None  # ARP
    # An odd UDP length (one option byte more) and Ethernet padding after the datagram.
    odd = bytearray(dhcp_frame(1))
    odd[-1:] = bytes([0, 255])
    struct.pack_into("!H", odd, 14 + 2, len(odd) - 14)
    struct.pack_into("!H", odd, 14 + 24, len(odd) - 34)
    odd = with_checksum(bytes(odd))
    assert udp_checksum(odd)[0] == "ok" and udp_checksum(odd + b"\0" * 7)[0] == "ok"


def _ev(t, direction, kind, csum="ok", interface="vnet0", role="tap"):
    e = {"t": t, "interface": interface, "role": role, "direction": direction, "type": kind, "xid": "00000001",
         "udp_checksum": csum}
    if csum in ("bad", "partial"):
        e.update(checksum_found="0x1234", checksum_expected="0xedcb")
    return e


def test_checksum_drops_needs_a_bad_offer_then_a_discover():
    bad = [_ev(0.1, "in", "DISCOVER"), _ev(0.2, "out", "OFFER", "bad"), _ev(2.1, "in", "DISCOVER")]
    assert checksum_drops(bad, "vnet0") == [bad[1]]
    partial = [_ev(0.1, "in", "DISCOVER"), _ev(0.2, "out", "OFFER", "partial"), _ev(2.1, "in", "DISCOVER")]
    assert checksum_drops(partial, "vnet0") == [partial[1]]
    good = [_ev(0.1, "in", "DISCOVER"), _ev(0.2, "out", "OFFER"), _ev(2.1, "in", "DISCOVER")]
    assert checksum_drops(good, "vnet0") == []
    requested = [_ev(0.1, "in", "DISCOVER"), _ev(0.2, "out", "OFFER", "partial"), _ev(0.3, "in", "REQUEST"),
                 _ev(6.0, "in", "DISCOVER")]
    assert checksum_drops(requested, "vnet0") == []  # the guest took it
    last = [_ev(0.1, "in", "DISCOVER"), _ev(0.2, "out", "OFFER", "bad")]
    assert checksum_drops(last, "vnet0") == []  # no DISCOVER after it (yet)
    uplink = [_ev(0.1, "out", "OFFER", "bad", "uplink0", "uplink"), _ev(2.1, "in", "DISCOVER")]
    assert checksum_drops(uplink, "vnet0") == []  # only OFFERs leaving the tap


def test_the_checksum_verdict_names_where_to_fix_it():
    from netmedic.diagnose.dhcp import _checksum_verdict

    local = [_ev(0.1, "in", "DISCOVER"), _ev(0.2, "out", "OFFER", "partial"), _ev(2.1, "in", "DISCOVER")]
    summary, fix, ev = _checksum_verdict(checksum_drops(local, "vnet0"), local, "vnet0", "virbr1",
                                         "network nat1's dnsmasq")
    assert "carry a bad UDP checksum (not filled: checksum offload" in summary and "NEEDS_CSUM" in summary
    assert "drops them and asks again" in summary and "0x1234 where 0xedcb is expected" in summary
    assert fix.startswith("on the side of network nat1's dnsmasq") and "--checksum-fill" in fix
    assert "`ethtool -K virbr1 tx off`" in fix and "`ethtool -K vnet0 tx off`" in fix
    assert ev["found"] == "0x1234" and ev["expected"] == "0xedcb" and ev["already_bad_on"] == [] and ev["note"]
    lan = [_ev(0.2, "in", "OFFER", "bad", "uplink0", "uplink")] + [dict(e, udp_checksum="bad") for e in local]
    summary, fix, ev = _checksum_verdict(checksum_drops(lan, "vnet0"), lan, "vnet0", "br0", "the LAN's DHCP server")
    assert "(0x1234 where 0xedcb is expected;" in summary and "note" not in ev
    assert ev["already_bad_on"] == ["uplink0"] and "already bad on uplink0): on its host" in fix
    assert "ethtool -K br0" not in fix


def test_inventory_keeps_macvtap_and_hostdev_nics_apart(tmp_path):
    xml = f"""<domstatus state='running'><domain type='kvm'><name>d</name><uuid>u</uuid><devices>
      <interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br0'/><target dev='vnet0'/></interface>
      <interface type='direct'><mac address='{MAC}'/><source dev='eth1' mode='bridge'/><target dev='macvtap0'/></interface>
      <interface type='direct'><mac address='52:54:00:00:00:03'/><source dev='eth2'/></interface>
      <interface type='network'><mac address='52:54:00:00:00:04'/><source network='pool'/>
        <actual type='direct'><source dev='eth3' mode='private'/></actual><target dev='macvtap1'/></interface>
      <interface type='hostdev' managed='yes'><mac address='52:54:00:00:00:05'/>
        <source><address type='pci' domain='0x0000' bus='0x03' slot='0x10' function='0x2'/></source></interface>
    </devices></domain></domstatus>"""
    write(tmp_path / "qemu", "d.xml", xml)
    write(tmp_path / "net", "pool.xml", "<network><name>pool</name><forward mode='bridge'><interface dev='eth3'/>"
                                         "</forward></network>")
    inv = inventory.load(str(tmp_path / "qemu"), str(tmp_path / "net"))
    assert not inv.errors
    assert [(n.mac, n.bridge, n.tap) for n in inv.nics] == [("52:54:00:00:00:01", "br0", "vnet0")]
    direct = [(n.type, n.dev, n.parent, n.mode, n.pci) for n in inv.direct_nics]
    assert direct == [("direct", "macvtap0", "eth1", "bridge", None), ("direct", None, "eth2", "vepa", None),
                      ("network", "macvtap1", "eth3", "private", None),
                      ("hostdev", None, None, None, "0000:03:10.2")]
    assert inv.networks["pool"].macvtap_pool and inv.networks["pool"].devs == ("eth3",)


def test_fdb_moves_ring_is_bounded():
    moves = FdbMoves(per_mac=3, macs=2)
    names = {10: "vnet0", 3: "bond0", 2: "br0"}
    for i in range(10):
        moves.note(Event("fdb", "new", 10 if i % 2 else 3, master=2, mac=MAC), names)
    ans = moves.answer(MAC)
    assert ans["moves_total"] == 9 and len(ans["recent"]) == 3 and ans["recent"][-1]["to"] == "vnet0"
    assert ans["recent"][-1]["from"] == "bond0" and ans["recent"][-1]["bridge"] == "br0"
    moves.note(Event("fdb", "new", 10, master=2, mac="02:00:00:00:00:01"), names)
    moves.note(Event("fdb", "new", 10, master=2, mac="02:00:00:00:00:02"), names)
    assert moves.answer(MAC)["known"] is False and moves.answer(MAC)["moves_total"] == 0  # evicted
    moves.note(Event("fdb", "del", 3, master=2, mac="02:00:00:00:00:02"), names)  # deletions are no moves
    assert moves.answer("02:00:00:00:00:02")["moves_total"] == 0


def _snap(**facts):
    snap = snapshot([bridge("br0", 2), uplink("eth1", 3, master=2, kind="veth"), tap("vnet0", 10, master=2)],
                    [nic("vm", MAC, "br0", "vnet0")], fdb={("br0", MAC): None})
    for k, v in facts.items():
        setattr(snap, k, v)
    return snap


def _check(name, snap, **options):
    inv = INVARIANTS[name]
    opts = {k: o.default for k, o in inv.OPTIONS.items()}
    opts.update(options)
    return inv.check(snap, opts)


def test_guest_silent_only_after_the_bridge_delivered_enough():
    assert _check("guest_silent", _snap(counters={"vnet0": Counters(0, 10)})) == []
    [v] = _check("guest_silent", _snap(counters={"vnet0": Counters(0, 80)}))
    assert (v.kind, v.severity, INVARIANTS["guest_silent"].hop(v)) == ("guest_silent", "broken", "tap")
    assert _check("guest_silent", _snap(counters={"vnet0": Counters(1, 80)})) == []
    assert _check("guest_silent", _snap()) == []  # no counters read: no verdict


def test_route_conflict_only_for_addresses_of_the_bridges_subnet():
    routes = {("br0", MAC): (RouteLookup("203.0.113.10", "neighbour", "ctr0", "203.0.113.0/28 dev ctr0 table 254"),)}
    assert _check("route_conflict", _snap(addresses={}, routes=routes)) == []  # the host is not on br0's subnet
    [v] = _check("route_conflict", _snap(addresses={2: ["203.0.113.1/24"]}, routes=routes))
    assert v.kind == "route_elsewhere" and v.evidence["route"] == "203.0.113.0/28 dev ctr0 table 254"
    ok = {("br0", MAC): (RouteLookup("203.0.113.10", "neighbour", "br0", "203.0.113.0/24 dev br0 table 254"),)}
    assert _check("route_conflict", _snap(addresses={2: ["203.0.113.1/24"]}, routes=ok)) == []
    [v] = _check("route_conflict", _snap(addresses={2: ["203.0.113.1/24", "fe80::1/64"], 3: ["203.0.113.9/28"],
                                                    4: ["fe80::2/64"]}, routes=ok))
    assert v.kind == "subnet_on_other_interface" and v.evidence["interface"] == "eth1"


def test_macvtap_isolation():
    dnic = inventory.DirectNic(domain="vm2", uuid="u", mac="52:54:00:00:00:09", type="direct", dev="macvtap0",
                               parent="eth1", mode="bridge")
    snap = _snap(direct={"macvtap0": DirectLink("macvtap0", 20, "macvtap", "bridge", "eth1", True, True, True, True)})
    snap.inventory.domains["vm2"] = inventory.Domain("vm2", "u", (), direct_nics=(dnic,))
    [v] = _check("macvtap_isolation", snap)
    assert (v.kind, v.severity, INVARIANTS["macvtap_isolation"].hop(v)) == ("host_isolated", "risk", "isolation")
    snap.direct["mvhost"] = DirectLink("mvhost", 21, "macvlan", "bridge", "eth1", True, True, True, True,
                                       ("198.51.100.2/24",))
    assert _check("macvtap_isolation", snap) == []
    snap.direct["macvtap0"] = dataclasses.replace(snap.direct["macvtap0"], parent_carrier=False)
    assert [v.kind for v in _check("macvtap_isolation", snap)] == ["parent_down"]
    del snap.direct["macvtap0"]
    assert [v.kind for v in _check("macvtap_isolation", snap)] == ["macvtap_missing"]


def test_a_violation_concerns_the_nic_by_mac_port_domain_bridge_or_network():
    me = nic("vm", MAC, "br0", "vnet0", network="default")

    def v(inv="fdb_ownership", **subject):
        return Violation(inv, "k", Subject(**subject), "m", {})
    assert concerns(v(mac=MAC, port="vnet0"), me)
    assert not concerns(v(mac=MAC, port="vnet1"), me)  # a clone's own port, on the fdb hop
    assert concerns(v("unique_mac", mac=MAC, port="vnet1", domain="clone"), me)  # ... but a duplicate
    assert concerns(v(bridge="br0", port="eth1"), me) and not concerns(v(bridge="br1"), me)
    assert concerns(v(network="default", bridge="virbr0"), me) and not concerns(v(network="other"), me)
    assert not concerns(v(domain="other", port="vnet3", bridge="br0"), me)
