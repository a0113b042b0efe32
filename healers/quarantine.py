"""quarantine: the newer of two VM NICs sharing a MAC gets its bridge port set to the `listening` STP
state (with STP off the port then forwards nothing and learns nothing; its link is left alone), so the
original VM keeps its traffic. Not `disabled`: the kernel re-enables a disabled port on any carrier
event, and `blocking` is turned straight into forwarding when STP is off. Recorded as
netmedic's: when the duplicate is gone (VM stopped or MAC changed), netmedic puts the port back to
forwarding. Observe-only by default."""
from __future__ import annotations

from netmedic.model import Plan, Step
from netmedic.nl import data as nl
from netmedic.plugin import Healer, Release


def quarantine_key(port: str) -> str:
    return f"quarantine:{port}"


class Quarantine(Healer):
    NAME = "quarantine"
    HANDLES = ("unique_mac",)
    HOLDS = ("port_state",)  # while the record exists, no other remedy sets this port's state

    def plan(self, violation, snapshot, options):
        s = violation.subject
        tap, br = snapshot.link(s.port), snapshot.bridge(s.bridge)
        if tap is None or tap.port is None or br is None or tap.master != br.index:
            return None, f"{s.port} is not a port of {s.bridge}"
        if br.bridge is not None and br.bridge.stp_state:
            return None, "STP is on for this bridge: port states are STP's"
        if quarantine_key(s.port) in snapshot.records and tap.port.state == nl.BR_STATE_LISTENING:
            return None, f"{s.port} is already quarantined by netmedic"
        ids = {"port": s.port, "port_index": tap.index}
        # A quarantine re-applied (the kernel reset the port on a link event, or netmedic restarted) keeps
        # the state the port had before netmedic first changed it.
        kept = snapshot.records.get(quarantine_key(s.port)) or {}
        old = kept.get("prior_state", tap.port.state) if kept.get("mac") == s.mac else tap.port.state
        if old == nl.BR_STATE_LISTENING:
            old = nl.BR_STATE_FORWARDING
        record = {"kind": "quarantine", "key": quarantine_key(s.port), "bridge": s.bridge, "port": s.port,
                  "mac": s.mac, "domain": s.domain, "prior_state": old}
        return Plan(self.NAME, violation, (Step(
            "set_port", {**ids, "state": nl.BR_STATE_LISTENING}, f"set port {s.port} to listening (quarantine: forwards nothing)",
            undo=Step("set_port", {**ids, "state": old}, f"set port {s.port} back to "
                      f"{nl.PORT_STATE_NAMES.get(old, old)}")),),
            f"quarantine {s.port} of VM {s.domain}: its MAC {s.mac} duplicates "
            f"{violation.evidence['first']['domain']}'s", before={"port_state": nl.PORT_STATE_NAMES.get(old, old)},
            records=(record,), claims=(("port_state", s.port),)), ""

    def after(self, snapshot, violation) -> dict:
        tap = snapshot.link(violation.subject.port)
        return {} if tap is None or tap.port is None else {
            "port_state": nl.PORT_STATE_NAMES.get(tap.port.state, tap.port.state)}

    def verify(self, snapshot, violation) -> bool:
        """The duplicate still exists (that is the point): verified when its port forwards nothing."""
        tap = snapshot.link(violation.subject.port)
        return tap is not None and tap.port is not None and tap.port.state == nl.BR_STATE_LISTENING

    def release(self, record, snapshot, force=False):
        """The quarantine ends when the MAC is no longer duplicated (the clone stopped or changed its MAC):
        the port goes back to the state it had before, if it is still in the state netmedic set."""
        if not force and len(snapshot.mac_users(record.get("mac"))) > 1:
            return None
        why = f"{record.get('mac')} is no longer duplicated"
        port = snapshot.link(record.get("port"))
        if port is None or port.port is None or port.port.state != nl.BR_STATE_LISTENING:
            return Release(why)  # gone, or no longer in the state netmedic set
        prior = record.get("prior_state", nl.BR_STATE_FORWARDING)
        return Release(why, (Step("set_port", {"port": port.name, "port_index": port.index, "state": prior},
                                  f"end the quarantine of {port.name}"),))


PLUGIN = Quarantine()
