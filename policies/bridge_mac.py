"""bridge_mac: a bridge with VMs keeps one MAC address. A bridge whose address was never set follows
the lowest MAC among its ports and changes it as ports come and go: a VM starting or stopping moves
the host's own address on that bridge, and the switch and the neighbours' ARP caches lose the host
until they relearn (harvester#11260: creating VMs moved the management bridge's MAC, a 3–5 min outage;
backreference.org "Linux bridge: MAC addresses and dynamic ports"). Reported (`mac_drift`) when the
bridge's address is not fixed (`addr_assign_type` is not 3, "set") and is a VM tap's MAC or not its
single uplink's. Healer `bridge_mac_set` (opt-in, mode enforce) gives the bridge its uplink's MAC:
setting an address makes it fixed, so it stays put whatever ports join or leave."""
from __future__ import annotations

from netmedic.model import Subject, Violation
from netmedic.plugin import Invariant
from netmedic.policies.bridge_uplink import non_tap_ports
from netmedic.policies.config import Option

ADDR_SET = 3  # NET_ADDR_SET: userspace chose the address; the bridge no longer follows its ports
ASSIGN_TYPES = {0: "permanent", 1: "random", 2: "stolen", 3: "set"}


def persistent_fix(bridge: str, mac: str) -> str:
    return (f"ip link set {bridge} address {mac}; make it last: NetworkManager `nmcli connection modify "
            f"{bridge} bridge.mac-address {mac}`; ifupdown `hwaddress {mac}`; systemd-networkd "
            f"`MACAddress={mac}` in the .netdev")


class BridgeMac(Invariant):
    NAME = "bridge_mac"
    DESCRIPTION = "a bridge with VMs has a fixed MAC address (its uplink's), not one that follows its ports"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "observe"  # enforce (opt-in): give the bridge its uplink's MAC
    NEEDS = frozenset({"bridge_addr"})
    OPTIONS = {
        "remedy": Option("uplink-mac", "uplink-mac: set the bridge's address to its single uplink's MAC",
                         choices=("uplink-mac",)),
    }
    HOP = "uplink"  # netmedic diagnose shows its violations on this hop
    REMEDIES = {"mac_drift": {"uplink-mac": "bridge_mac_set"}}

    def check(self, snapshot, options) -> list:
        if snapshot.bridge_addr is None:
            return []
        tap_macs = {}
        for name in snapshot.inventory.taps:
            link = snapshot.link(name)
            if link is not None and link.mac:
                tap_macs[link.mac] = name
        own = {n.bridge for n in snapshot.inventory.networks.values() if n.bridge and n.forward_mode != "bridge"}
        out = []
        for bridge in snapshot.vm_bridges():
            if bridge in own:
                continue  # libvirt sets the address of its own networks' bridges (<mac> in the network XML)
            br = snapshot.bridge(bridge)
            assign = snapshot.bridge_addr.get(bridge)
            if assign is None or assign == ADDR_SET or not br.mac:
                continue
            uplinks = [lk for lk in non_tap_ports(snapshot, bridge) if lk.mac]
            port_macs = {lk.mac: lk.name for lk in snapshot.links.values() if lk.master == br.index and lk.mac}
            on_tap = tap_macs.get(br.mac) if br.mac in port_macs else None
            if on_tap is None and port_macs.get(br.mac) in {lk.name for lk in snapshot.links.values()
                                                            if lk.kind in ("tun", "macvtap")}:
                on_tap = port_macs[br.mac]
            uplink = uplinks[0] if len(uplinks) == 1 else None
            if on_tap is None and (uplink is None or br.mac == uplink.mac):
                continue
            what = (f"the MAC of VM tap {on_tap}: it changes when that VM stops" if on_tap else
                    f"not its uplink {uplink.name}'s ({uplink.mac})")
            out.append(Violation(
                self.NAME, "mac_drift", Subject(bridge=bridge),
                f"bridge {bridge}'s address {br.mac} is not fixed and is {what}; the bridge follows the lowest port "
                f"MAC, so VMs starting and stopping move the host's address on {bridge} (neighbours lose it "
                f"until they relearn)",
                {"mac": br.mac, "addr_assign_type": ASSIGN_TYPES.get(assign, assign), "tap": on_tap,
                 "uplink": uplink.name if uplink else None, "uplink_mac": uplink.mac if uplink else None,
                 "fix": persistent_fix(bridge, uplink.mac if uplink else "UPLINK_MAC")},
                severity="risk"))
        return out


PLUGIN = BridgeMac()
