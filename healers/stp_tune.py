"""stp_tune: stop STP from holding new VM ports (opt-in: stp_forward_delay in enforce mode). Only on a
bridge whose single non-tap port is its uplink — with one way out there is no loop for STP to break.
`remedy: stp-off`: STP off (a port that joins then forwards at once; the kernel lets the ports
already listening/learning wait out their running timer, so they are set to forwarding too);
`remedy: lower-delay`: forward delay lowered to 2 s, the kernel's minimum with STP on (a running
timer is not re-armed: ports already waiting wait on). Undo: the prior STP state / delay."""
from __future__ import annotations

from netmedic.model import Plan, Step
from netmedic.nl import data as nl
from netmedic.plugin import Healer
from netmedic.policies.stp_forward_delay import WAITING, ports_of, uplinks_of

MIN_STP_DELAY = 200  # centiseconds: BR_MIN_FORWARD_DELAY, what the kernel accepts with STP on


class StpTune(Healer):
    NAME = "stp_tune"
    HANDLES = ("stp_forward_delay",)

    def plan(self, violation, snapshot, options):
        bridge = violation.subject.bridge
        br = snapshot.bridge(bridge)
        if br is None or br.bridge is None:
            return None, f"bridge {bridge} no longer exists"
        uplinks = uplinks_of(snapshot, bridge)
        if len(uplinks) != 1:
            return None, (f"{bridge} has {len(uplinks)} non-tap ports ({', '.join(lk.name for lk in uplinks)}): "
                          "STP may be breaking a loop; netmedic changes STP only on bridges with one uplink")
        ids = {"bridge": bridge, "bridge_index": br.index}
        info = br.bridge
        if options.get("remedy", "stp-off") == "lower-delay":
            want = max(MIN_STP_DELAY, round(float(options.get("max_forward_delay", 2.0)) * 100))
            if want > round(float(options.get("max_forward_delay", 2.0)) * 100):
                return None, (f"STP needs a forward delay of at least {MIN_STP_DELAY / 100:g} s: max_forward_delay "
                              f"{options.get('max_forward_delay')} cannot be met by lowering it (remedy stp-off can)")
            if want >= info.forward_delay:
                return None, f"{bridge}'s forward delay is already {info.forward_delay / 100:g} s"
            step = Step("set_bridge", {**ids, "forward_delay": want},
                        f"set forward delay of {bridge} to {want / 100:g} s",
                        undo=Step("set_bridge", {**ids, "forward_delay": info.forward_delay},
                                  f"set forward delay of {bridge} back to {info.forward_delay / 100:g} s"))
            return Plan(self.NAME, violation, (step,), f"lower {bridge}'s STP forward delay to {want / 100:g} s "
                        f"(new ports wait {2 * want / 100:g} s)",
                        before={"stp_state": info.stp_state, "forward_delay": info.forward_delay / 100}), ""
        steps = [Step("set_bridge", {**ids, "stp_state": 0}, f"turn STP off on {bridge}",
                      undo=Step("set_bridge", {**ids, "stp_state": info.stp_state}, f"turn STP back on on {bridge}"))]
        waiting = [lk for lk in ports_of(snapshot, bridge) if lk.port is not None and lk.port.state in WAITING]
        for lk in waiting:
            steps.append(Step("set_port", {"port": lk.name, "port_index": lk.index, "state": nl.BR_STATE_FORWARDING},
                              f"set port {lk.name} to forwarding (it was "
                              f"{nl.PORT_STATE_NAMES[lk.port.state]} on STP's timer)"))
        return Plan(self.NAME, violation, tuple(steps),
                    f"turn STP off on {bridge} (one uplink, {uplinks[0].name}: no loop to break); new VM ports "
                    f"forward at once", before={"stp_state": info.stp_state, "forward_delay": info.forward_delay / 100,
                                               "waiting_ports": [lk.name for lk in waiting]},
                    claims=tuple(("port_state", lk.name) for lk in waiting)), ""

    def after(self, snapshot, violation) -> dict:
        br = snapshot.bridge(violation.subject.bridge)
        if br is None or br.bridge is None:
            return {}
        return {"stp_state": br.bridge.stp_state, "forward_delay": br.bridge.forward_delay / 100,
                "waiting_ports": [lk.name for lk in ports_of(snapshot, violation.subject.bridge)
                                  if lk.port is not None and lk.port.state in WAITING]}


PLUGIN = StpTune()
