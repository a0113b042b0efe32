"""ip_forward: turn IPv4 forwarding back on for a libvirt NAT/routed network — globally (what libvirt
itself does when it starts the network) and on the network's bridge and forward device. Rolled back to
the prior values if the network is still not forwarding afterwards."""
from __future__ import annotations

from netmedic.model import Plan, Step
from netmedic.plugin import Healer


class IpForward(Healer):
    NAME = "ip_forward"
    HANDLES = ("ip_forwarding",)

    def plan(self, violation, snapshot, options):
        steps = []
        # The global switch last: writing it sets every interface's value. Applied last, its undo runs
        # first on a rollback, and the per-interface undos then restore their own prior values.
        keys = sorted(violation.evidence["sysctls"], key=lambda k: (k == "net/ipv4/ip_forward", k))
        for key in keys:
            old = snapshot.sysctls.get(key)
            steps.append(Step("sysctl", {"key": key, "value": "1"}, f"set {key.replace('/', '.')} = 1",
                              undo=Step("sysctl", {"key": key, "value": old}, f"set {key.replace('/', '.')} = {old}")))
        return Plan(self.NAME, violation, tuple(steps), "turn IPv4 forwarding on for network "
                    f"{violation.subject.network}", before=dict(violation.evidence["sysctls"])), ""

    def after(self, snapshot, violation) -> dict:
        return {k: snapshot.sysctls.get(k) for k in violation.evidence["sysctls"]}


PLUGIN = IpForward()
