"""bridge_netfilter: bridged VM traffic is not silently dropped by a firewall, in any nf_tables family.

- With br_netfilter on (the netns sysctl `bridge-nf-call-iptables` or the bridge's own nf_call_iptables),
  bridged IPv4 goes through every base chain on the `forward` hook of the `ip` and `inet` tables — with
  the bridge as both input and output interface — and through iptables' FORWARD chain. Every base chain
  is evaluated and a drop in any of them wins, so an accept in another chain does not help.
  - iptables FORWARD (iptables-nft and iptables-legacy): a policy of DROP (Docker's) with no ACCEPT for
    the bridge → `bridged_traffic_dropped` (healed by netfilter_accept: `-i BR -o BR -j ACCEPT`).
  - an nf_tables base chain (firewalld's `table inet firewalld`, EL9's and nftables.conf's `table inet
    filter` / `table ip filter`) whose policy or rules drop the bridge's traffic →
    `bridged_traffic_dropped_nft` (healed by nft_accept: `iifname BR oifname BR accept` in THAT chain).
- Whatever br_netfilter says, a `bridge` table's base chain on the `forward` or `prerouting` hook that
  drops all of a bridge's traffic (ARP too) → `bridged_traffic_dropped_l2`: reported with the table and
  chain, not healed (an L2 firewall is usually deliberate).

"Drops the bridge's traffic": following the chain (jumps and gotos included) for an IPv4 packet entering
and leaving the bridge, the first rule that certainly matches it (its conditions are only on the
interface names, the bridge names or the protocol family) rejects or drops it, or the policy drop is
reached. Rules with other conditions (conntrack state, addresses, ports) do not decide: a drop of some
traffic is a firewall doing its job. A rule whose condition netmedic cannot read (an iptables-nft xt
match) that accepts is given the benefit of the doubt.
"""
from __future__ import annotations

from netmedic.facts import bridge_accept_rule, is_netmedic_rule, render_rule
from netmedic.model import Subject, Violation
from netmedic.plugin import Invariant
from netmedic.policies.config import Option

PHYSDEV_BRIDGED_ACCEPT = ["-m", "physdev", "--physdev-is-bridged", "-j", "ACCEPT"]
NONTERMINAL = frozenset({"counter", "log", "mangle", "notrack", "comment"})
MAX_DEPTH = 16
L2_HOOKS = ("forward", "prerouting")
# firewalld's reload guard: while it reloads it installs this table (every hook: policy drop) and deletes it
# when the new ruleset is in. A pass in between would insert an accept into a table about to go.
TRANSIENT_TABLES = frozenset({("inet", "firewalld_policy_drop")})


def accepts_bridge(rule: str, bridge: str) -> bool:
    """The FORWARD rule accepts all bridged traffic of this bridge: netmedic's own `-i BR -o BR -j
    ACCEPT`, or an unconditional `-m physdev --physdev-is-bridged -j ACCEPT` (not a negated one)."""
    words = rule.split()[2:]  # after '-A FORWARD'
    return words == bridge_accept_rule(bridge) or words == PHYSDEV_BRIDGED_ACCEPT


# --- nf_tables chains --------------------------------------------------------------------------------------
def _name_matches(pattern, name: str) -> bool:
    if not isinstance(pattern, str):
        return False
    if pattern.endswith("*") and not pattern.endswith("\\*"):
        return name.startswith(pattern[:-1].replace("\\", ""))
    return pattern.replace("\\", "") == name


def _values(right) -> list:
    if isinstance(right, dict) and "set" in right:
        right = right["set"]
    if isinstance(right, list):
        return right
    return [right]


def _match(m: dict, ctx: dict):
    """True/False when the match is decided by what `ctx` knows of the packet (interface and bridge
    names, protocol family), None otherwise (a condition on other traffic properties)."""
    left, op = m.get("left"), m.get("op", "==")
    meta = left.get("meta") if isinstance(left, dict) else None
    key = meta.get("key") if isinstance(meta, dict) else None
    if key not in ctx:
        return None
    value = ctx[key]
    if value is None:
        return None
    values = _values(m.get("right"))
    if key in ("nfproto", "protocol", "l4proto"):
        hit = value in values
    else:
        hit = any(_name_matches(p, value) for p in values)
    if op in ("==", "in"):
        return hit
    if op == "!=":
        return not hit
    return None


