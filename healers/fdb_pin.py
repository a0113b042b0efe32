"""fdb_pin: pin a VM's MAC `static sticky` on its own tap (what Proxmox does at plug time).

Learning moves any non-sticky entry, even a plain `static` one, so only a sticky pin holds while the
reflection goes on; re-pinning after each move always loses the race. The pin is recorded as
netmedic's, so a VM stop removes exactly it. A static entry someone else made is never overridden.
"""
from __future__ import annotations

from netmedic.model import Plan, Step
from netmedic.plugin import Healer, Release


def pin_key(bridge: str, mac: str) -> str:
    return f"fdb_pin:{bridge}:{mac}"


def pin_steps(tap: str, tap_index: int, mac: str) -> Step:
    return Step("fdb_pin", {"port": tap, "port_index": tap_index, "mac": mac},
                f"pin {mac} static sticky on {tap}",
                undo=Step("fdb_delete", {"port": tap, "port_index": tap_index, "mac": mac},
                          f"remove the pin of {mac} on {tap}"))


class FdbPin(Healer):
    NAME = "fdb_pin"
    HANDLES = ("fdb_ownership",)

    def plan(self, violation, snapshot, options):
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
        if (getattr(snapshot, "kernel", None) or {}).get("fdb_sticky") is False:
            return None, ("this kernel does not keep the sticky flag (netmedic's first pin read back a plain static "
                          "entry, which learning moves): set invariants.fdb_ownership.remedy to guard or auto")
        record = {"kind": "fdb_pin", "key": pin_key(s.bridge, s.mac), "bridge": s.bridge, "port": s.port,
                  "mac": s.mac, "domain": s.domain}
        return Plan(self.NAME, violation, (pin_steps(s.port, tap.index, s.mac),),
                    f"pin {s.mac} static sticky on {s.port} so learning cannot move it off the VM's tap",
                    before=before, records=(record,), claims=(("mac", s.bridge, s.mac, s.port),)), ""

    def after(self, snapshot, violation) -> dict:
        s = violation.subject
        entry = snapshot.fdb.get((s.bridge, s.mac))
        if entry is None:
            return {"fdb_entry": None}
        return {"fdb_entry": {"port": snapshot.name_of(entry.port_index), "static": entry.static,
                              "sticky": entry.sticky}}
    def verify(self, snapshot, violation):
        """A pin the kernel stored without the sticky flag (kernels before 5.x) does not hold: False (it is
        rolled back; the kernel's answer is kept and `remedy: auto` turns to the guard)."""
        s = violation.subject
        entry, tap = snapshot.fdb.get((s.bridge, s.mac)), snapshot.link(s.port)
        if entry is not None and tap is not None and entry.port_index == tap.index and entry.static \
                and not entry.sticky:
            return False
        return None

    def release(self, record, snapshot, force=False):
        """The pin goes when its VM no longer runs with this MAC on this tap — and only the entry netmedic
        made: one that moved, or lost its sticky flag, is no longer netmedic's to remove."""
        running = any(n.bridge == record.get("bridge") and n.mac == record.get("mac")
                      and n.tap == record.get("port") for n in snapshot.inventory.nics)
        if running and not force:
            return None
        why = f"VM {record.get('domain')} no longer runs with {record.get('mac')} on {record.get('port')}"
        port, br = snapshot.link(record.get("port")), snapshot.bridge(record.get("bridge"))
        if port is None or br is None:
            return Release(why)  # the tap (or bridge) is gone and took the pin with it
        entry = snapshot.fdb.get((record["bridge"], record["mac"]))
        if entry is None or entry.port_index != port.index or not entry.sticky:
            return Release(why)  # no longer the entry netmedic made: leave it alone
        return Release(why, (Step("fdb_delete", {"port": port.name, "port_index": port.index,
                                                 "mac": record["mac"]},
                                  f"remove netmedic's pin of {record['mac']} on {port.name}"),))


PLUGIN = FdbPin()
