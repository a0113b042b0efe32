"""reattach: a VM tap left detached (its bridge was deleted and re-created by NetworkManager or
ifreload) is enslaved again to the bridge its domain XML names; a tap that is down while the domain
wants its link up is brought up. The fdb pin, lost when the port left the bridge, is re-made by
fdb_pin in the same reconcile."""
from __future__ import annotations

from netmedic.model import Plan, Step
from netmedic.plugin import Healer


class Reattach(Healer):
    NAME = "reattach"
    HANDLES = ("port_forwarding",)

    def plan(self, violation, snapshot, options):
        s = violation.subject
        tap, br = snapshot.link(s.port), snapshot.bridge(s.bridge)
        if tap is None or br is None:
            return None, "the tap or the bridge no longer exists"
        ids = {"port": s.port, "port_index": tap.index}
        if violation.kind == "detached":
            steps = [Step("set_master", {**ids, "bridge": s.bridge, "bridge_index": br.index},
                          f"enslave {s.port} to {s.bridge}",
                          undo=Step("set_master", {**ids, "bridge": None}, f"release {s.port} from {s.bridge}"))]
            if not tap.up:
                steps.append(Step("set_up", {**ids, "up": True}, f"set {s.port} up",
                                  undo=Step("set_up", {**ids, "up": False}, f"set {s.port} down")))
            return Plan(self.NAME, violation, tuple(steps), f"re-attach tap {s.port} to bridge {s.bridge}",
                        before={"master": None, "up": tap.up}), ""
        if violation.kind == "link_down":
            return Plan(self.NAME, violation, (Step("set_up", {**ids, "up": True}, f"set {s.port} up",
                                               undo=Step("set_up", {**ids, "up": False}, f"set {s.port} down")),),
                        f"bring tap {s.port} up", before={"up": False}), ""
        return None, f"reattach does not handle {violation.kind}"

    def after(self, snapshot, violation) -> dict:
        tap = snapshot.link(violation.subject.port)
        return {} if tap is None else {"master": snapshot.name_of(tap.master), "up": tap.up}


PLUGIN = Reattach()
