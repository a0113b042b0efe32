"""netfilter_accept: insert `-i BR -o BR -j ACCEPT` at the top of the FORWARD chain of the iptables
backend whose policy drops a VM bridge's traffic. The rule is recorded as netmedic's; netmedic never
edits or removes any other rule. Observe-only by default (firewall changes are the admin's call)."""
from __future__ import annotations

from netmedic.model import Plan, Step
from netmedic.ops import bridge_accept_rule, unsafe_ifname

NAME = "netfilter_accept"
HANDLES = ("bridge_netfilter",)


def plan(violation, snapshot, options):
    bridge = violation.subject.bridge
    backend = violation.evidence["backend"]
    why = unsafe_ifname(bridge)
    if why:
        return None, why
    rule = bridge_accept_rule(bridge)
    step = Step("iptables", {"backend": backend, "args": ["-I", "FORWARD", "1", *rule]},
                f"iptables ({backend}) -I FORWARD 1 {' '.join(rule)}",
                undo=Step("iptables", {"backend": backend, "args": ["-D", "FORWARD", *rule]},
                          f"iptables ({backend}) -D FORWARD {' '.join(rule)}"))
    record = {"kind": "iptables_rule", "key": f"iptables_rule:{backend}:{bridge}", "backend": backend,
              "bridge": bridge, "rule": rule}
    return Plan(NAME, violation, (step,), f"accept bridged traffic of {bridge} in the {backend} FORWARD chain",
                before={"forward_policy": violation.evidence["forward_policy"]}, records=(record,)), ""


def after(snapshot, violation) -> dict:
    return {"forward_chains": [{"backend": c.backend, "policy": c.policy, "rules": list(c.rules)}
                               for c in snapshot.forward_chains]}
