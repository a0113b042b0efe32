"""port_state: a VM port stuck in a non-forwarding state on a bridge with STP off is set to
forwarding (with STP on, the state is STP's decision and is never overridden); learning/unicast-flood
flags are set to what the policy requires."""
from __future__ import annotations

from netmedic.model import Plan, Step
from netmedic.nl import data as nl
from netmedic.plugin import Healer


class PortState(Healer):
    NAME = "port_state"
    HANDLES = ("port_forwarding",)

    def plan(self, violation, snapshot, options):
        s = violation.subject
        tap, br = snapshot.link(s.port), snapshot.bridge(s.bridge)
        if tap is None or tap.port is None or br is None:
            return None, "the port no longer exists"
        ids = {"port": s.port, "port_index": tap.index}
        if violation.kind == "not_forwarding":
            if br.bridge is not None and br.bridge.stp_state:
                return None, "STP is on for this bridge: the port state is STP's decision"
            old = tap.port.state
            return Plan(self.NAME, violation, (Step(
                "set_port", {**ids, "state": nl.BR_STATE_FORWARDING}, f"set port {s.port} to forwarding",
                undo=Step("set_port", {**ids, "state": old},
                          f"set port {s.port} back to {nl.PORT_STATE_NAMES.get(old, old)}")),),
                f"set port {s.port} of {s.bridge} to forwarding",
                before={"port_state": nl.PORT_STATE_NAMES.get(old, old)}, claims=(("port_state", s.port),)), ""
        if violation.kind == "port_flags":
            want = violation.evidence["want"]
            old = {k: getattr(tap.port, k) for k in want}
            return Plan(self.NAME, violation, (Step(
                "set_port", {**ids, **want}, f"set {', '.join(f'{k} {v}' for k, v in want.items())} on {s.port}",
                undo=Step("set_port", {**ids, **old}, f"restore {old} on {s.port}")),),
                f"set port flags of {s.port} as the policy requires", before=old,
                claims=(("port_flags", s.port),)), ""
        return None, f"port_state does not handle {violation.kind}"

    def after(self, snapshot, violation) -> dict:
        tap = snapshot.link(violation.subject.port)
        if tap is None or tap.port is None:
            return {}
        return {"port_state": nl.PORT_STATE_NAMES.get(tap.port.state, tap.port.state),
                "learning": tap.port.learning, "flood": tap.port.flood}


PLUGIN = PortState()
