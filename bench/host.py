"""The benchmark host: N VM "taps" on B bridges with a large fdb and libvirt run-state XML for every
VM, built inside a network namespace of a netmedic.lab.Topology with `ip -batch` / `bridge -batch` files
(thousands of links and entries in a few seconds; one `ip` call per link would take minutes).

A tap is the host end of a veth pair whose peer stays, unenslaved, in the same namespace (this kernel
has no dummy driver; for the bridge, its fdb and netmedic a veth port and a tun/tap port behave
alike). IPv6 is off in the namespace, so no port sends a frame of its own: the fdb holds exactly what
the batch files put there. Each bridge also has an uplink port (veth, peer unenslaved) that carries
the "LAN" entries (static, so that they do not age out during a run).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Optional

from netmedic.lab import Topology, tap_mac_for, write_domain_xml
from netmedic.lab import tool as lab_tool


@dataclasses.dataclass
class Vm:
    domain: str
    tap: str
    mac: str
    bridge: str


@dataclasses.dataclass
class Host:
    ns: str
    workdir: str
    bridges: list
    uplinks: dict  # bridge -> uplink port
    lans: dict  # bridge -> second non-VM port (the other end of MAC moves)
    vms: list
    domain_dir: str
    network_dir: str
    lan_macs: dict  # bridge -> [mac] static on the uplink
    build_seconds: float = 0.0

    def vms_on(self, bridge: str) -> list:
        return [v for v in self.vms if v.bridge == bridge]


def vm_mac(i: int, base: int = 0x10) -> str:
    return f"52:54:{base:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


def lan_mac(i: int) -> str:
    return f"02:00:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


def _batch(topo: Topology, tool: str, ns: str, lines: list, path: str, timeout: float = 300) -> None:
    with open(path, "w") as fh:
        fh.write("".join(line + "\n" for line in lines))
    topo.execute([lab_tool(tool), "-n", topo.own(ns), "-batch", path], timeout=timeout)


def build_host(topo: Topology, short: str, workdir: str, vms: int, bridges: int, fdb_entries: int,
               pin: bool = True, prefix: str = "br", mac_base: int = 0x10,
               ns: Optional[str] = None) -> Host:
    """Build the host in a new namespace ``short`` of ``topo`` (or in ``ns`` when given).

    ``fdb_entries`` is the total size of the bridges' fdbs that the setup aims at: the VM MACs (pinned
    ``static sticky`` on their taps when ``pin``, i.e. a host netmedic already protects, so that a
    reconcile is a no-op) plus static LAN entries on the uplinks for the rest. The ports' own (local)
    entries come on top, as on a real host.
    """
    t0 = time.monotonic()
    ns = ns or topo.netns(short, ipv6=False)
    os.makedirs(workdir, exist_ok=True)
    domain_dir = os.path.join(workdir, "domains")
    network_dir = os.path.join(workdir, "networks")
    for d in (domain_dir, network_dir):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    names = [f"{prefix}{b}" for b in range(bridges)]
    host = Host(ns=ns, workdir=workdir, bridges=names, uplinks={b: f"{b}up" for b in names},
                lans={b: f"{b}lan" for b in names}, vms=[], domain_dir=domain_dir, network_dir=network_dir,
                lan_macs={b: [] for b in names})
    links = []
    for b in names:
        links.append(f"link add name {b} type bridge stp_state 0 forward_delay 0")
        for port in (host.uplinks[b], host.lans[b]):
            links.append(f"link add name {port} type veth peer name {port}p")
            links.append(f"link set {port} master {b}")
    for i in range(vms):
        b = names[i % bridges]
        vm = Vm(domain=f"{prefix}vm{i:04d}", tap=f"{prefix}t{i}", mac=vm_mac(i, mac_base), bridge=b)
        host.vms.append(vm)
        links.append(f"link add name {vm.tap} address {tap_mac_for(vm.mac)} type veth "
                     f"peer name {vm.tap}p")
        links.append(f"link set {vm.tap} master {b}")
    ups = [f"link set {n} up" for n in names]
    for b in names:
        for port in (host.uplinks[b], host.lans[b]):
            ups += [f"link set {port} up", f"link set {port}p up"]
    for vm in host.vms:
        ups += [f"link set {vm.tap} up", f"link set {vm.tap}p up"]
    _batch(topo, "ip", ns, links + ups, os.path.join(workdir, "links.batch"))
    fdb = []
    if pin:
        fdb += [f"fdb replace {vm.mac} dev {vm.tap} master static sticky" for vm in host.vms]
    n_lan = max(0, fdb_entries - (len(host.vms) if pin else 0))
    for i in range(n_lan):
        b = names[i % bridges]
        mac = lan_mac(i)
        host.lan_macs[b].append(mac)
        fdb.append(f"fdb add {mac} dev {host.uplinks[b]} master static")
    if fdb:
        _batch(topo, "bridge", ns, fdb, os.path.join(workdir, "fdb.batch"))
    for vm in host.vms:
        write_domain_xml(domain_dir, vm.domain, [{"mac": vm.mac, "bridge": vm.bridge, "tap": vm.tap}])
    host.build_seconds = time.monotonic() - t0
    return host
