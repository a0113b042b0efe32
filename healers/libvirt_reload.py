"""libvirt_reload: a libvirt NAT network lost its firewall rules: ask libvirt to re-apply them — SIGHUP
to its network daemon (virtnetworkd, or libvirtd on a monolithic install), which re-creates the rules of
every active network (the reload libvirt's firewall documentation names). netmedic writes no rule
itself: libvirt owns them. Opt-in (nat_network_health `remedy: reload-libvirt`, mode enforce).

What a reload can and cannot restore (measured with libvirt 9.0, iptables backend): it refills libvirt's
own chains (LIBVIRT_PRT, LIBVIRT_FWO, ...), but it creates those chains and the jumps to them only when
the daemon starts (or on firewalld's reload signal). After `iptables -F` (the jumps gone) or a restore
that deleted the chains, a SIGHUP cannot bring the network back: the healer then refuses and names the
fix — a restart of libvirt's network daemon (running VMs keep running). No undo (a reload changes
nothing else); verified when the masquerade rule is back and reachable."""
from __future__ import annotations

from netmedic.model import Plan, Step
from netmedic.plugin import Healer

RESTART = ("restart libvirt's network daemon (`systemctl restart virtnetworkd`, or libvirtd on a monolithic "
           "install): it re-creates its chains and their jumps at start; running VMs keep running")


class LibvirtReload(Healer):
    NAME = "libvirt_reload"
    HANDLES = ("nat_network_health",)

    def plan(self, violation, snapshot, options):
        fw = snapshot.libvirt_firewall or {}
        chain = fw.get("chain")
        if chain in ("missing", "unreachable") and not fw.get("nft_table"):
            what = "is gone" if chain == "missing" else "exists but nothing jumps to it from POSTROUTING"
            return None, (f"libvirt's nat chain LIBVIRT_PRT {what}: a reload does not re-create libvirt's chains "
                          f"or their jumps; {RESTART}")
        daemons = fw.get("daemons") or {}
        for comm in ("virtnetworkd", "libvirtd"):
            pid = daemons.get(comm)
            if pid:
                return Plan(self.NAME, violation, (Step(
                    "signal", {"pid": pid, "comm": comm, "signal": "HUP"},
                    f"send SIGHUP to {comm} (pid {pid}): libvirt re-applies its networks' firewall rules"),),
                    f"ask libvirt ({comm}) to re-create the firewall rules of network {violation.subject.network}",
                    before={"masquerade_rules": violation.evidence.get("masquerade_rules", []),
                            "libvirt_chain": chain}), ""
        return None, "no virtnetworkd or libvirtd runs in this network namespace"

    def after(self, snapshot, violation) -> dict:
        return {"masquerade_rules": [r.rule for r in snapshot.nat_rules or []]}


PLUGIN = LibvirtReload()
