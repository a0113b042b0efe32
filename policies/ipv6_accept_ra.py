"""ipv6_accept_ra: an uplink that takes its IPv6 default route from router advertisements keeps
taking it when IPv6 forwarding is on. With forwarding on, `accept_ra=1` means "ignore RAs": the RA
routes expire and the host loses its IPv6 default route. libvirt refuses to start an IPv6 network in
that state ("enabling IPv6 forwarding with RA routes without accept_ra set to 2 is likely to cause
routes loss", Red Hat bug 1639087). Reported (`ra_ignored`, a risk) for a bridge with VMs, or its
non-tap ports, where IPv6 is on, forwarding is 1 and accept_ra is 1 (0: the admin wants no RAs; 2:
RAs kept while forwarding). Observe only: the fix (`accept_ra=2`) is named. IPv6 forwarding itself is
ip_forwarding's."""
from __future__ import annotations

from netmedic.model import Subject, Violation
from netmedic.plugin import Invariant
from netmedic.policies.bridge_uplink import non_tap_ports


class Ipv6AcceptRa(Invariant):
    NAME = "ipv6_accept_ra"
    DESCRIPTION = "a bridge with VMs (or its uplink) keeps accepting router advertisements while IPv6 forwards"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "observe"
    NEEDS = frozenset({"ipv6_ra"})
    OPTIONS = {}
    HOP = "l3"  # netmedic diagnose shows its violations on this hop
    REMEDIES = {"ra_ignored": None}

    def check(self, snapshot, options) -> list:
        ra = snapshot.ipv6_ra
        if not ra:
            return []
        out = []
        for bridge in snapshot.vm_bridges():
            for name in [bridge] + [lk.name for lk in non_tap_ports(snapshot, bridge)]:
                conf = ra.get(name)
                if not conf or conf.get("disable_ipv6") == "1":
                    continue
                if conf.get("forwarding") == "1" and conf.get("accept_ra") == "1":
                    out.append(Violation(
                        self.NAME, "ra_ignored", Subject(bridge=bridge, port=None if name == bridge else name),
                        f"IPv6 forwarding is on for {name} and its accept_ra is 1: router advertisements are "
                        f"ignored, so the RA routes (the IPv6 default route) expire and the host loses them",
                        {"interface": name, "forwarding": conf.get("forwarding"), "accept_ra": conf.get("accept_ra"),
                         "fix": f"sysctl -w net.ipv6.conf.{name}.accept_ra=2 (and in /etc/sysctl.d, or NetworkManager "
                                f"ipv6.method auto keeps it): RAs are then accepted while forwarding"},
                        severity="risk"))
        return out


PLUGIN = Ipv6AcceptRa()
