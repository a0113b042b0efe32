"""mtu_set: set a VM tap's MTU to its bridge's MTU (`ip link set TAP mtu N`). Undo: the old MTU.
The guest's own MTU is the guest's business: netmedic only makes the host side consistent."""
from __future__ import annotations

from netmedic.model import Plan, Step
from netmedic.plugin import Healer


class MtuSet(Healer):
    NAME = "mtu_set"
    HANDLES = ("mtu_consistency",)

    def plan(self, violation, snapshot, options):
        s = violation.subject
        tap, br = snapshot.port_on(s.bridge, s.port), snapshot.bridge(s.bridge)
        if tap is None:
            return None, f"{s.port} is no longer a port of {s.bridge}"
        ids = {"port": s.port, "port_index": tap.index}
        return Plan(self.NAME, violation, (Step(
            "set_mtu", {**ids, "mtu": br.mtu}, f"set mtu of {s.port} to {br.mtu}",
            undo=Step("set_mtu", {**ids, "mtu": tap.mtu}, f"set mtu of {s.port} back to {tap.mtu}")),),
            f"set the MTU of tap {s.port} to its bridge {s.bridge}'s ({br.mtu})",
            before={"tap_mtu": tap.mtu, "bridge_mtu": br.mtu}), ""

    def after(self, snapshot, violation) -> dict:
        s = violation.subject
        tap, br = snapshot.link(s.port), snapshot.bridge(s.bridge)
        return {"tap_mtu": tap.mtu if tap else None, "bridge_mtu": br.mtu if br else None}


PLUGIN = MtuSet()
