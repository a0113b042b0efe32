"""uplink_aggregation: no round-robin (or broadcast) bond under a bridge with VMs — the founding case.
balance-rr sends consecutive frames through different members and broadcast mode sends each frame
through all of them; unless the switch aggregates the members (static LAG/EtherChannel), it floods
the VM's broadcasts from one member back into another. The bridge then learns the VM's MAC on the
bond and sends the VM's traffic out of it. netmedic never reconfigures a bond: it reports the risk
and the remedies; fdb_ownership's sticky pin keeps the VM reachable meanwhile."""
from __future__ import annotations

from netmedic.model import Subject, Violation
from netmedic.plugin import Invariant

BOND_MODES = {0: "balance-rr", 1: "active-backup", 2: "balance-xor", 3: "broadcast", 4: "802.3ad",
              5: "balance-tlb", 6: "balance-alb"}
RISKY_MODES = (0, 3)  # one flow's frames (or one frame) through several members
REMEDY_TEXT = ("use an active-backup bond (mode 1) or LACP (802.3ad, mode 4) with the switch ports in an "
               "LACP group; or keep balance-rr only with a static LAG (EtherChannel) on the switch; "
               "meanwhile netmedic's fdb_ownership pins each VM MAC static sticky on its tap")


def uplinks(snapshot, bridge: str) -> list:
    """The ports of `bridge` that are not VM taps (the uplink bond/NIC/veth), by name."""
    return snapshot.uplinks(bridge)


def members(snapshot, bond) -> list:
    return sorted(lk.name for lk in snapshot.links.values() if lk.master == bond.index)


class UplinkAggregation(Invariant):
    NAME = "uplink_aggregation"
    DESCRIPTION = "no round-robin/broadcast bond (or team) under a bridge with VMs"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "observe"  # never reconfigures: a finding only
    OPTIONS = {}
    HOP = "uplink"  # netmedic diagnose shows its violations on this hop
    REMEDIES = {"multi_path_bond": None}

    def check(self, snapshot, options) -> list:
        out = []
        bridges = snapshot.vm_bridges()
        for bridge in bridges:
            for up in uplinks(snapshot, bridge):
                if up.kind != "bond" or up.bond_mode not in RISKY_MODES:
                    continue
                mode = BOND_MODES[up.bond_mode]
                out.append(Violation(
                    self.NAME, "multi_path_bond", Subject(bridge=bridge, port=up.name),
                    f"bond {up.name} under {bridge} runs {mode}: unless the switch aggregates its members, it "
                    f"reflects the VMs' broadcasts back into {up.name}, the bridge learns the VMs' MACs there and "
                    f"their traffic goes out the uplink (VMs cut off)",
                    {"bond": up.name, "mode": mode, "members": members(snapshot, up), "remedies": REMEDY_TEXT},
                    severity="risk"))
        return out


PLUGIN = UplinkAggregation()
