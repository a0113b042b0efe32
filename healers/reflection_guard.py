"""reflection_guard: hold a VM's MAC on its tap without the sticky flag, as Open vSwitch's SLB bonds do:
drop a looped frame before the bridge learns from it.

netmedic's own bridge-family nf_tables table (netmedic.nftguard) holds, per bridge, a set of VM MACs and
one rule dropping a frame whose source MAC is in the set but that enters through any port other than that
MAC's tap (the allowed MAC . tap pairs are a second set). Guarding a VM adds its two set elements; the
bridge's rule comes with its first VM. The entry stays a plain dynamic one on the tap: it works on
kernels whose pins lose the sticky flag (before 5.x). A poisoned entry (learned on the uplink before the
guard) is removed as well, so the bridge learns the tap again from the VM's next frame.

Recorded per VM MAC (like a pin), released when the VM stops: the last MAC of a bridge takes the rule
and its set with it, the last bridge the table. A firewall reload that flushes the ruleset removes the
table: the next pass sees the MACs unguarded and puts it back.
"""
from __future__ import annotations

from netmedic.model import Plan, Step
from netmedic.plugin import Healer, Release


def guard_key(bridge: str, mac: str) -> str:
    return f"reflection_guard:{bridge}:{mac}"


class ReflectionGuard(Healer):
    NAME = "reflection_guard"
    HANDLES = ("fdb_ownership",)
    NEEDS = frozenset({"guard"})

    def plan(self, violation, snapshot, options):
        s = violation.subject
        tap = snapshot.link(s.port)
        if tap is None:
            return None, f"tap {s.port} no longer exists"
        table = snapshot.guard
        if table is not None and table.error:
            return None, table.error
        key = guard_key(s.bridge, s.mac)
        old = snapshot.records.get(key) or {}
        args = {"bridge": s.bridge, "mac": s.mac, "port": s.port}
        if old.get("port") and old["port"] != s.port:
            args["stale_port"] = old["port"]  # the VM came back on another tap: its old pair goes
        steps = []
        if table is None or not table.guards(s.bridge, s.mac, s.port):
            steps.append(Step("guard_add", args, f"guard {s.mac} on {s.bridge}: drop its frames entering any "
                              f"port but {s.port}",
                              undo=None if key in snapshot.records else
                              Step("guard_remove", {k: args[k] for k in ("bridge", "mac", "port")},
                                   f"stop guarding {s.mac} on {s.bridge}")))
        entry = snapshot.fdb.get((s.bridge, s.mac))
        if entry is not None and entry.port_index != tap.index and not entry.local:
            where = snapshot.name_of(entry.port_index)
            if entry.static:
                return None, f"a static entry not made by netmedic holds {s.mac} on {where}: not overriding it"
            if where is None:
                return None, f"{s.mac} is learned on ifindex {entry.port_index}, which this pass did not see"
            # The misplaced entry goes: the bridge floods to the VM until its next frame re-teaches the tap,
            # and the guard keeps the reflection from teaching it the wrong port again.
            steps.append(Step("fdb_delete", {"port": where, "port_index": entry.port_index, "mac": s.mac},
                              f"remove the entry that sends {s.mac} out {where}"))
        if not steps:
            return None, f"{s.mac} is already guarded on {s.bridge}"
        record = {"kind": "reflection_guard", "key": key, "bridge": s.bridge, "port": s.port, "mac": s.mac,
                  "domain": s.domain}
        return Plan(self.NAME, violation, tuple(steps),
                    f"guard {s.mac} on {s.bridge} (netmedic's nf_tables bridge table) so that reflected frames "
                    f"cannot teach the bridge another port than {s.port}",
                    before={"fdb_entry": violation.evidence.get("fdb_entry"),
                            "guard": violation.evidence.get("guard")},
                    records=(record,), claims=(("mac", s.bridge, s.mac, s.port),)), ""

    def after(self, snapshot, violation) -> dict:
        s = violation.subject
        entry = snapshot.fdb.get((s.bridge, s.mac))
        table = snapshot.guard
        return {"fdb_entry": None if entry is None else {"port": snapshot.name_of(entry.port_index),
                                                         "static": entry.static, "sticky": entry.sticky},
                "guard": None if table is None else {"guarded": table.guards(s.bridge, s.mac, s.port),
                                                     "drops": table.drops(s.bridge)}}

    def verify(self, snapshot, violation):
        """Guarded, and no entry left on another port (absent is fine: the VM's next frame teaches the tap)."""
        s = violation.subject
        table = snapshot.guard
        if table is None or not table.guards(s.bridge, s.mac, s.port):
            return False
        entry, tap = snapshot.fdb.get((s.bridge, s.mac)), snapshot.link(s.port)
        return entry is None or (tap is not None and entry.port_index == tap.index)

    def release(self, record, snapshot, force=False):
        """The MAC's guard goes when its VM no longer runs with it on this tap."""
        running = any(n.bridge == record.get("bridge") and n.mac == record.get("mac")
                      and n.tap == record.get("port") for n in snapshot.inventory.nics)
        if running and not force:
            return None
        why = f"VM {record.get('domain')} no longer runs with {record.get('mac')} on {record.get('port')}"
        table = snapshot.guard
        if table is not None and not table.error and not table.present:
            return Release(why)  # the table is gone (a firewall reload): nothing of netmedic's is left
        return Release(why, (Step("guard_remove", {"bridge": record.get("bridge"), "mac": record.get("mac"),
                                                   "port": record.get("port")},
                                  f"stop guarding {record.get('mac')} on {record.get('bridge')}"),))


PLUGIN = ReflectionGuard()
