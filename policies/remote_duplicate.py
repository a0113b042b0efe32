"""remote_duplicate: no machine behind the uplink uses a local VM's MAC. A sticky pin keeps the local
VM reachable from this bridge, but the switch still learns the MAC wherever it last saw it: the two
machines steal each other's traffic upstream. netmedic cannot fix that locally and never "fixes" it
by stealing the MAC: alert only.

Evidence comes from a capture of frames carrying the VM's MAC on the uplink (today gathered by
`netmedic diagnose --probe`): frames arriving from the uplink that are not copies of frames the VM just
sent out (a reflecting switch) come from another machine. Without a capture there is no evidence and
no finding."""
from __future__ import annotations

from netmedic.model import Subject, Violation
from netmedic.plugin import Invariant

FIX = ("find the other machine with this MAC (the switch's MAC table shows the port: e.g. `show mac "
       "address-table address MAC`) and change one of the two MACs (virsh edit DOMAIN, <mac address=...>); "
       "netmedic cannot fix this from this host")


class RemoteDuplicate(Invariant):
    NAME = "remote_duplicate"
    DESCRIPTION = "no machine behind the uplink uses a local VM's MAC (alert only)"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "observe"
    OPTIONS = {}
    HOP = "duplicates"  # netmedic diagnose shows its violations on this hop
    REMEDIES = {"remote_duplicate": None}

    def check(self, snapshot, options) -> list:
        out = []
        if not snapshot.sightings:
            return out
        for nic in snapshot.nics():
            seen = snapshot.sightings.get((nic.bridge, nic.mac))
            if not seen or not seen.get("remote"):
                continue
            out.append(Violation(
                self.NAME, "remote_duplicate", Subject(bridge=nic.bridge, port=nic.tap, domain=nic.domain, mac=nic.mac),
                f"{seen['remote']} frame(s) with VM {nic.domain}'s MAC {nic.mac} arrived from the uplink "
                f"{', '.join(seen.get('ports') or [])} that are not reflections of the VM's own frames: another "
                f"machine behind the uplink uses this MAC",
                {**seen, "fix": FIX}))
        return out


PLUGIN = RemoteDuplicate()
