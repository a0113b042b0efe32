"""nft_accept: for an ip/inet nf_tables base chain on the forward hook that drops a VM bridge's bridged
traffic under br_netfilter, insert `iifname BR oifname BR accept` (commented `netmedic: accept bridged
traffic of BR`) at the top of THAT chain — an accept in another base chain does not override its drop.
Written through libnftables' JSON commands (netmedic.firewall). Each rule is recorded; netmedic never
edits or removes any other rule. A firewall reload (firewalld, `systemctl restart nftables`) takes the
rule away: its nf_tables event triggers a pass, which finds the drop again and inserts it again. The rule
goes (release) when no VM runs on the bridge any more, or when the chain no longer drops the bridge's
traffic without it (the admin allowed it, or the chain is gone). Observe-only by default."""
from __future__ import annotations

from netmedic.facts import is_netmedic_rule, literal_ifname
from netmedic.model import Plan, Step
from netmedic.plugin import Healer, Release
from netmedic.policies.bridge_netfilter import dropping_chains


def _text(family, table, chain, bridge) -> str:
    return f'nft insert rule {family} {table} {chain} iifname "{bridge}" oifname "{bridge}" accept'


def _args(rec_or_chain: dict, bridge: str) -> dict:
    return {"family": rec_or_chain["family"], "table": rec_or_chain["table"], "chain": rec_or_chain["chain"],
            "bridge": bridge}


class NftAccept(Healer):
    NAME = "nft_accept"
    HANDLES = ("bridge_netfilter",)
    RECORDS = ("nft_rule",)
    NEEDS = frozenset({"firewall"})

    def plan(self, violation, snapshot, options):
        bridge = violation.subject.bridge
        if not literal_ifname(bridge):
            return None, f"bridge name {bridge!r} would be read as a pattern by nft: no rule is written for it"
        steps, records = [], []
        for ch in violation.evidence["chains"]:
            if ch["family"] not in ("ip", "inet"):
                continue
            args = _args(ch, bridge)
            desc = _text(ch["family"], ch["table"], ch["chain"], bridge)
            steps.append(Step("nft_insert_accept", args, desc,
                              undo=Step("nft_delete_accept", args, f"delete netmedic's rule for {bridge} from "
                                        f"{ch['family']} {ch['table']} {ch['chain']}")))
            records.append({"kind": "nft_rule", "key": f"nft_rule:{ch['family']}:{ch['table']}:{ch['chain']}:{bridge}",
                            **args})
        if not steps:
            return None, "no ip/inet chain to insert an accept into"
        where = ", ".join(f"{c['family']} {c['table']} {c['chain']}" for c in violation.evidence["chains"])
        return Plan(self.NAME, violation, tuple(steps), f"accept bridged traffic of {bridge} in {where}",
                    before={"chains": violation.evidence["chains"]}, records=tuple(records)), ""

    def after(self, snapshot, violation) -> dict:
        fw = snapshot.firewall
        out = []
        for ch in violation.evidence["chains"]:
            c = fw.chain(ch["family"], ch["table"], ch["chain"]) if fw is not None else None
            out.append({"table": f"{ch['family']} {ch['table']}", "chain": ch["chain"],
                        "rules": len(c.rules) if c is not None else None,
                        "policy": c.policy if c is not None else None})
        return {"chains": out, "generation": fw.generation if fw is not None else None}

    def release(self, record, snapshot, force=False):
        """The rule goes when no VM runs on its bridge any more (or the bridge is gone), or when its chain
        would no longer drop the bridge's traffic without it; only netmedic's own rule is deleted."""
        bridge = record.get("bridge")
        fw = snapshot.firewall
        if fw is None or fw.error is not None:
            return None  # not read: nothing known
        chain = fw.chain(record.get("family"), record.get("table"), record.get("chain"))
        if chain is None:
            return Release(f"chain {record.get('family')} {record.get('table')} {record.get('chain')} is gone")
        present = any(is_netmedic_rule(r, bridge) for r in chain.rules)
        if force or snapshot.bridge(bridge) is None or not any(n.bridge == bridge for n in snapshot.inventory.nics):
            why = f"no VM runs on {bridge} any more"
        else:
            global_nf = snapshot.sysctl("net", "bridge", "bridge-nf-call-iptables") == "1"
            br = snapshot.bridge(bridge)
            brnf = global_nf or bool(br.bridge and br.bridge.nf_call_iptables)
            l3, _ = dropping_chains(fw, bridge, brnf, skip_own=True)
            if any((c["family"], c["table"], c["chain"]) == (chain.family, chain.table, chain.name) for c in l3):
                return None  # still needed (or, when a reload removed it, to be inserted again by the pass)
            why = f"{chain.where} no longer drops {bridge}'s traffic without netmedic's rule"
        if not present:
            return Release(why)
        args = _args(record, bridge)
        return Release(why, (Step("nft_delete_accept", args, f"delete netmedic's rule for {bridge} from "
                                  f"{args['family']} {args['table']} {args['chain']}"),))


PLUGIN = NftAccept()
