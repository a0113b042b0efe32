"""unique_mac: no two VM interfaces on the host share a MAC (cloned guests), and no VM MAC equals a
host interface's MAC."""
from __future__ import annotations

from typing import Optional

from netmedic.model import Subject, Violation
from netmedic.plugin import Admission, Invariant
from netmedic.policies.config import Option


class UniqueMac(Invariant):
    NAME = "unique_mac"
    DESCRIPTION = "every VM NIC's MAC is unique on the host"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "observe"
    OPTIONS = {
        "on_start": Option("allow", "libvirt hook at VM start: allow (and audit) or refuse-start a VM whose MAC "
                           "is already used", choices=("allow", "refuse-start")),
        "remedy": Option("quarantine", "enforce mode: quarantine = set the newer duplicate's bridge port to "
                         "listening (it forwards and learns nothing; link untouched) until the duplicate is gone",
                         choices=("quarantine",)),
    }
    HOP = "duplicates"  # netmedic diagnose shows its violations on this hop
    REMEDIES = {"duplicate_vm_mac": "quarantine", "host_mac_clash": None}
    HINTS = {"host_mac_clash": "give the VM (or the host interface) another MAC address",
             "duplicate_vm_mac": "give one of the VMs a new MAC (virsh edit); enforce mode quarantines the newer one"}
    HOST_WIDE_KINDS = frozenset({"host_mac_clash"})  # needs every host interface: full observations only

    def check(self, snapshot, options) -> list:
        out = []
        # Only the MACs of the NICs this observation covers can yield a violation (a pass narrowed to
        # one VM looks at that VM's MACs, not at the host's thousand).
        # (a full pass: every NIC, those with no bridge too; a scoped one: snapshot.nics(), the covered ones)
        macs = {nic.mac for nic in (snapshot.inventory.nics if snapshot.bridges_observed is None else snapshot.nics())}
        by_mac = {mac: snapshot.mac_users(mac) for mac in macs}
        for mac, nics in sorted(by_mac.items()):
            if len(nics) < 2:
                continue
            first = nics[0]  # the owner (oldest tap); the others are the duplicates
            for nic in nics[1:]:
                if not snapshot.covers(nic.bridge, nic.domain):
                    continue
                out.append(Violation(
                    self.NAME, "duplicate_vm_mac", Subject(bridge=nic.bridge, port=nic.tap, domain=nic.domain, mac=mac),
                    f"VM {nic.domain} ({nic.tap}) uses MAC {mac}, already used by VM {first.domain} ({first.tap}): "
                    f"the bridges deliver its frames to whichever sent last",
                    {"mac": mac, "first": {"domain": first.domain, "tap": first.tap, "bridge": first.bridge},
                     "duplicate": {"domain": nic.domain, "tap": nic.tap, "bridge": nic.bridge}}))
        if not snapshot.links_complete:  # a scoped observation did not see every host interface
            return out
        vm_taps = snapshot.inventory.taps
        host: dict = {}  # VM MAC -> host interfaces with it (a bond and its slaves share one: one violation)
        for link in sorted(snapshot.links.values(), key=lambda lk: lk.index):
            if link.name not in vm_taps and link.mac in by_mac:
                host.setdefault(link.mac, []).append(link.name)
        for mac, names in sorted(host.items()):
            for nic in by_mac[mac]:
                if snapshot.covers(nic.bridge, nic.domain):
                    out.append(Violation(
                        self.NAME, "host_mac_clash", Subject(bridge=nic.bridge, port=nic.tap, domain=nic.domain, mac=mac),
                        f"VM {nic.domain}'s MAC {mac} is also the MAC of host interface{'s' if len(names) > 1 else ''} "
                        f"{', '.join(names)}",
                        {"mac": mac, "host_interface": names[0], "host_interfaces": names}))
        return out

    def admit(self, dom, others: dict, host_macs: dict, options: dict, in_scope) -> Optional[Admission]:
        """prepare begin: is a MAC of the starting domain already used by another running domain, a host
        interface or another NIC of its own? Refused only when the policy says on_start: refuse-start."""
        mine = [n for n in dom.nics if in_scope(n.bridge, dom.name)]
        used: dict = {}  # mac -> [description of the other user]
        for other in others.values():
            if other.name == dom.name:
                continue
            for n in other.nics:
                used.setdefault(n.mac, []).append(f"VM {other.name}" + (f" ({n.tap} on {n.bridge})" if n.tap
                                                                         else f" (on {n.bridge})"))
        own_taps = {n.tap for n in dom.nics if n.tap}
        for ifname, mac in sorted(host_macs.items()):
            if ifname not in own_taps:
                used.setdefault(mac, []).append(f"host interface {ifname}")
        seen: set = set()
        clashes = []
        for n in mine:
            users = list(used.get(n.mac, []))
            if n.mac in seen:
                users.append(f"another NIC of VM {dom.name}")
            seen.add(n.mac)
            if users:
                clashes.append({"mac": n.mac, "bridge": n.bridge, "used_by": users})
        if not clashes:
            return None
        decision = options.get("on_start", "allow")
        first = clashes[0]
        reason = (f"VM {dom.name}: MAC {first['mac']} is already used by {', '.join(first['used_by'])}"
                  + (f" (and {len(clashes) - 1} more duplicate MAC(s))" if len(clashes) > 1 else ""))
        fields = {"reason": reason, "clashes": clashes, "invariant": self.NAME,
                  "policy": f"{self.NAME}.on_start={decision}"}
        if decision == "refuse-start":
            return Admission(True, f"refusing to start {reason} (policy {self.NAME}.on_start: refuse-start)",
                             dict(fields, level="alert"))
        return Admission(False, reason, dict(fields, level="warning"))


PLUGIN = UniqueMac()
