"""bridge_uplink: a bridge with VMs has an uplink with carrier. After a kernel/BIOS upgrade or a PCIe
change the NIC is renamed, the bridge configuration names a device that no longer exists, and the
bridge holds only VM taps: every VM loses the outside (hexie.dev "bridge-with-no-slave"; harvester PR
#9877 for issues #9815/#9802; systemd#24102). Signals: a bridge with VMs and no non-tap port while an
uplink-looking NIC with carrier sits outside any bridge (`no_uplink`, judged on full observations
only: it needs every host link), or whose non-tap ports all lack carrier (`uplink_no_carrier`).
Bridges of libvirt's own networks (NAT, routed, isolated) have no uplink by design and are skipped.
Observe only: which NIC belongs to which bridge is the admin's configuration."""
from __future__ import annotations

from typing import Optional

from netmedic.model import Subject, Violation
from netmedic.plugin import Invariant
from netmedic.policies.config import Option

KINDS = ("physical", "bond", "team", "vlan", "veth", "macvlan", "vxlan")


def non_tap_ports(snapshot, bridge: str, ports: Optional[list] = None) -> list:
    """The ports of `bridge` (or of `ports`, a list of them) that are not VM taps (its uplink(s)), sorted by
    name. Every tap the inventory knows counts, not only the observed VMs'; a tun/tap or macvtap port
    counts as a VM's even when the inventory does not know it."""
    taps = snapshot.inventory.taps
    return [lk for lk in (snapshot.ports(bridge) if ports is None else ports)
            if lk.name not in taps and lk.kind not in ("tun", "macvtap")]


def link_kind(link) -> str:
    return link.kind or "physical"


class BridgeUplink(Invariant):
    NAME = "bridge_uplink"
    DESCRIPTION = "a bridge with VMs has an uplink port with carrier"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "observe"
    OPTIONS = {
        "uplink_kinds": Option(["physical", "bond", "team", "vlan"], "kinds of link that can be a bridge's "
                               "uplink (physical = a NIC with no link kind); a lab with veth uplinks adds veth",
                               type=list),
    }
    HOP = "uplink"  # netmedic diagnose shows its violations on this hop
    REMEDIES = {"no_uplink": None, "uplink_no_carrier": None}
    HOST_WIDE_KINDS = frozenset({"no_uplink"})
    HINTS = {
        "no_uplink": "put the NIC named in the evidence back into the bridge (`ip link set NIC master BRIDGE`) "
                     "and fix the bridge's configuration to name it (NetworkManager: `nmcli connection add "
                     "type bridge-slave ifname NIC master BRIDGE`; ifupdown: `bridge-ports NIC`; systemd-networkd:"
                     " a .network file for NIC with `Bridge=BRIDGE`); or pin NIC names with a .link file "
                     "(MACAddress= match) so the next upgrade does not rename them",
        "uplink_no_carrier": "the bridge's uplink has no carrier: check the cable, the switch port and the NIC "
                             "(`ethtool NIC`, the kernel log); meanwhile the VMs reach only each other",
    }

    def check(self, snapshot, options) -> list:
        kinds = set(options.get("uplink_kinds") or self.OPTIONS["uplink_kinds"].default)
        own = {n.bridge for n in snapshot.inventory.networks.values() if n.bridge and n.forward_mode != "bridge"}
        taps = snapshot.inventory.taps
        out = []
        for bridge in snapshot.vm_bridges():
            if bridge in own:
                continue
            vms = sorted({n.domain for n in snapshot.inventory.nics if n.bridge == bridge})
            ports = non_tap_ports(snapshot, bridge)
            if not ports:
                if not snapshot.links_complete:
                    continue  # the NICs outside any bridge are only known to a full observation
                free = sorted((lk for lk in snapshot.links.values()
                               if lk.master is None and lk.carrier and lk.mac and lk.name != "lo"
                               and lk.name not in taps and link_kind(lk) in kinds and lk.kind != "bridge"),
                              key=lambda lk: lk.name)
                if not free:
                    continue
                names = [lk.name for lk in free]
                out.append(Violation(
                    self.NAME, "no_uplink", Subject(bridge=bridge),
                    f"bridge {bridge} holds only VM taps (no uplink port) while {', '.join(names)} "
                    f"{'has' if len(names) == 1 else 'have'} carrier outside any bridge (a renamed NIC?): its "
                    f"VMs ({', '.join(vms[:5])}{' ...' if len(vms) > 5 else ''}) reach nothing beyond the host",
                    {"bridge_ports": sorted(lk.name for lk in snapshot.links.values()
                                            if lk.master == snapshot.bridge(bridge).index),
                     "candidates": [{"name": lk.name, "kind": link_kind(lk), "mac": lk.mac} for lk in free],
                     "vms": vms,
                     "fix": f"ip link set {names[0]} master {bridge}, and name {names[0]} in {bridge}'s "
                            f"configuration"}))
            elif not any(lk.carrier for lk in ports):
                out.append(Violation(
                    self.NAME, "uplink_no_carrier", Subject(bridge=bridge),
                    f"no uplink of bridge {bridge} has carrier ({', '.join(lk.name for lk in ports)}): its VMs "
                    f"reach only each other",
                    {"uplinks": [{"name": lk.name, "kind": link_kind(lk), "up": lk.up, "carrier": lk.carrier,
                                  "operstate": lk.operstate} for lk in ports], "vms": vms}))
        return out


PLUGIN = BridgeUplink()
