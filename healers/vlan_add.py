"""vlan_add: add the VLANs a VM's domain XML names to its tap on a vlan-filtering bridge
(`bridge vlan add vid N dev TAP [pvid untagged]`). Undo: delete exactly the VLANs added. Only the VM's
own port is touched; the bridge's and the uplink's VLAN tables are the admin's."""
from __future__ import annotations

from netmedic.model import Plan, Step
from netmedic.plugin import Healer


class VlanAdd(Healer):
    NAME = "vlan_add"
    HANDLES = ("vlan_membership",)

    def plan(self, violation, snapshot, options):
        s = violation.subject
        tap = snapshot.port_on(s.bridge, s.port)
        if tap is None:
            return None, f"{s.port} is no longer a port of {s.bridge}"
        ids = {"port": s.port, "port_index": tap.index}
        have = {v["vid"]: v for v in violation.evidence["have"]}
        steps = []
        for m in violation.evidence["missing"]:
            words = "".join(w for w, on in ((" pvid", m["pvid"]), (" untagged", m["untagged"])) if on)
            old = have.get(m["vid"])
            if old is None:
                undo = Step("vlan_delete", {**ids, "vid": m["vid"]}, f"bridge vlan del vid {m['vid']} dev {s.port}")
            else:  # already a member with other flags: restore them
                undo = Step("vlan_add", {**ids, **old}, f"restore vlan {m['vid']} flags on {s.port}")
            steps.append(Step("vlan_add", {**ids, **m}, f"bridge vlan add vid {m['vid']} dev {s.port}{words}",
                              undo=undo))
        return Plan(self.NAME, violation, tuple(steps), f"add VLAN(s) {', '.join(str(m['vid']) for m in violation.evidence['missing'])}"
                    f" to {s.port}", before={"have": violation.evidence["have"]}), ""

    def after(self, snapshot, violation) -> dict:
        tap = snapshot.link(violation.subject.port)
        have = (snapshot.port_vlans or {}).get(tap.index, ()) if tap else ()
        return {"have": [{"vid": v.vid, "pvid": v.pvid, "untagged": v.untagged} for v in have]}


PLUGIN = VlanAdd()
