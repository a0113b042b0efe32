"""fdb_ownership: a running VM's MAC, on its bridge, belongs to its own tap — and is pinned there
(`static sticky`) so that learning cannot move it to another port (the founding case: a round-robin
bond reflects the VM's broadcasts and the bridge learns the MAC on the uplink)."""
from __future__ import annotations

from netmedic.model import Subject, Violation
from netmedic.plugin import Invariant
from netmedic.policies.config import Option


def _entry_evidence(snapshot, entry) -> dict:
    if entry is None:
        return {"fdb_entry": None}
    return {"fdb_entry": {"port": snapshot.name_of(entry.port_index) or entry.port_index,
                          "static": entry.static, "sticky": entry.sticky, "local": entry.local}}


class FdbOwnership(Invariant):
    NAME = "fdb_ownership"
    DESCRIPTION = "a VM's MAC is in its bridge's fdb on its own tap, pinned static sticky"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "enforce"
    OPTIONS = {
        "require_pin": Option(True, "report a VM MAC that is not pinned static sticky on its tap (a risk: "
                              "learning can move it) — off: only report a MAC already learned elsewhere",
                              type=bool),
        "remedy": Option("pin-sticky", "how to heal: pin the MAC static sticky on the VM's tap",
                         choices=("pin-sticky",)),
    }
    HOP = "fdb"  # netmedic diagnose shows its violations on this hop
    REMEDIES = {"poisoned": "fdb_pin", "unpinned": "fdb_pin"}

    def check(self, snapshot, options) -> list:
        # The MAC's owner on its bridge, among every NIC that uses it (a clone's narrowed pass included):
        # a MAC two VM NICs share is judged for the older NIC only, never for the duplicate.
        owners = {}
        for nic in snapshot.nics():
            owner = snapshot.mac_owner(nic.bridge, nic.mac)
            if owner is not None:
                owners[(nic.bridge, nic.mac)] = owner
        out = []
        for (bridge, mac), nic in sorted(owners.items()):
            br, tap = snapshot.bridge(bridge), snapshot.link(nic.tap)
            if br is None or tap is None or tap.master != br.index:
                continue  # detached or missing tap: port_forwarding's business
            entry = snapshot.fdb.get((bridge, mac))
            subject = Subject(bridge=bridge, port=nic.tap, domain=nic.domain, mac=mac)
            evidence = {"expected_port": nic.tap, **_entry_evidence(snapshot, entry)}
            if entry is not None and entry.port_index != tap.index:
                where = snapshot.name_of(entry.port_index) or f"ifindex {entry.port_index}"
                out.append(Violation(self.NAME, "poisoned", subject,
                                     f"{bridge} has learned VM {nic.domain}'s MAC {mac} on {where}, not on its "
                                     f"tap {nic.tap}: frames for the VM are sent out {where}", evidence))
            elif options.get("require_pin", True) and (entry is None or not (entry.sticky and entry.static)):
                state = "absent" if entry is None else "learned but not pinned"
                out.append(Violation(self.NAME, "unpinned", subject,
                                     f"VM {nic.domain}'s MAC {mac} is {state} on {nic.tap}: learning can move "
                                     f"it to another port of {bridge}", evidence, severity="risk"))
        return out


PLUGIN = FdbOwnership()
