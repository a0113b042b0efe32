"""fdb_pin: pin a VM's MAC `static sticky` on its own tap (what Proxmox does at plug time).

Learning moves any non-sticky entry, even a plain `static` one, so only a sticky pin holds while the
reflection goes on; re-pinning after each move always loses the race. The pin is recorded as
netmedic's, so a VM stop removes exactly it. A static entry someone else made is never overridden.
"""
from __future__ import annotations

from netmedic.model import Plan, Step

NAME = "fdb_pin"
HANDLES = ("fdb_ownership",)


def pin_key(bridge: str, mac: str) -> str:
    return f"fdb_pin:{bridge}:{mac}"


def pin_steps(tap: str, tap_index: int, mac: str) -> Step:
    return Step("fdb_pin", {"port": tap, "port_index": tap_index, "mac": mac},
                f"pin {mac} static sticky on {tap}",
                undo=Step("fdb_delete", {"port": tap, "port_index": tap_index, "mac": mac},
                          f"remove the pin of {mac} on {tap}"))


def plan(violation, snapshot, options):
    s = violation.subject
    tap = snapshot.link(s.port)
    if tap is None:
        return None, f"tap {s.port} no longer exists"
    entry = snapshot.fdb.get((s.bridge, s.mac))
    before = {"fdb_entry": violation.evidence.get("fdb_entry")}
    if entry is not None and entry.static and not entry.local and entry.port_index != tap.index \
            and pin_key(s.bridge, s.mac) not in snapshot.records:
        where = snapshot.name_of(entry.port_index)
        return None, f"a static entry not made by netmedic holds {s.mac} on {where}: not overriding it"
    if entry is not None and entry.local:
        return None, f"{s.mac} is a local (permanent) address of {snapshot.name_of(entry.port_index)}"
    record = {"kind": "fdb_pin", "key": pin_key(s.bridge, s.mac), "bridge": s.bridge, "port": s.port,
              "mac": s.mac, "domain": s.domain}
    return Plan(NAME, violation, (pin_steps(s.port, tap.index, s.mac),),
                f"pin {s.mac} static sticky on {s.port} so learning cannot move it off the VM's tap",
                before=before, records=(record,)), ""


def after(snapshot, violation) -> dict:
    s = violation.subject
    entry = snapshot.fdb.get((s.bridge, s.mac))
    if entry is None:
        return {"fdb_entry": None}
    return {"fdb_entry": {"port": snapshot.name_of(entry.port_index), "static": entry.static,
                          "sticky": entry.sticky}}
