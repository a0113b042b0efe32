"""ip_forward: turn forwarding back on for a libvirt NAT/routed network — globally (what libvirt itself
does when it starts the network) and on the network's bridge and forward device; IPv4, and IPv6 for a
network with an IPv6 address. Before IPv6 forwarding goes on, a forward device with `accept_ra=1` gets
`accept_ra=2`, so it keeps taking router advertisements (with forwarding on, 1 means "ignore them").
Rolled back to the prior values if the network is still not forwarding afterwards."""
from __future__ import annotations

from netmedic.model import Plan, Step
from netmedic.plugin import Healer

GLOBAL = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding")


def _set(key: str, value: str, old) -> Step:
    return Step("sysctl", {"key": key, "value": value}, f"set {key.replace('/', '.')} = {value}",
                undo=Step("sysctl", {"key": key, "value": old}, f"set {key.replace('/', '.')} = {old}"))


class IpForward(Healer):
    NAME = "ip_forward"
    HANDLES = ("ip_forwarding",)

    def plan(self, violation, snapshot, options):
        # accept_ra first (before forwarding makes RA ignored), then the per-interface switches, the global
        # switch last: writing it sets every interface's value. Applied last, its undo runs first on a
        # rollback, and the per-interface undos then restore their own prior values.
        steps = [_set(key, "2", snapshot.sysctls.get(key)) for key in sorted(violation.evidence.get("accept_ra") or {})]
        keys = sorted(violation.evidence["sysctls"], key=lambda k: (k in GLOBAL, k))
        for key in keys:
            steps.append(_set(key, "1", snapshot.sysctls.get(key)))
        family = "IPv6" if violation.kind == "ipv6_forwarding_off" else "IPv4"
        before = dict(violation.evidence["sysctls"])
        before.update(violation.evidence.get("accept_ra") or {})
        return Plan(self.NAME, violation, tuple(steps), f"turn {family} forwarding on for network "
                    f"{violation.subject.network}", before=before), ""

    def after(self, snapshot, violation) -> dict:
        keys = list(violation.evidence["sysctls"]) + list(violation.evidence.get("accept_ra") or {})
        return {k: snapshot.sysctls.get(k) for k in keys}


PLUGIN = IpForward()
