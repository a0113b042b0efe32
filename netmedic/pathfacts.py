"""Host reads for the path facts of a VM NIC beyond the lean link dump: a tap's counters, the host's route
lookup for the VM's addresses, the VM's addresses themselves (DHCP leases, IPv4 and IPv6 neighbours),
and the macvlan/macvtap links with their parents. All through netlink (pyroute2), never `ip` text.

observe() reads them into the Snapshot only when an invariant NEEDS them ("counters", "routes",
"direct"); diagnose reads a few more for its one VM (the counters a second time, for "the last seconds").
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Iterable, Optional

from netmedic import hostfacts
from netmedic.facts import MACVLAN_MODES, Counters, DirectLink, RouteLookup

RTM_F_FIB_MATCH = 0x2000  # the kernel answers with the FIB entry that matched, not the /32 result
_NUD_BAD = 0x01 | 0x20  # NUD_INCOMPLETE, NUD_FAILED


def _errors():
    from pyroute2.netlink.exceptions import NetlinkError

    return (NetlinkError, OSError)


def _ipr(netlink):
    """The pyroute2 socket of a netmedic.nl.Netlink (opened by this call if it was not yet); None for a
    netlink without one (a test's fake host: these facts are then absent, and the invariants that need
    them judge nothing)."""
    return getattr(netlink, "ipr", None) if _has_ipr(netlink) else None


def _has_ipr(netlink) -> bool:
    """Does this netlink have a pyroute2 socket, without opening it?"""
    if isinstance(netlink, type):
        return False
    return isinstance(getattr(type(netlink), "ipr", None), property) or getattr(netlink, "ipr", None) is not None


def _sysfs_counters(name: str, index: Optional[int]) -> Optional[Counters]:
    """The kernel's counters of one link from sysfs, ~10 µs: the daemon may read them for many silent taps
    at every resync. Only when sysfs shows this namespace's link (same ifindex): a /sys mounted for another
    namespace is not trusted."""
    base = f"/sys/class/net/{name}/"
    try:
        with open(base + "ifindex") as fh:
            if index is None or int(fh.read()) != index:
                return None
        base += "statistics/"
        vals = []
        for f in ("rx_packets", "tx_packets"):  # the bytes are not judged: two reads fewer per tap
            with open(base + f) as fh:
                vals.append(int(fh.read()))
        return Counters(*vals)
    except (OSError, ValueError):
        return None


def counters(netlink, names: Iterable) -> dict:
    """name -> Counters for each link that exists (`names`: names, or (name, ifindex) pairs): sysfs when it
    shows the same ifindex, else IFLA_STATS64 of a per-link RTM_GETLINK."""
    out: dict = {}
    if not _has_ipr(netlink):
        return out
    rest = []
    for item in names:
        name, index = item if isinstance(item, tuple) else (item, None)
        if "/" in name or name in (".", ".."):
            continue
        c = _sysfs_counters(name, index)
        if c is not None:
            out[name] = c
        else:
            rest.append(name)
    ipr = _ipr(netlink) if rest else None  # pyroute2 only for what sysfs does not show
    for name in rest:
        try:
            msgs = ipr.link("get", ifname=name)
        except _errors():
            continue
        for msg in msgs:
            st = msg.get_attr("IFLA_STATS64") or msg.get_attr("IFLA_STATS")
            if st is not None:
                out[name] = Counters(int(st["rx_packets"]), int(st["tx_packets"]), int(st["rx_bytes"]),
                                     int(st["tx_bytes"]))
    return out


def _name(netlink, names: dict, index) -> Optional[str]:
    if not index:
        return None
    if index not in names:
        link = netlink.link(int(index))
        names[index] = link.name if link is not None else str(index)
    return names[index]


def neighbours(netlink, macs: Optional[set] = None, names: Optional[dict] = None) -> dict:
    """mac -> [(address, device name)] from the IPv4 and IPv6 neighbour tables (not incomplete/failed)."""
    out: dict = {}
    names = {} if names is None else names
    if _ipr(netlink) is None:
        return out
    msgs, seen = [], set()
    try:
        for family in (socket.AF_INET, socket.AF_INET6):  # pyroute2 0.7 dumps only IPv4 unless asked
            for msg in netlink.ipr.neigh("dump", family=family):
                key = (msg["family"], msg.get_attr("NDA_DST"), msg["ifindex"])
                if key not in seen:
                    seen.add(key)
                    msgs.append(msg)
    except _errors():
        return out
    for msg in msgs:
        if msg["family"] not in (2, 10) or msg["state"] & _NUD_BAD:
            continue
        mac, dst = (msg.get_attr("NDA_LLADDR") or "").lower(), msg.get_attr("NDA_DST")
        if not mac or not dst or (macs is not None and mac not in macs):
            continue
        try:
            if ipaddress.ip_address(dst).is_multicast:
                continue
        except ValueError:
            continue
        out.setdefault(mac, []).append((dst, _name(netlink, names, int(msg["ifindex"]))))
    for found in out.values():
        found.sort(key=lambda a: (ipaddress.ip_address(a[0]).version, a[0]))
    return out


def vm_addresses(netlink, macs: set, leases_dir: str = hostfacts.DEFAULT_LEASES_DIR,
                 names: Optional[dict] = None) -> dict:
    """mac -> [(address, source)] from libvirt's DHCP lease files and the neighbour tables."""
    out: dict = {}
    neigh = neighbours(netlink, macs, names)
    for mac in sorted(macs):
        found = [(ip, "dhcp_lease") for ip, _path, _host in hostfacts.leases(mac, leases_dir)]
        found += [(ip, "neighbour") for ip, _dev in neigh.get(mac, []) if ip not in {f[0] for f in found}]
        if found:
            out[mac] = found
    return out


