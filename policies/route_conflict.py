"""route_conflict: the host's packets to a VM leave through the VM's bridge. The fourth guide's "subnet
conflict": the VM's address lies in a subnet the host has on the VM's bridge, but a more specific (or
another table's) route sends the host's packets elsewhere — a container bridge, a VPN — so host and VM
cannot talk, and replies to the VM's connections leave through the wrong interface. Also an address of
the bridge's subnet configured on a second host interface (two connected routes for one subnet).
Observe only: the host's routing is the admin's."""
from __future__ import annotations

import ipaddress

from netmedic.model import Subject, Violation
from netmedic.plugin import Invariant


def _subnets(addrs) -> list:
    out = []
    for a in addrs or ():
        iface = ipaddress.ip_interface(a)
        if not iface.ip.is_link_local and iface.network.prefixlen < iface.network.max_prefixlen:
            out.append(iface.network)
    return out


class RouteConflict(Invariant):
    NAME = "route_conflict"
    DESCRIPTION = "the host routes a VM's addresses through the VM's bridge (report only)"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "observe"
    OPTIONS = {}
    HOP = "l3"  # netmedic diagnose shows its violations on this hop
    REMEDIES = {"route_elsewhere": None, "subnet_on_other_interface": None}
    NEEDS = frozenset({"addresses", "routes"})
    HINTS = {"route_elsewhere": "remove or narrow the conflicting route (or renumber the VM's network)",
             "subnet_on_other_interface": "remove the address from the other interface, or renumber one network"}

    def check(self, snapshot, options) -> list:
        out = []
        addrs = snapshot.addresses or {}
        done = set()
        for nic in snapshot.nics():
            br = snapshot.bridge(nic.bridge)
            if br is None:
                continue
            nets = _subnets(addrs.get(br.index))
            for lookup in (snapshot.routes or {}).get((nic.bridge, nic.mac), ()):
                ip = ipaddress.ip_address(lookup.address)
                net = next((n for n in nets if n.version == ip.version and ip in n), None)
                if net is None or lookup.oif == nic.bridge:
                    continue
                out.append(Violation(
                    self.NAME, "route_elsewhere", Subject(bridge=nic.bridge, port=nic.tap, domain=nic.domain,
                                                          mac=nic.mac),
                    f"the host routes VM {nic.domain}'s address {lookup.address} ({net} on {nic.bridge}) out through "
                    f"{lookup.oif or 'nowhere'}, not {nic.bridge}: route {lookup.route} — host and VM cannot talk",
                    {"address": lookup.address, "source": lookup.source, "subnet": str(net), "oif": lookup.oif,
                     "route": lookup.route, "expected": nic.bridge,
                     "fix": f"remove or narrow the conflicting route ({lookup.route}), or renumber one of the two "
                            f"networks"}))
            if nic.bridge in done:
                continue
            done.add(nic.bridge)
            for index, other in sorted(addrs.items()):
                if index == br.index:
                    continue
                for onet in _subnets(other):
                    clash = next((n for n in nets if n.version == onet.version and n.overlaps(onet)), None)
                    if clash is None:
                        continue
                    name = snapshot.name_of(index) or f"ifindex {index}"
                    out.append(Violation(
                        self.NAME, "subnet_on_other_interface", Subject(bridge=nic.bridge),
                        f"{name} also has an address in {clash} ({onet}), the subnet of {nic.bridge}: the host has two "
                        f"routes for its VMs' addresses and may answer them through {name}",
                        {"interface": name, "subnet": str(clash), "other_subnet": str(onet),
                         "fix": f"remove the {onet} address from {name}, or renumber one of the two networks"}))
        return out


PLUGIN = RouteConflict()
