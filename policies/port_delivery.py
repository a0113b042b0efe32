"""port_delivery: the bridge can deliver frames to a VM's port right now: a state port_forwarding leaves
alone on purpose (flags the policy does not constrain) but that cuts a VM off while it lasts: a port with
both learning and unicast flood off (frames reach it only through a static fdb entry). Report only.
(STP holding a new port for its forward delay is stp_forward_delay's.)"""
from __future__ import annotations

from netmedic.model import Subject, Violation
from netmedic.plugin import Invariant


class PortDelivery(Invariant):
    NAME = "port_delivery"
    DESCRIPTION = "a VM port has learning or unicast flood on (report only)"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "observe"
    OPTIONS = {}
    HOP = "port"  # netmedic diagnose shows its violations on this hop
    REMEDIES = {"no_learning_no_flood": None}
    HINTS = {"no_learning_no_flood": "bridge link set dev TAP flood on (or learning on)"}

    def check(self, snapshot, options) -> list:
        out = []
        for nic in snapshot.nics():
            br, tap = snapshot.bridge(nic.bridge), snapshot.link(nic.tap)
            if br is None or tap is None or tap.master != br.index or tap.port is None:
                continue
            subject = Subject(bridge=nic.bridge, port=nic.tap, domain=nic.domain, mac=nic.mac)
            port = tap.port
            if not port.learning and not port.flood:
                entry = snapshot.fdb.get((nic.bridge, nic.mac))
                held = entry is not None and entry.static and entry.port_index == tap.index
                out.append(Violation(
                    self.NAME, "no_learning_no_flood", subject,
                    f"learning and unicast flood are both off on {nic.tap}: frames for the VM reach it only through "
                    f"a static fdb entry" + (" (one holds its MAC now)" if held else ""),
                    {"learning": False, "flood": False, "static_entry": held,
                     "fix": f"bridge link set dev {nic.tap} flood on"}, "risk" if held else "broken"))
        return out


PLUGIN = PortDelivery()
