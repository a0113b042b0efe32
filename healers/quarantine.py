"""quarantine: the newer of two VM NICs sharing a MAC gets its bridge port set to the `listening` STP
state (with STP off the port then forwards nothing and learns nothing; its link is left alone), so the
original VM keeps its traffic. Not `disabled`: the kernel re-enables a disabled port on any carrier
event, and `blocking` is turned straight into forwarding when STP is off. Recorded as
netmedic's: when the duplicate is gone (VM stopped or MAC changed), netmedic puts the port back to
forwarding. Observe-only by default."""
from __future__ import annotations

from netmedic import nl
from netmedic.model import Plan, Step

NAME = "quarantine"
HANDLES = ("unique_mac",)


def quarantine_key(port: str) -> str:
    return f"quarantine:{port}"


def plan(violation, snapshot, options):
    s = violation.subject
    tap, br = snapshot.link(s.port), snapshot.bridge(s.bridge)
    if tap is None or tap.port is None or br is None or tap.master != br.index:
        return None, f"{s.port} is not a port of {s.bridge}"
    if br.bridge is not None and br.bridge.stp_state:
        return None, "STP is on for this bridge: port states are STP's"
    if quarantine_key(s.port) in snapshot.records and tap.port.state == nl.BR_STATE_LISTENING:
        return None, f"{s.port} is already quarantined by netmedic"
    ids = {"port": s.port, "port_index": tap.index}
    old = tap.port.state
    record = {"kind": "quarantine", "key": quarantine_key(s.port), "bridge": s.bridge, "port": s.port,
              "mac": s.mac, "domain": s.domain, "prior_state": old}
    return Plan(NAME, violation, (Step(
        "set_port", {**ids, "state": nl.BR_STATE_LISTENING}, f"set port {s.port} to listening (quarantine: forwards nothing)",
        undo=Step("set_port", {**ids, "state": old}, f"set port {s.port} back to "
                  f"{nl.PORT_STATE_NAMES.get(old, old)}")),),
        f"quarantine {s.port} of VM {s.domain}: its MAC {s.mac} duplicates "
        f"{violation.evidence['first']['domain']}'s", before={"port_state": nl.PORT_STATE_NAMES.get(old, old)},
        records=(record,)), ""


def after(snapshot, violation) -> dict:
    tap = snapshot.link(violation.subject.port)
    return {} if tap is None or tap.port is None else {
        "port_state": nl.PORT_STATE_NAMES.get(tap.port.state, tap.port.state)}


def verify(snapshot, violation) -> bool:
    """The duplicate still exists (that is the point): verified when its port forwards nothing."""
    tap = snapshot.link(violation.subject.port)
    return tap is not None and tap.port is not None and tap.port.state == nl.BR_STATE_LISTENING
