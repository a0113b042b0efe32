"""bridge_mac_set: give a drifting bridge its uplink's MAC (opt-in: bridge_mac in enforce mode). An
address set from userspace is fixed (addr_assign_type "set"): the kernel stops recomputing it from the
ports, so VMs starting and stopping no longer move it. Only with exactly one uplink port. Undo: the
previous address (fixed as well — the kernel cannot be told to follow its ports again)."""
from __future__ import annotations

from netmedic.model import Plan, Step
from netmedic.plugin import Healer
from netmedic.policies.bridge_mac import ASSIGN_TYPES
from netmedic.policies.bridge_uplink import non_tap_ports


class BridgeMacSet(Healer):
    NAME = "bridge_mac_set"
    HANDLES = ("bridge_mac",)

    def plan(self, violation, snapshot, options):
        bridge = violation.subject.bridge
        br = snapshot.bridge(bridge)
        if br is None:
            return None, f"bridge {bridge} no longer exists"
        uplinks = [lk for lk in non_tap_ports(snapshot, bridge) if lk.mac]
        if len(uplinks) != 1:
            return None, (f"{bridge} has {len(uplinks)} uplink ports: which MAC it should keep is the admin's "
                          f"choice (`ip link set {bridge} address MAC`)")
        mac = uplinks[0].mac
        ids = {"bridge": bridge, "bridge_index": br.index}
        return Plan(self.NAME, violation, (Step(
            "set_address", {**ids, "mac": mac}, f"set address of {bridge} to {mac} ({uplinks[0].name}'s)",
            undo=Step("set_address", {**ids, "mac": br.mac}, f"set address of {bridge} back to {br.mac}")),),
            f"fix {bridge}'s address to its uplink {uplinks[0].name}'s MAC {mac}",
            before={"mac": br.mac, "addr_assign_type": violation.evidence.get("addr_assign_type")}), ""

    def after(self, snapshot, violation) -> dict:
        br = snapshot.bridge(violation.subject.bridge)
        assign = (snapshot.bridge_addr or {}).get(violation.subject.bridge)
        return {} if br is None else {"mac": br.mac, "addr_assign_type": ASSIGN_TYPES.get(assign, assign)}


PLUGIN = BridgeMacSet()
