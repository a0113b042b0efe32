"""macvtap_isolation: a VM on a macvtap NIC (`<interface type='direct'>`, or a macvtap-pool network) and
its host. By design a macvtap's frames never reach its host through the parent device: in vepa mode they
go out to the switch (only a hairpin-capable switch sends them back), in bridge mode they reach the
parent's other macvtaps but not the parent itself, private and passthrough modes reach nothing local.
Host and guest then cannot talk — the fourth guide's most common cause. Also the macvtap device or its
parent gone or down. Observe only: the fix (a macvlan in bridge mode on the host, or a Linux bridge
instead of macvtap) is a network design change."""
from __future__ import annotations

from netmedic.model import Subject, Violation
from netmedic.plugin import Invariant

FIX = ("give the host a macvlan interface in bridge mode on {parent} and move the host's address onto it "
       "(ip link add link {parent} name macvlan-host type macvlan mode bridge; the VM's macvtap must be in "
       "bridge mode too), or attach the VM to a Linux bridge on {parent} instead of macvtap")


class MacvtapIsolation(Invariant):
    NAME = "macvtap_isolation"
    DESCRIPTION = "a macvtap VM NIC has its device and parent up, and a way to reach its host (report only)"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "observe"
    OPTIONS = {}
    HOP = "direct"  # netmedic diagnose shows its violations on this hop
    HOPS = {"host_isolated": "isolation"}
    REMEDIES = {"host_isolated": None, "macvtap_missing": None, "parent_down": None}
    NEEDS = frozenset({"direct"})
    HINTS = {"host_isolated": "a macvlan in bridge mode on the host, or a Linux bridge instead of macvtap",
             "macvtap_missing": "the VM's macvtap device is gone: re-plug the NIC or restart the VM",
             "parent_down": "bring the parent device up / check its cable and switch port"}

    def check(self, snapshot, options) -> list:
        out = []
        if snapshot.direct is None:
            return out
        for nic in snapshot.inventory.direct_nics:
            if nic.type == "hostdev" or not nic.dev:
                continue
            subject = Subject(port=nic.dev, domain=nic.domain, mac=nic.mac)
            link = snapshot.direct.get(nic.dev)
            if link is None:
                out.append(Violation(self.NAME, "macvtap_missing", subject,
                                     f"VM {nic.domain}'s macvtap {nic.dev} (on {nic.parent}) does not exist",
                                     {"dev": nic.dev, "parent": nic.parent}))
                continue
            if link.parent is None or not (link.parent_up and link.parent_carrier):
                state = "missing" if link.parent is None else ("down" if not link.parent_up else "without carrier")
                out.append(Violation(self.NAME, "parent_down", subject,
                                     f"the parent device {link.parent or nic.parent} of VM {nic.domain}'s macvtap "
                                     f"{nic.dev} is {state}: the VM is cut off",
                                     {"dev": nic.dev, "parent": link.parent or nic.parent, "parent_up": link.parent_up,
                                      "parent_carrier": link.parent_carrier}))
            mode = link.mode or nic.mode
            helpers = [d.name for d in snapshot.direct.values() if d.kind == "macvlan" and d.parent == link.parent
                       and d.mode == "bridge" and d.up and d.addresses]
            if mode == "bridge" and helpers:
                continue
            why = {"vepa": "in vepa mode its frames go out to the switch and come back only from a hairpin "
                           "(reflective relay) switch port",
                   "bridge": f"in bridge mode it reaches the other macvtaps of {link.parent} but never "
                             f"{link.parent} itself, and the host has no macvlan in bridge mode there",
                   "private": "in private mode it reaches nothing on this host",
                   "passthru": "in passthrough mode the guest owns the parent device"}.get(mode, f"mode {mode}")
            out.append(Violation(
                self.NAME, "host_isolated", subject,
                f"host and VM {nic.domain} cannot reach each other through macvtap {nic.dev} on {link.parent}: "
                f"{why} (by design of macvtap)",
                {"dev": nic.dev, "parent": link.parent, "mode": mode, "host_macvlans": helpers,
                 "fix": FIX.format(parent=link.parent)}, "risk"))
        return out


PLUGIN = MacvtapIsolation()
