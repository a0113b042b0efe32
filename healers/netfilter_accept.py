"""netfilter_accept: insert `-i BR -o BR -j ACCEPT` at the top of the FORWARD chain of the iptables
backend whose policy drops a VM bridge's traffic. The rule is recorded as netmedic's; netmedic never
edits or removes any other rule. Observe-only by default (firewall changes are the admin's call)."""
from __future__ import annotations

from netmedic.facts import bridge_accept_rule, literal_ifname
from netmedic.model import Plan, Step
from netmedic.plugin import Healer, Release


class NetfilterAccept(Healer):
    NAME = "netfilter_accept"
    HANDLES = ("bridge_netfilter",)
    RECORDS = ("iptables_rule",)
    NEEDS = frozenset({"firewall"})  # releasing a rule needs the chains read, whatever br_netfilter says

    def plan(self, violation, snapshot, options):
        bridge = violation.subject.bridge
        if not literal_ifname(bridge):
            return None, f"bridge name {bridge!r} would be read as a pattern by iptables: no rule is written for it"
        backend = violation.evidence["backend"]
        rule = bridge_accept_rule(bridge)
        step = Step("iptables", {"backend": backend, "args": ["-I", "FORWARD", "1", *rule]},
                    f"iptables ({backend}) -I FORWARD 1 {' '.join(rule)}",
                    undo=Step("iptables", {"backend": backend, "args": ["-D", "FORWARD", *rule]},
                              f"iptables ({backend}) -D FORWARD {' '.join(rule)}"))
        record = {"kind": "iptables_rule", "key": f"iptables_rule:{backend}:{bridge}", "backend": backend,
                  "bridge": bridge, "rule": rule}
        return Plan(self.NAME, violation, (step,), f"accept bridged traffic of {bridge} in the {backend} FORWARD chain",
                    before={"forward_policy": violation.evidence["forward_policy"]}, records=(record,)), ""

    def after(self, snapshot, violation) -> dict:
        return {"forward_chains": [{"backend": c.backend, "policy": c.policy, "rules": list(c.rules)}
                                   for c in snapshot.forward_chains]}

    def release(self, record, snapshot, force=False):
        """netmedic's ACCEPT goes when no VM runs on its bridge any more (or the bridge is gone); only the
        exact rule netmedic inserted is deleted, and only while it is there."""
        bridge, backend, rule = record.get("bridge"), record.get("backend"), list(record.get("rule") or ())
        if not force and snapshot.bridge(bridge) is not None and any(
                n.bridge == bridge for n in snapshot.inventory.nics):
            return None
        why = f"no VM runs on {bridge} any more"
        present = any(c.backend == backend and any(r.split()[2:] == rule for r in c.rules)
                      for c in snapshot.forward_chains)
        if not rule or not present:
            return Release(why)  # a firewall reload already took it away
        return Release(why, (Step("iptables", {"backend": backend, "args": ["-D", "FORWARD", *rule]},
                                  f"iptables ({backend}) -D FORWARD {' '.join(rule)}"),))


PLUGIN = NetfilterAccept()
