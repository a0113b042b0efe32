"""libvirt_reload: a libvirt NAT network lost its firewall rules (a firewalld/iptables restart flushed
them: metal3-dev-env#141, cockpit#13723 / Red Hat bug 1813830): ask libvirt to re-apply them — SIGHUP to
its network daemon (virtnetworkd, or libvirtd on a monolithic install), which reloads and re-creates
the rules of every active network (libvirt's firewall documentation names this fix). netmedic writes no
rule itself: libvirt owns them. Opt-in (nat_network_health `remedy: reload-libvirt`, mode enforce).
No undo (a reload changes nothing else); verified when the masquerade rule is back."""
from __future__ import annotations

from netmedic.model import Plan, Step
from netmedic.plugin import Healer


class LibvirtReload(Healer):
    NAME = "libvirt_reload"
    HANDLES = ("nat_network_health",)

    def plan(self, violation, snapshot, options):
        daemons = snapshot.libvirt_daemons or {}
        for comm in ("virtnetworkd", "libvirtd"):
            pid = daemons.get(comm)
            if pid:
                return Plan(self.NAME, violation, (Step(
                    "signal", {"pid": pid, "comm": comm, "signal": "HUP"},
                    f"send SIGHUP to {comm} (pid {pid}): libvirt re-applies its networks' firewall rules"),),
                    f"ask libvirt ({comm}) to re-create the firewall rules of network {violation.subject.network}",
                    before={"masquerade_rules": violation.evidence.get("masquerade_rules", [])}), ""
        return None, "no virtnetworkd or libvirtd runs in this network namespace"

    def after(self, snapshot, violation) -> dict:
        return {"masquerade_rules": [r.rule for r in snapshot.nat_rules or []]}


PLUGIN = LibvirtReload()