def _rule_applies(rule, ctx: dict):
    """(applies: True/False/None, verdict statement or None, opaque: bool)."""
    applies = True
    opaque = False
    verdict = None
    for stmt in rule.expr:
        if not isinstance(stmt, dict) or len(stmt) != 1:
            applies = None if applies else applies
            continue
        (key, val), = stmt.items()
        if key == "match":
            r = _match(val, ctx) if isinstance(val, dict) else None
            if r is False:
                return False, None, False
            if r is None and applies:
                applies = None
        elif key in ("accept", "drop", "reject", "return", "jump", "goto", "queue", "continue"):
            verdict = (key, val)
        elif key == "vmap" and isinstance(val, dict):
            verdict = _vmap(val, ctx)
            if verdict is None and applies:
                applies = None
        elif key == "xt":
            opaque = True
            if applies:
                applies = None
        elif key in NONTERMINAL:
            continue
        elif applies:
            applies = None  # limit, quota, set lookups, ...: a condition netmedic does not decide
    return applies, verdict, opaque


def _vmap(val: dict, ctx: dict):
    left = val.get("key")
    meta = left.get("meta") if isinstance(left, dict) else None
    key = meta.get("key") if isinstance(meta, dict) else None
    if key not in ctx or ctx[key] is None:
        return None
    data = val.get("data")
    entries = data.get("set") if isinstance(data, dict) else data
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, list) and len(entry) == 2 and _name_matches(entry[0], ctx[key]) \
                and isinstance(entry[1], dict) and len(entry[1]) == 1:
            (k, v), = entry[1].items()
            return (k, v)
    return ("continue", None)  # no element matches: the vmap does nothing


def chain_verdict(firewall, chain, ctx: dict, skip=None, depth: int = 0):
    """How `chain` treats the packet `ctx` describes: ('accept'|'drop'|'return'|'unknown', where), where
    names the deciding rule (or 'policy drop'). `skip(rule)`: rules to leave out (netmedic's own)."""
    for rule in chain.rules:
        if skip is not None and skip(rule):
            continue
        applies, verdict, opaque = _rule_applies(rule, ctx)
        if applies is False or verdict is None:
            continue
        kind, arg = verdict
        where = {"table": f"{chain.family} {chain.table}", "chain": chain.name, "handle": rule.handle,
                 "rule": render_rule(rule.expr)}
        if applies is None:
            if kind == "accept" and opaque:
                return "unknown", where  # an unreadable condition that accepts: benefit of the doubt
            continue  # a conditional verdict: not about all of the bridge's traffic
        if kind in ("accept", "queue"):
            return "accept", where
        if kind in ("drop", "reject"):
            return "drop", where
        if kind == "return":
            return "return", where
        if kind in ("jump", "goto"):
            target = arg.get("target") if isinstance(arg, dict) else None
            sub = firewall.chain(chain.family, chain.table, target) if target else None
            if sub is None or depth >= MAX_DEPTH:
                return "unknown", where
            result, sub_where = chain_verdict(firewall, sub, ctx, skip, depth + 1)
            if result in ("accept", "drop", "unknown"):
                return result, sub_where
            if kind == "goto":
                return "return", where
    if chain.base:
        if (chain.policy or "accept") == "drop":
            return "drop", {"table": f"{chain.family} {chain.table}", "chain": chain.name, "policy": "drop"}
        return "accept", None
    return "return", None


def dropping_chains(firewall, bridge: str, br_netfilter: bool, iptables_covers_filter_forward: bool = False,
                    skip_own: bool = False) -> tuple:
    """([ip/inet chain evidence], [bridge-table chain evidence]) of the base chains that drop `bridge`'s
    bridged IPv4 traffic."""
    if firewall is None:
        return [], []
    key = (id(firewall.chains), bridge, br_netfilter, iptables_covers_filter_forward, skip_own)
    hit = _MEMO.get(key)
    if hit is not None and hit[0] is firewall.chains:  # the same read of the ruleset: same answer
        return [dict(c) for c in hit[1]], [dict(c) for c in hit[2]]
    l3, l2 = _dropping_chains(firewall, bridge, br_netfilter, iptables_covers_filter_forward, skip_own)
    if len(_MEMO) > 512:
        _MEMO.clear()
    _MEMO[key] = (firewall.chains, l3, l2)
    return [dict(c) for c in l3], [dict(c) for c in l2]


# (id of a Firewall's chains, bridge, ...) -> (those chains, l3, l2): a pass over an unchanged ruleset (the
# generation-keyed read hands out the same chains) does not walk 5,000 rules again.
_MEMO: dict = {}


