"""uplink_carrier: a bridge with VMs and uplink ports has at least one uplink that is up with carrier.
Without one, its VMs reach only each other and the host (a pulled cable, a dead switch port, a NIC
driver problem). Report only: netmedic does not touch the uplink."""
from __future__ import annotations

from netmedic.model import Subject, Violation
from netmedic.plugin import Invariant
from netmedic.policies.uplink_aggregation import uplinks

FIX = "check the cable, the switch port and the NIC driver (`ip link`, `ethtool`)"


class UplinkCarrier(Invariant):
    NAME = "uplink_carrier"
    DESCRIPTION = "a bridge with VMs has an uplink that is up with carrier (report only)"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "observe"
    OPTIONS = {}
    HOP = "uplink"  # netmedic diagnose shows its violations on this hop
    REMEDIES = {"no_uplink_carrier": None}
    HINTS = {"no_uplink_carrier": FIX}

    def check(self, snapshot, options) -> list:
        out = []
        for bridge in sorted({n.bridge for n in snapshot.nics() if snapshot.bridge(n.bridge) is not None}):
            ups = uplinks(snapshot, bridge)
            if ups and not any(u.up and u.carrier for u in ups):
                out.append(Violation(
                    self.NAME, "no_uplink_carrier", Subject(bridge=bridge),
                    f"no uplink of {bridge} is up with carrier ({', '.join(u.name for u in ups)}): its VMs reach only "
                    f"each other and the host",
                    {"uplinks": {u.name: {"up": u.up, "carrier": u.carrier} for u in ups}, "fix": FIX}))
        return out


PLUGIN = UplinkCarrier()
