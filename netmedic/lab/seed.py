"""The seed case: the fault netmedic was founded on (a VM on a bridge whose uplink reflects its broadcasts),
built in four namespaces of a Topology (build_seed_case), with the SeedLab handle tests and bench use.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time

from netmedic.lab.libvirt_xml import write_domain_xml
from netmedic.lab.topology import Topology
from netmedic.lab.validate import tap_mac_for, tool


@dataclasses.dataclass
class SeedLab:
    """The seed case, built by :func:`build_seed_case`. Field names are namespace names, except where
    told. Closing the Topology removes the namespaces and the two XML directories."""

    topo: Topology
    host: str
    vm: str
    switch: str
    gw: str
    domain_xml_dir: str  # owned by the lab, removed at close
    network_xml_dir: str  # owned by the lab, removed at close
    bridge: str = "br0"
    tap: str = "vnet0"
    uplink: str = "uplink0"
    vm_mac: str = "52:54:00:12:34:56"
    vm_ip: str = "203.0.113.10"
    gw_ip: str = "203.0.113.1"
    domain: str = "seedvm"
    switch_port: str = "sw0"  # the switch's end of the uplink, where broadcasts are reflected
    uplink_mac: str = "02:00:5e:00:53:01"  # the host's uplink0 (RFC 7042 documentation range, local bit)

    @property
    def tap_mac(self) -> str:
        return tap_mac_for(self.vm_mac)

    def vm_mac_ports(self) -> list[str]:
        """Ports of the host bridge where its fdb has the VM's MAC (normally exactly one)."""
        return self.topo.fdb_ports(self.host, self.bridge, self.vm_mac)

    def vm_reaches_gateway(self, count: int = 1, timeout: float = 0.5, interval: float = 0.1,
                           all_replies: bool = True) -> bool:
        """Ping the gateway from the VM (all ``count`` answered, unless ``all_replies`` is False)."""
        return self.topo.ping(self.vm, self.gw_ip, count=count, timeout=timeout, interval=interval,
                              min_replies=count if all_replies else 1)

    def forget_gateway(self) -> None:
        """Flush the VM's neighbour table, so that its next packet starts with an ARP broadcast."""
        self.topo.run(self.vm, tool("ip"), "neigh", "flush", "dev", "eth0")

    def poison(self, timeout: float = 3.0) -> float:
        """Make the VM send broadcasts (ARP for the gateway) until the host bridge has learned the
        VM's MAC on the uplink; returns the seconds it took. RuntimeError if it did not happen."""
        start = time.monotonic()
        while True:
            self.forget_gateway()
            self.topo.ping(self.vm, self.gw_ip, count=1, timeout=0.05)
            if self.uplink in self.vm_mac_ports():
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"the VM's MAC was not learned on {self.uplink} within {timeout:g} s "
                                   f"(fdb ports: {self.vm_mac_ports()})")

    def pin(self) -> None:
        """The fix netmedic automates: pin the VM's MAC to its tap as ``static sticky``."""
        self.topo.run(self.host, tool("bridge"), "fdb", "replace", self.vm_mac, "dev", self.tap,
                      "master", "static", "sticky")

    def close(self) -> None:
        self.topo.close()


def _lab_dir(path: str) -> str:
    """Create ``path`` (or adopt it if it exists and is empty); refuse a non-empty one."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        if not os.path.isdir(path) or os.listdir(path):
            raise ValueError(f"{path} exists and is not an empty directory: give the lab a fresh workdir") \
                from None
    return path


def build_seed_case(topo: Topology, workdir: str, reflect: bool = True, ipv6: bool = False) -> SeedLab:
    """Build the seed case in four new namespaces of ``topo`` and return it.

    ``host``: bridge ``br0`` (STP off) with two ports: the "tap" ``vnet0`` (host end of a veth whose
    other end is ``eth0`` in ``vm``, with the guest MAC and 203.0.113.10/24; ``vnet0`` carries the
    guest MAC with first octet 0xfe, like a libvirt tap — a real tap is a tun/tap device, here it is a
    veth) and the uplink ``uplink0`` (veth to ``sw0`` in ``sw``). ``sw``: bridge ``swbr`` with ``sw0``
    and ``swgw`` (veth to ``eth0`` in ``gw``, 203.0.113.1/24). With ``reflect``, ``sw0`` sends every
    broadcast it receives back to the host (tc mirred), like a switch in front of a round-robin bond.

    Writes the libvirt run-state XML of domain ``seedvm`` (tap vnet0 on br0) into
    ``workdir/domains`` and creates ``workdir/networks`` (empty); both are removed when ``topo`` closes.

    IPv6 is off in the four namespaces unless ``ipv6``: the guest then sends nothing until asked, so
    its MAC is absent from the fdb until its first frame (as at libvirt's hook phases), and no
    stray IPv6 frame can re-teach the bridge the right port in the middle of an experiment.
    """
    os.makedirs(workdir, exist_ok=True)
    domains = os.path.join(os.path.abspath(workdir), "domains")
    networks = os.path.join(os.path.abspath(workdir), "networks")
    _lab_dir(domains)
    topo.add_cleanup(lambda: shutil.rmtree(domains, ignore_errors=True))
    _lab_dir(networks)
    topo.add_cleanup(lambda: shutil.rmtree(networks, ignore_errors=True))

    host, vm, switch, gw = (topo.netns(s, ipv6=ipv6) for s in ("host", "vm", "sw", "gw"))
    lab = SeedLab(topo=topo, host=host, vm=vm, switch=switch, gw=gw, domain_xml_dir=domains,
                  network_xml_dir=networks)
    topo.bridge(host, lab.bridge, stp=False)
    topo.veth(host, lab.tap, vm, "eth0", mac_a=lab.tap_mac, mac_b=lab.vm_mac)
    topo.enslave(host, lab.tap, lab.bridge)
    # A fixed uplink MAC below the tap's, as a NIC's burned-in address is: a random veth MAC above
    # fe:54:... would make the bridge take the tap's MAC (a real drift, bridge_mac's) in ~1% of labs.
    topo.veth(host, lab.uplink, switch, lab.switch_port, mac_a=lab.uplink_mac)
    topo.enslave(host, lab.uplink, lab.bridge)
    topo.bridge(switch, "swbr", stp=False)
    topo.enslave(switch, lab.switch_port, "swbr")
    topo.veth(switch, "swgw", gw, "eth0")
    topo.enslave(switch, "swgw", "swbr")
    topo.addr(vm, "eth0", f"{lab.vm_ip}/24")
    topo.route(vm, "default", lab.gw_ip)
    topo.addr(gw, "eth0", f"{lab.gw_ip}/24")
    if reflect:
        topo.reflect_broadcasts(switch, lab.switch_port)
    write_domain_xml(domains, lab.domain, [{"mac": lab.vm_mac, "bridge": lab.bridge, "tap": lab.tap}])
    return lab