def route_get(netlink, address: str, source: str = "neighbour", names: Optional[dict] = None) -> RouteLookup:
    """The host's route lookup for `address` (RTM_GETROUTE), with the matching FIB entry (fibmatch)."""
    names = {} if names is None else names
    if _ipr(netlink) is None:
        return RouteLookup(address, source, None, "not looked up")
    try:
        res = netlink.ipr.route("get", dst=address)
    except _errors() as exc:
        return RouteLookup(address, source, None, f"no route ({exc})")
    oif = res[0].get_attr("RTA_OIF") if res else None
    gw = res[0].get_attr("RTA_GATEWAY") if res else None
    route = f"{address} dev {_name(netlink, names, oif)}"
    try:
        fib = netlink.ipr.route("get", dst=address, flags=RTM_F_FIB_MATCH)
        if fib:
            m = fib[0]
            dst = m.get_attr("RTA_DST")
            prefix = f"{dst}/{m['dst_len']}" if dst else "default"
            fgw = m.get_attr("RTA_GATEWAY")
            route = (f"{prefix}" + (f" via {fgw}" if fgw else "") + f" dev {_name(netlink, names, m.get_attr('RTA_OIF'))}"
                     + f" table {m.get_attr('RTA_TABLE') or m['table']}")
    except _errors():
        pass
    return RouteLookup(address, source, _name(netlink, names, oif), route, gw)


def routes(netlink, inventory, leases_dir: str = hostfacts.DEFAULT_LEASES_DIR, nics=None,
           names: Optional[dict] = None) -> dict:
    """(bridge, mac) -> tuple of RouteLookup, one per known address of each VM NIC on a bridge."""
    names = {} if names is None else names
    if _ipr(netlink) is None:
        return {}
    nics = [n for n in (nics if nics is not None else inventory.nics) if n.bridge]
    found = vm_addresses(netlink, {n.mac for n in nics}, leases_dir, names) if nics else {}
    out = {}
    for n in nics:
        if n.mac in found:
            out[(n.bridge, n.mac)] = tuple(route_get(netlink, ip, src, names) for ip, src in found[n.mac])
    return out


def direct_links(netlink) -> dict:
    """name -> DirectLink for every macvlan/macvtap link of this namespace (the VMs' macvtaps and any host
    macvlan that could reach them), with its parent's state and its own addresses."""
    out = {}
    if _ipr(netlink) is None:
        return out
    try:
        links = list(netlink.ipr.get_links())
        addrs = netlink.addresses()
    except _errors():
        return out
    by_index = {int(m["index"]): m for m in links}
    for m in links:
        info = m.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        if kind not in ("macvlan", "macvtap"):
            continue
        data = info.get_attr("IFLA_INFO_DATA")
        mode = None
        if data is not None and hasattr(data, "get_attr"):
            mode = data.get_attr("IFLA_MACVLAN_MODE") if kind == "macvlan" else data.get_attr("IFLA_MACVTAP_MODE")
        parent = by_index.get(m.get_attr("IFLA_LINK"))
        pflags = int(parent["flags"]) if parent is not None else 0
        flags = int(m["flags"])
        out[m.get_attr("IFLA_IFNAME")] = DirectLink(
            name=m.get_attr("IFLA_IFNAME"), index=int(m["index"]), kind=kind,
            mode=mode if isinstance(mode, str) else MACVLAN_MODES.get(mode, str(mode) if mode is not None else None),
            parent=parent.get_attr("IFLA_IFNAME") if parent is not None else None,
            parent_up=bool(pflags & 0x1), parent_carrier=bool(pflags & 0x10000), up=bool(flags & 0x1),
            carrier=bool(flags & 0x10000), addresses=tuple(addrs.get(int(m["index"]), ())))
    return out
