"""Observe the host afresh: the Snapshot every invariant is a pure function of.

Only what the invariants need is read: links, the fdb entry of each VM MAC on its bridge (per-MAC
kernel lookups, batched: the cost follows the number of VMs, not the fdb's size), a few sysctls, and
the iptables FORWARD chains only when a bridge with VMs has bridge netfilter on.

Scope. A full observation (bridges=None) dumps every link. A scoped one reads what the scope's
invariants look at and no more: each bridge, its ports (a dump the kernel filters by master) and their
bond slaves, the VM taps the domain XML puts on it (wherever they are now: a detached tap is found by
name), the records' ports, the NAT networks' devices. `domains` narrows a bridge further to some VMs
(a tap that appeared, one VM's MAC that moved): only the bridge, those VMs' taps and their fdb entries.
Facts that need every link of the host (a VM MAC also used by some host interface elsewhere) are only
judged by full observations: the daemon's startup pass, its periodic resync and overflow resyncs.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from typing import Iterable, Optional

from netmedic import facts, ops
from netmedic import firewall as firewall_mod
from netmedic.inventory import Inventory

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclasses.dataclass
class Snapshot:
    links: dict  # name -> nl.LinkInfo
    inventory: Inventory
    fdb: dict  # (bridge name, mac) -> nl.FdbInfo or None (no entry); only for observed VM NICs
    sysctls: dict  # 'net/ipv4/ip_forward' -> '1' (None: absent, e.g. no br_netfilter)
    forward_chains: list  # ops.ForwardChain per iptables backend in use (iptables-nft's, iptables-legacy's)
    records: dict  # key -> record of what netmedic created (pins, quarantines, rules)
    bridges_observed: Optional[frozenset] = None  # None = all
    domains_observed: Optional[dict] = None  # bridge -> frozenset of domain names it was narrowed to
    links_complete: bool = True  # False: `links` holds only what the scope needed
    # Read only when an enabled invariant declares it in NEEDS (None = not observed):
    addresses: Optional[dict] = None  # 'addresses': ifindex -> ['addr/prefix', ...]
    port_vlans: Optional[dict] = None  # 'port_vlans': ifindex -> tuple of nl.VlanInfo
    nat_rules: Optional[list] = None  # 'nat_rules': hostfacts.NatRule (MASQUERADE rules)
    dnsmasq: Optional[dict] = None  # 'dnsmasq': network name -> hostfacts.Dnsmasq
    firewall: Optional[object] = None  # 'firewall': facts.Firewall (nf_tables chains, read when it changed)
    sightings: Optional[dict] = None  # (bridge, mac) -> frames seen on the uplink (diagnose --probe)
    counters: Optional[dict] = None  # 'counters': tap name -> facts.Counters (taps whose VM MAC is not in the fdb)
    routes: Optional[dict] = None  # 'routes': (bridge, mac) -> tuple of facts.RouteLookup (the VM's known addresses)
    direct: Optional[dict] = None  # 'direct': name -> facts.DirectLink (macvlan/macvtap links)
    bridge_addr: Optional[dict] = None  # 'bridge_addr': bridge name -> addr_assign_type (3 = set, fixed)
    conntrack: Optional[dict] = None  # 'conntrack': count, max, buckets, max_writable, buckets_writable
    kernel_events: Optional[list] = None  # 'kernel_events': facts.KernelEvent of the last minutes
    evpn_fdb: Optional[dict] = None  # 'evpn_fdb': bridge with a vxlan port -> its extern_learn fdb entries
    stp_ports: Optional[dict] = None  # 'stp_ports': bridge with VMs and STP on -> all its ports (LinkInfo)
    libvirt_firewall: Optional[dict] = None  # 'libvirt_firewall': hostfacts.read_libvirt_firewall()
    ipv6_ra: Optional[dict] = None  # 'ipv6_ra': VM bridge or its port -> {forwarding, accept_ra, disable_ipv6}
    guard: Optional[object] = None  # 'guard': facts.GuardTable, netmedic's nf_tables reflection guard
    # What the kernel showed about itself (kept in the state, re-learned when the kernel changes):
    # 'fdb_sticky': True/False once a pin of netmedic's was read back (None: not seen yet), 'release'.
    kernel: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.by_index = {link.index: link for link in self.links.values()}
        self._nics: Optional[list] = None
        self._users: Optional[dict] = None
        self._ports: Optional[dict] = None
        self._vm_bridges: Optional[list] = None

    def link(self, name: Optional[str]):
        return self.links.get(name) if name else None

    def name_of(self, index: Optional[int]) -> Optional[str]:
        link = self.by_index.get(index) if index else None
        return link.name if link else None

    def bridge(self, name: Optional[str]):
        link = self.link(name)
        return link if link is not None and link.kind == "bridge" else None

    def port_on(self, bridge: Optional[str], port: Optional[str]):
        """The link `port` when it is a port of `bridge` (both exist), else None."""
        link, br = self.link(port), self.bridge(bridge)
        return link if link is not None and br is not None and link.master == br.index else None

    def observed(self, bridge: Optional[str]) -> bool:
        return self.bridges_observed is None or bridge in self.bridges_observed

    def covers(self, bridge: Optional[str], domain: Optional[str] = None) -> bool:
        """Did this observation look at that bridge (and at that domain on it, when it was narrowed)?"""
        if not self.observed(bridge):
            return False
        narrow = self.domains_observed.get(bridge) if self.domains_observed else None
        return narrow is None or domain in narrow

    def nics(self) -> list:
        """VM NICs on bridges (and of domains) this snapshot observed (computed once)."""
        if self._nics is None:
            inv = self.inventory
            if self.bridges_observed is None:
                self._nics = [n for n in inv.nics if n.bridge]
            else:  # a scoped pass: only its bridges' NICs are looked at
                self._nics = [n for n in _nics_of(inv, self.bridges_observed)
                              if n.bridge and self.covers(n.bridge, n.domain)]
        return self._nics

    def ports(self, bridge: Optional[str]) -> list:
        """The links enslaved to `bridge`, by name (one index of the links per snapshot)."""
        br = self.bridge(bridge)
        if br is None:
            return []
        if self._ports is None:
            self._ports = {}
            for lk in sorted(self.links.values(), key=lambda lk: lk.name):
                if lk.master:
                    self._ports.setdefault(lk.master, []).append(lk)
        return self._ports.get(br.index, [])

    def vm_bridges(self) -> list:
        """The existing bridges that carry the VM NICs this snapshot observed, sorted."""
        if self._vm_bridges is None:
            self._vm_bridges = sorted({n.bridge for n in self.nics() if self.bridge(n.bridge) is not None})
        return self._vm_bridges

    def uplinks(self, bridge: Optional[str]) -> list:
        """The ports of `bridge` that are not VM taps (the uplink bond/NIC/veth), by name."""
        taps = self.inventory.taps
        return [lk for lk in self.ports(bridge) if lk.name not in taps]

    def sysctl(self, *parts: str) -> Optional[str]:
        return self.sysctls.get(ops.sysctl_key(*parts))

    def records_of(self, kind: str) -> list:
        return [r for r in self.records.values() if r.get("kind") == kind]

    def mac_users(self, mac: str) -> list:
        """Every VM NIC of the inventory with this MAC (not only the observed ones), oldest first: by tap
        ifindex (a later-created tap is the newer NIC), a NIC whose tap is missing last."""
        if self._users is None:  # the inventory's index; a shared MAC's users are sorted when first asked
            self._users = {}
        users = self._users.get(mac)
        if users is None:
            users = self.inventory.by_mac.get(mac, [])
            if len(users) > 1:
                users = sorted(users, key=self._age)
            self._users[mac] = users
        return users

    def mac_owner(self, bridge: Optional[str], mac: str):
        """The NIC that owns `mac` on `bridge`: of the NICs there sharing it (clones), the oldest. The one
        precedence rule for a MAC (netmedic.engine): pins go only on its owner's tap, never a duplicate's."""
        for nic in self.mac_users(mac):
            if nic.bridge == bridge:
                return nic
        return None

    def _age(self, nic) -> tuple:
        tap = self.link(nic.tap)
        return (tap.index if tap else 1 << 30, nic.domain, nic.tap or "")


def observe(netlink, inventory: Inventory, records: Optional[dict] = None,
            bridges: Optional[Iterable[str]] = None, in_scope=None, firewall: bool = True,
            needs: Iterable[str] = (), domains: Optional[dict] = None, firewall_always: bool = False,
            leases_dir: Optional[str] = None, kernel: Optional[dict] = None) -> Snapshot:
    """One fresh observation. `bridges` limits it (links, fdb lookups, what invariants look at) to those
    bridges; `domains` (bridge -> domain names) narrows some of them to those VMs; `in_scope(bridge,
    domain)` filters the VM NICs looked up. `needs`: the optional facts to read as well ('addresses',
    'port_vlans', 'nat_rules', 'dnsmasq'; see _extras). The firewall chains are read when `firewall` and
    br_netfilter sends a bridge's VM traffic through them, or whenever `firewall_always` (netmedic's own
    rules are to be released). `kernel`: what earlier observations learned about the kernel (the state's),
    completed from this one (Snapshot.kernel)."""
    only = frozenset(bridges) if bridges is not None else None
    narrow = ({b: frozenset(d) for b, d in domains.items() if b in only} if only is not None and domains
              else None) or None
    if only is None:
        links = {link.name: link for link in netlink.links()}
    else:
        links = _scoped_links(netlink, inventory, only, narrow or {}, records or {})
    if narrow and set(narrow) == only:
        # Only VMs: the bridge-level facts (iptables FORWARD and nat rules, host addresses on ports,
        # dnsmasq) are for passes over whole bridges; a VM's own port VLANs stay.
        firewall = False
        needs = set(needs) & {"port_vlans", "stp_ports", "guard"}

    def wanted(nic) -> bool:
        if not nic.bridge or (only is not None and nic.bridge not in only):
            return False
        if narrow and nic.bridge in narrow and nic.domain not in narrow[nic.bridge]:
            return False
        return in_scope is None or in_scope(nic.bridge, nic.domain)

    keys: list = []
    bridges_with_vms = set()
    for nic in _nics_of(inventory, only):
        if not wanted(nic):
            continue
        br = links.get(nic.bridge)
        if br is None or br.kind != "bridge":
            continue
        bridges_with_vms.add(nic.bridge)
        keys.append((nic.bridge, nic.mac))
    for rec in (records or {}).values():  # the entries of netmedic's own pins, for their release
        b, mac = rec.get("bridge"), rec.get("mac")
        if narrow and b in narrow and rec.get("domain") not in narrow[b]:
            continue  # a pass narrowed to some VMs releases only theirs (Snapshot.covers)
        if isinstance(b, str) and isinstance(mac, str) and (only is None or b in only) \
                and links.get(b) is not None and links[b].kind == "bridge" and _MAC_RE.match(mac) \
                and (in_scope is None or in_scope(b, rec.get("domain"))):
            keys.append((b, mac))
    keys = list(dict.fromkeys(keys))
    entries = netlink.fdb_get_many([(links[b].index, mac, None) for b, mac in keys]) if keys else []
    fdb: dict = dict(zip(keys, entries))
    if only is not None:  # the ports the entries point at (a MAC learned on a port outside the scope)
        known = {link.index for link in links.values()}
        for entry in entries:
            if entry is not None and entry.port_index not in known:
                port = netlink.link(entry.port_index)
                _add(links, port)
                known.add(entry.port_index)
                if port is not None and port.kind in ("bond", "team"):  # its members, as a bridge pass has
                    for member in netlink.links(master=port.index):
                        _add(links, member)

    keys = [("net", "ipv4", "ip_forward"), ("net", "bridge", "bridge-nf-call-iptables")]
    for net in inventory.networks.values():
        ipv6 = net.forward_mode in ("nat", "route") and any(":" in ip for ip in net.ips)
        if ipv6:
            keys.append(("net", "ipv6", "conf", "all", "forwarding"))
        for dev in (net.bridge, net.forward_dev):
            if dev and dev in links:
                keys.append(("net", "ipv4", "conf", dev, "forwarding"))
                if ipv6:
                    keys += [("net", "ipv6", "conf", dev, "forwarding"), ("net", "ipv6", "conf", dev, "accept_ra")]
    keys = list(dict.fromkeys(keys))
    sysctls = {ops.sysctl_key(*k): ops.read_sysctl(ops.sysctl_key(*k)) for k in keys}

    chains: list = []
    fw = None
    if firewall_always or (firewall and bridges_with_vms):
        # nf_tables (bridge tables too, whatever br_netfilter says) is re-read only when its generation
        # changed; iptables-legacy (no generation) only when br_netfilter sends VM traffic through it.
        global_nf = sysctls.get("net/bridge/bridge-nf-call-iptables") == "1"
        brnf = any(global_nf or (links[b].bridge and links[b].bridge.nf_call_iptables) for b in bridges_with_vms)
        fw = firewall_mod.read(legacy=brnf or firewall_always)
        chains = list(fw.iptables)
    return Snapshot(links=links, inventory=inventory, fdb=fdb, sysctls=sysctls, forward_chains=chains,
                    firewall=fw,
                    records=dict(records or {}), bridges_observed=only, domains_observed=narrow,
                    links_complete=only is None, kernel=_kernel(kernel, records or {}, links, fdb),
                    **_extras(netlink, inventory, links, bridges_with_vms, set(needs), fdb, leases_dir,
                              full=only is None))


def _kernel(known: Optional[dict], records: dict, links: dict, fdb: dict) -> dict:
    """The kernel facts: the known ones (for this kernel release), plus whether the kernel keeps the
    sticky flag, read back from the first static entry netmedic made (a record's MAC on its port):
    kernels before 5.x ignore the flag, and the pin comes back a plain `static` entry."""
    release = os.uname().release
    out = dict(known) if known and known.get("release") == release else {"release": release}
    if out.get("fdb_sticky") is None:
        for rec in records.values():
            entry = fdb.get((rec.get("bridge"), rec.get("mac")))
            port = links.get(rec.get("port")) if isinstance(rec.get("port"), str) else None
            if entry is not None and port is not None and entry.port_index == port.index and entry.static \
                    and not entry.local:
                out["fdb_sticky"] = entry.sticky
                out["fdb_sticky_seen"] = {"bridge": rec["bridge"], "port": port.name, "mac": rec["mac"],
                                          "state": "static", "sticky": entry.sticky}
                break
    return out


def _nics_of(inventory: Inventory, only: Optional[frozenset]) -> list:
    """The VM NICs on the bridges `only` (None: every NIC), in inventory order."""
    if only is None:
        return inventory.nics
    by_bridge = inventory.by_bridge
    nics = [n for b in only for n in by_bridge.get(b, ())]
    if len(only) > 1:
        order = inventory.positions
        nics.sort(key=lambda n: order[id(n)])
    return nics


def _add(links: dict, link) -> None:
    if link is not None:
        links[link.name] = link


def _scoped_links(netlink, inventory: Inventory, only: frozenset, narrow: dict, records: dict) -> dict:
    """name -> LinkInfo of what a scoped observation needs (see the module docstring)."""
    links: dict = {}
    for name in sorted(only):
        br = netlink.link(name)
        _add(links, br)
        if br is None or br.kind != "bridge" or name in narrow:
            continue
        for port in netlink.links(master=br.index):
            _add(links, port)
            if port.kind in ("bond", "team"):  # uplink_aggregation looks at an aggregate's members
                for member in netlink.links(master=port.index):
                    _add(links, member)
    want: set = set()
    scoped_macs: set = set()
    for nic in _nics_of(inventory, only):
        if nic.bridge in only and (nic.bridge not in narrow or nic.domain in narrow[nic.bridge]):
            scoped_macs.add(nic.mac)
            if nic.tap:
                want.add(nic.tap)
    if narrow:  # unique_mac orders the users of a shared MAC by their taps' age: see them all
        by_mac = inventory.by_mac
        want |= {n.tap for mac in scoped_macs for n in by_mac.get(mac, ()) if n.tap}
    for rec in records.values():
        if rec.get("bridge") in only and rec.get("port") and (
                rec.get("bridge") not in narrow or rec.get("domain") in narrow[rec["bridge"]]):
            want.add(rec["port"])
    for net in inventory.networks.values():
        if net.bridge in only:
            want |= {d for d in (net.bridge, net.forward_dev) if d}
    for name in sorted(want - set(links)):
        _add(links, netlink.link(name))
    known = {link.index for link in links.values()}
    for link in list(links.values()):  # masters, for their names (a tap on another bridge)
        if link.master and link.master not in known:
            _add(links, netlink.link(link.master))
            known.add(link.master)
    return links


def _v4_subnets(ips) -> list:
    out = []
    for ip in ips:
        iface = ipaddress.ip_interface(ip)
        if iface.version == 4:
            out.append(str(iface.network))
    return out


def _extras(netlink, inventory: Inventory, links: dict, bridges_with_vms: set, needs: set, fdb=None,
            leases_dir: Optional[str] = None, full: bool = True) -> dict:
    """The optional facts, each only when needed and only when there is something to look at. The guard's
    table is listed again when the ruleset changed, and on every full observation (its drop counters)."""
    from netmedic import hostfacts, pathfacts

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
    if "guard" in needs:
        from netmedic import nftguard
        out["guard"] = nftguard.read(fresh=full)
    if "dnsmasq" in needs:
        out["dnsmasq"] = {n.name: hostfacts.read_dnsmasq(n.name, os.path.dirname(n.source_file))
                          for n in nat if n.ips and n.source_file}
    if "counters" in needs:  # only taps whose guest's MAC the bridge has not learned: a guest that talks is known
        quiet = [(n.tap, links[n.tap].index) for n in inventory.nics if n.tap in links
                 and (n.bridge, n.mac) in (fdb or {}) and (fdb or {})[(n.bridge, n.mac)] is None]
        out["counters"] = pathfacts.counters(netlink, quiet) if quiet else {}
    if "routes" in needs:  # only the VMs of bridges (or NAT networks) where the host has an address
        addrs = out.get("addresses") if out.get("addresses") is not None else netlink.addresses()
        on_link = {b for b in bridges_with_vms if addrs.get(links[b].index)}
        nics = [n for n in inventory.nics if n.bridge in on_link]
        out["routes"] = pathfacts.routes(netlink, inventory, leases_dir or hostfacts.DEFAULT_LEASES_DIR, nics,
                                         {lk.index: lk.name for lk in links.values()}) if nics else {}
    if "direct" in needs:
        out["direct"] = pathfacts.direct_links(netlink) if inventory.direct_nics else {}
    if "libvirt_firewall" in needs:  # libvirt's chains are looked at only when a masquerade is missing
        lost = out.get("nat_rules") is not None and any(
            not facts.masquerades(out["nat_rules"], s) for n in nat for s in _v4_subnets(n.ips))
        out["libvirt_firewall"] = hostfacts.read_libvirt_firewall(chains=lost) if nat else None
    bridges = sorted(n for n, lk in links.items() if lk.kind == "bridge")
    if "bridge_addr" in needs:
        out["bridge_addr"] = {b: hostfacts.read_addr_assign_type(b) for b in bridges}
    if "conntrack" in needs:
        out["conntrack"] = hostfacts.read_conntrack()
    if "kernel_events" in needs:
        out["kernel_events"] = hostfacts.read_kernel_events()
    if "stp_ports" in needs:  # also in a pass narrowed to one VM: a VM start is when STP holds a port
        out["stp_ports"] = {b: tuple(netlink.links(master=links[b].index)) for b in sorted(bridges_with_vms)
                            if links[b].bridge is not None and links[b].bridge.stp_state}
    if "ipv6_ra" in needs:  # the VM bridges and their non-tap ports (3 sysctls each)
        taps = {n.tap for n in inventory.nics if n.tap}
        masters = {links[b].index for b in bridges_with_vms}
        names = set(bridges_with_vms) | {lk.name for lk in links.values() if lk.master in masters
                                         and lk.name not in taps and lk.kind not in ("tun", "macvtap")}
        out["ipv6_ra"] = {n: {k: ops.read_sysctl(ops.sysctl_key("net", "ipv6", "conf", n, k))
                              for k in ("forwarding", "accept_ra", "disable_ipv6")} for n in sorted(names)}
    if "evpn_fdb" in needs:  # only bridges with a vxlan port: one fdb dump each, filtered by the kernel
        vx = {links[b].index: b for b in bridges
              if any(lk.master == links[b].index and lk.kind == "vxlan" for lk in links.values())}
        out["evpn_fdb"] = {b: [e for e in netlink.fdb_dump(i) if e.flags & 0x10] for i, b in vx.items()}
    return out