def _dropping_chains(firewall, bridge, br_netfilter, iptables_covers_filter_forward, skip_own) -> tuple:
    l3, l2 = [], []
    skip = (lambda r: is_netmedic_rule(r, bridge)) if skip_own else None
    for chain in firewall.chains:
        if not chain.base or (chain.type or "filter") != "filter" or (chain.family, chain.table) in TRANSIENT_TABLES:
            continue
        if chain.family in ("ip", "inet") and chain.hook == "forward" and br_netfilter:
            if iptables_covers_filter_forward and (chain.family, chain.table, chain.name) == ("ip", "filter", "FORWARD"):
                continue  # iptables-nft's FORWARD: judged through the iptables view (xt matches readable)
            ctx = {"iifname": bridge, "oifname": bridge, "iif": bridge, "oif": bridge, "nfproto": "ipv4"}
            out = l3
        elif chain.family == "bridge" and chain.hook in L2_HOOKS:
            ctx = {"ibrname": bridge, "obrname": bridge if chain.hook == "forward" else None,
                   "ibridgename": bridge, "protocol": "ip", "nfproto": None}
            out = l2
        else:
            continue
        result, where = chain_verdict(firewall, chain, ctx, skip)
        if result == "drop":
            out.append({"family": chain.family, "table": chain.table, "chain": chain.name, "hook": chain.hook,
                        "priority": chain.prio, "policy": chain.policy or "accept",
                        "dropped_by": where})
    return l3, l2


def _by(ch: dict) -> str:
    d = ch["dropped_by"] or {}
    if d.get("policy"):
        return f"table {ch['family']} {ch['table']} chain {ch['chain']} (policy drop)"
    return (f"table {ch['family']} {ch['table']} chain {ch['chain']} (rule in {d.get('chain')} handle "
            f"{d.get('handle')}: {d.get('rule')})")


L2_HINT = ("a bridge-family nf_tables chain drops this bridge's traffic at layer 2 (ARP included); netmedic "
           "does not change L2 firewalls: allow the VM traffic in that chain (e.g. `nft insert rule bridge "
           "TABLE CHAIN meta ibrname BR accept`) or remove the rule, if the drop is not intended")


class BridgeNetfilter(Invariant):
    NAME = "bridge_netfilter"
    DESCRIPTION = ("bridged traffic is not dropped by a firewall: iptables FORWARD or an nf_tables forward chain "
                   "through br_netfilter, or a bridge-family chain")
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "observe"  # firewall changes are the admin's call
    OPTIONS = {
        "remedy": Option("accept-rule", "accept-rule: insert `-i BR -o BR -j ACCEPT` at the top of FORWARD "
                         "in the iptables backend that drops, and `iifname BR oifname BR accept` at the top of "
                         "each ip/inet nf_tables forward chain that drops", choices=("accept-rule",)),
    }
    HOP = "l3"  # netmedic diagnose shows its violations on this hop
    REMEDIES = {"bridged_traffic_dropped": "netfilter_accept", "bridged_traffic_dropped_nft": "nft_accept",
                "bridged_traffic_dropped_l2": None}
    HINTS = {"bridged_traffic_dropped_l2": L2_HINT}
    NEEDS = frozenset({"firewall"})

    def check(self, snapshot, options) -> list:
        out = []
        global_nf = snapshot.sysctl("net", "bridge", "bridge-nf-call-iptables") == "1"
        bridges = snapshot.vm_bridges()
        fw = getattr(snapshot, "firewall", None)
        covered = any(c.backend == "nft" for c in snapshot.forward_chains)
        for bridge in bridges:
            br = snapshot.bridge(bridge)
            per_bridge = bool(br.bridge and br.bridge.nf_call_iptables)
            brnf = global_nf or per_bridge
            evidence_nf = {"sysctl": global_nf, "bridge": per_bridge}
            for chain in snapshot.forward_chains if brnf else ():
                if chain.policy == "ACCEPT" or any(accepts_bridge(r, bridge) for r in chain.rules):
                    continue
                out.append(Violation(
                    self.NAME, "bridged_traffic_dropped", Subject(bridge=bridge),
                    f"bridged IPv4 on {bridge} goes through iptables ({chain.backend}) FORWARD, whose policy is "
                    f"{chain.policy} with no ACCEPT for {bridge}: VM traffic is dropped while ARP still works",
                    {"backend": chain.backend, "forward_policy": chain.policy,
                     "bridge_nf_call_iptables": evidence_nf, "forward_rules": len(chain.rules)}))
            l3, l2 = dropping_chains(fw, bridge, brnf, covered)
            if l3:
                out.append(Violation(
                    self.NAME, "bridged_traffic_dropped_nft", Subject(bridge=bridge),
                    f"bridged IPv4 on {bridge} goes through nf_tables forward chains (br_netfilter) and "
                    f"{'; '.join(_by(c) for c in l3)} drops it: VM traffic is dropped while ARP still works "
                    f"(an accept in another chain does not override a drop in this one)",
                    {"chains": l3, "bridge_nf_call_iptables": evidence_nf,
                     "generation": fw.generation if fw is not None else None}))
            if l2:
                out.append(Violation(
                    self.NAME, "bridged_traffic_dropped_l2", Subject(bridge=bridge),
                    f"{'; '.join(_by(c) for c in l2)} drops the traffic of {bridge} at layer 2 (ARP too)",
                    {"chains": l2, "generation": fw.generation if fw is not None else None}))
        return out


PLUGIN = BridgeNetfilter()
