"""port_delivery: the bridge can deliver frames to a VM's port right now. Two states port_forwarding
leaves alone on purpose (STP's own timers, flags the policy does not constrain) but that cut a VM off
while they last: STP holding the port in listening/learning for its forward delay, and a port with both
learning and unicast flood off (frames reach it only through a static fdb entry). Report only."""
from __future__ import annotations

from netmedic.model import Subject, Violation
from netmedic.nl import data as nl
from netmedic.plugin import Invariant


class PortDelivery(Invariant):
    NAME = "port_delivery"
    DESCRIPTION = "a VM port is not held by STP's forward delay and has learning or flood on (report only)"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "observe"
    OPTIONS = {}
    HOP = "port"  # netmedic diagnose shows its violations on this hop
    REMEDIES = {"stp_forward_delay": None, "no_learning_no_flood": None}
    HINTS = {"stp_forward_delay": "wait for the forward delay, shorten it (ip link set BRIDGE type bridge "
                                  "forward_delay 200), or turn STP off on a bridge with a single uplink",
             "no_learning_no_flood": "bridge link set dev TAP flood on (or learning on)"}

    def check(self, snapshot, options) -> list:
        out = []
        for nic in snapshot.nics():
            br, tap = snapshot.bridge(nic.bridge), snapshot.link(nic.tap)
            if br is None or tap is None or tap.master != br.index or tap.port is None:
                continue
            subject = Subject(bridge=nic.bridge, port=nic.tap, domain=nic.domain, mac=nic.mac)
            port, info = tap.port, br.bridge
            if tap.up and info is not None and info.stp_state and port.state in (nl.BR_STATE_LISTENING,
                                                                                  nl.BR_STATE_LEARNING):
                fd = info.forward_delay / 100
                name = nl.PORT_STATE_NAMES[port.state]
                out.append(Violation(
                    self.NAME, "stp_forward_delay", subject,
                    f"STP holds {nic.tap} in {name} for the forward delay of {nic.bridge} ({fd:g} s per state, up "
                    f"to {2 * fd:g} s after every link change): it forwards nothing yet",
                    {"port_state": name, "forward_delay_s": round(fd, 2),
                     "fix": f"wait, or shorten it: ip link set {nic.bridge} type bridge forward_delay 200 (2 s), or "
                            f"turn STP off on a bridge with a single uplink (stp_state 0)"}))
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
