"""bridge_netfilter: bridged VM traffic is not silently dropped by iptables. With br_netfilter on
(the netns sysctl `bridge-nf-call-iptables` or the bridge's own nf_call_iptables), bridged IPv4 goes
through the FORWARD chain; a policy of DROP (what Docker sets) with no ACCEPT for the bridge then
blackholes it while ARP still resolves."""
from __future__ import annotations

from netmedic.facts import bridge_accept_rule
from netmedic.model import Subject, Violation
from netmedic.plugin import Invariant
from netmedic.policies.config import Option

PHYSDEV_BRIDGED_ACCEPT = ["-m", "physdev", "--physdev-is-bridged", "-j", "ACCEPT"]


def accepts_bridge(rule: str, bridge: str) -> bool:
    """The FORWARD rule accepts all bridged traffic of this bridge: netmedic's own `-i BR -o BR -j
    ACCEPT`, or an unconditional `-m physdev --physdev-is-bridged -j ACCEPT` (not a negated one)."""
    words = rule.split()[2:]  # after '-A FORWARD'
    return words == bridge_accept_rule(bridge) or words == PHYSDEV_BRIDGED_ACCEPT


class BridgeNetfilter(Invariant):
    NAME = "bridge_netfilter"
    DESCRIPTION = "bridged traffic is not dropped by an iptables FORWARD policy through br_netfilter"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "observe"  # firewall changes are the admin's call
    OPTIONS = {
        "remedy": Option("accept-rule", "accept-rule: insert `-i BR -o BR -j ACCEPT` at the top of FORWARD "
                         "in the backend that drops", choices=("accept-rule",)),
    }
    HOP = "l3"  # netmedic diagnose shows its violations on this hop
    REMEDIES = {"bridged_traffic_dropped": "netfilter_accept"}
    NEEDS = frozenset({"firewall"})

    def check(self, snapshot, options) -> list:
        out = []
        global_nf = snapshot.sysctl("net", "bridge", "bridge-nf-call-iptables") == "1"
        bridges = sorted({n.bridge for n in snapshot.nics() if snapshot.bridge(n.bridge) is not None})
        for bridge in bridges:
            br = snapshot.bridge(bridge)
            per_bridge = bool(br.bridge and br.bridge.nf_call_iptables)
            if not (global_nf or per_bridge):
                continue
            for chain in snapshot.forward_chains:
                if chain.policy == "ACCEPT" or any(accepts_bridge(r, bridge) for r in chain.rules):
                    continue
                out.append(Violation(
                    self.NAME, "bridged_traffic_dropped", Subject(bridge=bridge),
                    f"bridged IPv4 on {bridge} goes through iptables ({chain.backend}) FORWARD, whose policy is "
                    f"{chain.policy} with no ACCEPT for {bridge}: VM traffic is dropped while ARP still works",
                    {"backend": chain.backend, "forward_policy": chain.policy,
                     "bridge_nf_call_iptables": {"sysctl": global_nf, "bridge": per_bridge},
                     "forward_rules": len(chain.rules)}))
        return out


PLUGIN = BridgeNetfilter()
