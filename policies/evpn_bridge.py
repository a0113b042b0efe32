"""evpn_bridge: a bridge whose fdb an EVPN control plane manages (FRR's zebra installs remote MACs as
`extern_learn` entries on a bridge with a vxlan port). There a VM MAC can legitimately move to a remote
VTEP (a live migration), and a sticky pin on the local tap would keep it from following
(FRRouting/frr#21473). Reported (`evpn_managed`, a risk) with the policy choice named: exclude the
bridge from fdb_ownership's pins (`bridges: {BR: off}`). Report only."""
from __future__ import annotations

from netmedic.model import Subject, Violation
from netmedic.plugin import Invariant


class EvpnBridge(Invariant):
    NAME = "evpn_bridge"
    DESCRIPTION = "a bridge whose fdb an EVPN control plane manages (extern_learn entries) is named"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "observe"
    NEEDS = frozenset({"evpn_fdb"})
    OPTIONS = {}
    HOP = "fdb"  # netmedic diagnose shows its violations on this hop
    REMEDIES = {"evpn_managed": None}

    def check(self, snapshot, options) -> list:
        out = []
        for bridge, entries in sorted((snapshot.evpn_fdb or {}).items()):
            if not entries or not snapshot.observed(bridge):
                continue
            vxlan = [lk.name for lk in snapshot.ports(bridge) if lk.kind == "vxlan"]
            pins = sorted(r.get("mac") for r in snapshot.records.values()
                          if r.get("bridge") == bridge and r.get("kind") == "fdb_pin")
            out.append(Violation(
                self.NAME, "evpn_managed", Subject(bridge=bridge),
                f"bridge {bridge} has a vxlan port ({', '.join(vxlan)}) and {len(entries)} extern_learn fdb "
                f"entries (an EVPN control plane such as FRR manages its fdb): a sticky pin would keep a VM MAC "
                f"that moved to a remote VTEP from following it" + (f"; netmedic pins {len(pins)} MACs here" if pins
                                                                    else ""),
                {"vxlan_ports": vxlan, "extern_learn": len(entries),
                 "examples": [{"mac": e.mac, "port": snapshot.name_of(e.port_index)} for e in entries[:5]],
                 "netmedic_pins": pins,
                 "fix": f"set `invariants.fdb_ownership.bridges: {{{bridge}: off}}` in the policy (no pins there; the "
                        f"EVPN control plane keeps the fdb right)"},
                severity="risk"))
        return out


PLUGIN = EvpnBridge()
