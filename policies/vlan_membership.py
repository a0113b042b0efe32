"""vlan_membership: on a bridge with VLAN filtering, a VM tap is a member of the VLANs its domain XML
names (`<vlan><tag id=N/></vlan>`). One tag (an access port): VLAN N is the port's PVID, egress
untagged, so the guest's untagged frames land in N. Several tags (`trunk='yes'`): each VLAN is a
tagged member. A bridge without VLAN filtering forwards every VLAN: nothing to check."""
from __future__ import annotations

from netmedic.model import Subject, Violation
from netmedic.plugin import Invariant


def wanted(nic) -> list:
    """[(vid, pvid, untagged)] the NIC's tags ask for."""
    if len(nic.vlans) == 1:
        return [(nic.vlans[0], True, True)]
    return [(vid, False, False) for vid in nic.vlans]


def missing(nic, have: tuple) -> list:
    by_vid = {v.vid: v for v in have}
    out = []
    for vid, pvid, untagged in wanted(nic):
        cur = by_vid.get(vid)
        if cur is None or (pvid and not cur.pvid) or (untagged and not cur.untagged):
            out.append({"vid": vid, "pvid": pvid, "untagged": untagged})
    return out


class VlanMembership(Invariant):
    NAME = "vlan_membership"
    DESCRIPTION = "a VM tap is a member of its <vlan> tags on a vlan-filtering bridge"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "enforce"  # adding a missing VLAN to a VM's own port affects only that VM
    OPTIONS = {}
    HOP = "port"  # netmedic diagnose shows its violations on this hop
    REMEDIES = {"vlan_missing": "vlan_add"}
    NEEDS = frozenset(("port_vlans",))

    def check(self, snapshot, options) -> list:
        out = []
        if snapshot.port_vlans is None:
            return out
        for nic in snapshot.nics():
            if not nic.vlans:
                continue
            br, tap = snapshot.bridge(nic.bridge), snapshot.link(nic.tap)
            if br is None or tap is None or tap.master != br.index or not (br.bridge and br.bridge.vlan_filtering):
                continue
            have = snapshot.port_vlans.get(tap.index, ())
            lack = missing(nic, have)
            if lack:
                out.append(Violation(
                    self.NAME, "vlan_missing", Subject(bridge=nic.bridge, port=nic.tap, domain=nic.domain, mac=nic.mac),
                    f"tap {nic.tap} of VM {nic.domain} is not a member of VLAN(s) "
                    f"{', '.join(str(m['vid']) for m in lack)} its domain XML names: {nic.bridge} (VLAN filtering on) "
                    f"drops that traffic",
                    {"want": [{"vid": v, "pvid": p, "untagged": u} for v, p, u in wanted(nic)],
                     "have": [{"vid": v.vid, "pvid": v.pvid, "untagged": v.untagged} for v in have],
                     "missing": lack}))
        return out


PLUGIN = VlanMembership()
