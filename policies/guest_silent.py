"""guest_silent: a running VM whose tap has received not a single frame from the guest since the tap was
created. The first troubleshooting guide's first question ("does the guest send anything at all?"):
when it has not, the cause is inside the guest (no driver for its NIC model — e.g. virtio without the
driver —, its link down, no network configuration), not on the host's path. Observe only.

Judged once the bridge has delivered `min_delivered` frames (broadcasts of the LAN, ARP) to the guest
without one coming back. Reads the counters of the taps whose guest MAC the bridge has not learned (a guest that sent a frame
is in the fdb): the `counters` fact, cheap in the steady state."""
from __future__ import annotations

from netmedic.model import Subject, Violation
from netmedic.plugin import Invariant
from netmedic.policies.config import Option

FIX = ("look inside the guest: its NIC driver (the model, e.g. virtio, needs the guest's driver), its link "
       "state (`ip link` in the guest), its network configuration (DHCP client running?)")


class GuestSilent(Invariant):
    NAME = "guest_silent"
    DESCRIPTION = "a running VM has sent at least one frame through its tap (report only)"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "observe"
    OPTIONS = {
        "min_delivered": Option(50, "judge a tap only once the bridge has delivered at least this many frames to "
                                "the guest (a VM that just started has had no reason to talk yet)", type=int),
    }
    HOP = "tap"  # netmedic diagnose shows its violations on this hop
    REMEDIES = {"guest_silent": None}
    NEEDS = frozenset({"counters"})
    HINTS = {"guest_silent": FIX}

    def check(self, snapshot, options) -> list:
        out = []
        for nic in snapshot.nics():
            c = (snapshot.counters or {}).get(nic.tap)
            tap = snapshot.link(nic.tap)
            if c is None or tap is None or not (tap.up and tap.carrier) or c.rx_packets \
                    or c.tx_packets < options.get("min_delivered", 50):
                continue
            out.append(Violation(
                self.NAME, "guest_silent", Subject(bridge=nic.bridge, port=nic.tap, domain=nic.domain, mac=nic.mac),
                f"VM {nic.domain} has sent no frame through {nic.tap} since the tap was created (the bridge "
                f"delivered {c.tx_packets} to it): the guest has sent nothing — look inside it (driver, link state, "
                f"network configuration)",
                {"rx_packets": c.rx_packets, "tx_packets": c.tx_packets, "fix": FIX}))
        return out


PLUGIN = GuestSilent()
