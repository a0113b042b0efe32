"""Observe the host afresh: the Snapshot every invariant is a pure function of.

Only what the invariants need is read: links (one dump), the fdb entry of each VM MAC on its bridge
(per-MAC kernel lookups: the cost follows the number of VMs, not the fdb's size), a few sysctls, and
the iptables FORWARD chains only when a bridge with VMs has bridge netfilter on.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Optional

from netmedic import ops
from netmedic.inventory import Inventory, VmNic


@dataclasses.dataclass
class Snapshot:
    links: dict  # name -> nl.LinkInfo
    inventory: Inventory
    fdb: dict  # (bridge name, mac) -> nl.FdbInfo or None (no entry); only for observed VM NICs
    sysctls: dict  # 'net/ipv4/ip_forward' -> '1' (None: absent, e.g. no br_netfilter)
    forward_chains: list  # ops.ForwardChain per iptables backend in use
    records: dict  # key -> record of what netmedic created (pins, quarantines, rules)
    bridges_observed: Optional[frozenset] = None  # None = all
    # Read only when an enabled invariant declares it in NEEDS (None = not observed):
    addresses: Optional[dict] = None  # 'addresses': ifindex -> ['addr/prefix', ...]
    port_vlans: Optional[dict] = None  # 'port_vlans': ifindex -> tuple of nl.VlanInfo
    nat_rules: Optional[list] = None  # 'nat_rules': hostfacts.NatRule (MASQUERADE rules)
    dnsmasq: Optional[dict] = None  # 'dnsmasq': network name -> hostfacts.Dnsmasq
    sightings: Optional[dict] = None  # (bridge, mac) -> frames seen on the uplink (diagnose --probe)

    def __post_init__(self):
        self.by_index = {link.index: link for link in self.links.values()}

    def link(self, name: Optional[str]):
        return self.links.get(name) if name else None

    def name_of(self, index: Optional[int]) -> Optional[str]:
        link = self.by_index.get(index) if index else None
        return link.name if link else None

    def bridge(self, name: Optional[str]):
        link = self.link(name)
        return link if link is not None and link.kind == "bridge" else None

    def observed(self, bridge: Optional[str]) -> bool:
        return self.bridges_observed is None or bridge in self.bridges_observed

    def nics(self) -> list:
        """VM NICs on bridges this snapshot observed."""
        return [n for n in self.inventory.nics if n.bridge and self.observed(n.bridge)]

    def sysctl(self, *parts: str) -> Optional[str]:
        return self.sysctls.get(ops.sysctl_key(*parts))

    def records_of(self, kind: str) -> list:
        return [r for r in self.records.values() if r.get("kind") == kind]


def fdb_owner(snapshot: Snapshot, nics: Iterable[VmNic]) -> dict:
    """(bridge, mac) -> the NIC that owns the MAC there. Clones share a MAC: the oldest tap (lowest
    ifindex) owns it; the others are unique_mac's business."""
    owners: dict = {}
    for nic in nics:
        key = (nic.bridge, nic.mac)
        tap = snapshot.link(nic.tap)
        cur = owners.get(key)
        if cur is None:
            owners[key] = nic
            continue
        cur_tap = snapshot.link(cur.tap)
        if tap is not None and (cur_tap is None or tap.index < cur_tap.index):
            owners[key] = nic
    return owners


def observe(netlink, inventory: Inventory, records: Optional[dict] = None,
            bridges: Optional[Iterable[str]] = None, in_scope=None, firewall: bool = True,
            needs: Iterable[str] = ()) -> Snapshot:
    """One fresh observation. `bridges` limits the fdb lookups (and what invariants look at) to those
    bridges; `in_scope(bridge, domain)` filters the VM NICs looked up. `needs`: the optional facts to
    read as well ('addresses', 'port_vlans', 'nat_rules', 'dnsmasq'; see _extras)."""
    links = {link.name: link for link in netlink.links()}
    only = frozenset(bridges) if bridges is not None else None
    fdb: dict = {}
    bridges_with_vms = set()
    for nic in inventory.nics:
        if not nic.bridge or (only is not None and nic.bridge not in only):
            continue
        if in_scope is not None and not in_scope(nic.bridge, nic.domain):
            continue
        br = links.get(nic.bridge)
        if br is None or br.kind != "bridge":
            continue
        bridges_with_vms.add(nic.bridge)
        key = (nic.bridge, nic.mac)
        if key not in fdb:
            fdb[key] = netlink.fdb_get(br.index, nic.mac)

    keys = [("net", "ipv4", "ip_forward"), ("net", "bridge", "bridge-nf-call-iptables")]
    for net in inventory.networks.values():
        for dev in (net.bridge, net.forward_dev):
            if dev and dev in links:
                keys.append(("net", "ipv4", "conf", dev, "forwarding"))
    sysctls = {ops.sysctl_key(*k): ops.read_sysctl(ops.sysctl_key(*k)) for k in keys}

    chains: list = []
    if firewall:
        global_nf = sysctls.get("net/bridge/bridge-nf-call-iptables") == "1"
        if any(global_nf or (links[b].bridge and links[b].bridge.nf_call_iptables)
               for b in bridges_with_vms):
            chains = ops.read_forward_chains()
    return Snapshot(links=links, inventory=inventory, fdb=fdb, sysctls=sysctls, forward_chains=chains,
                    records=dict(records or {}), bridges_observed=only,
                    **_extras(netlink, inventory, links, bridges_with_vms, set(needs)))


def _extras(netlink, inventory: Inventory, links: dict, bridges_with_vms: set, needs: set) -> dict:
    """The optional facts, each only when needed and only when there is something to look at."""
    from netmedic import hostfacts

    out: dict = {}
    if "addresses" in needs and bridges_with_vms:
        out["addresses"] = netlink.addresses()
    if "port_vlans" in needs:
        vlan_bridges = {b for b in bridges_with_vms if links[b].bridge and links[b].bridge.vlan_filtering}
        if any(n.vlans and n.bridge in vlan_bridges for n in inventory.nics):
            out["port_vlans"] = netlink.port_vlans()
        else:
            out["port_vlans"] = {}
    nat = [n for n in inventory.networks.values() if n.forward_mode == "nat" and n.bridge in links]
    if "nat_rules" in needs:
        out["nat_rules"] = hostfacts.read_nat_rules() if any(n.ips for n in nat) else []
    if "dnsmasq" in needs:
        out["dnsmasq"] = {n.name: hostfacts.read_dnsmasq(n.name, os.path.dirname(n.source_file))
                          for n in nat if n.ips and n.source_file}
    return out
