"""Throw-away network topologies in network namespaces, for ``netmedic lab`` and the integration tests.

Everything here happens inside network namespaces that a :class:`Topology` creates itself: it never
touches the root namespace's interfaces, routes or firewall. Veth pairs are created *inside* a
namespace (``ip -n A link add X type veth peer name Y netns B``), so no interface ever exists in the
root namespace, not even for an instant. Addresses are limited to the documentation networks in
:data:`LAB_NETWORKS`.

The topology is built with the ``ip``, ``bridge``, ``tc`` and ``sysctl`` commands (argv lists, never a
shell), so that tests judge the kernel's state with tools independent of netmedic's own netlink code.
``ping`` is done by a tiny ICMP echo prober run with this Python inside the namespace (raw socket, so
root), because iputils' ping is not installed everywhere (it is not on the CI machines).

The seed case (:func:`build_seed_case`) reproduces the fault netmedic was founded on: a VM on a Linux
bridge whose uplink goes to a switch that reflects the VM's broadcasts back into the uplink (on a real
host: a round-robin bond). The bridge learns the VM's MAC on the uplink port and sends the gateway's
replies out of the uplink: the VM is cut off. The reflecting switch is emulated with a tc ``mirred``
action on the switch's side of the uplink veth (bonding is not available on every kernel).

A real libvirt tap is a tun/tap device whose other side is the guest's virtio NIC inside QEMU. In a
lab the "VM" is a network namespace behind a veth pair whose host end is named and addressed like a
libvirt tap (``vnet0``, MAC = guest MAC with first octet 0xfe) and enslaved to the bridge; for the
bridge, its fdb and everything netmedic watches, the two behave alike.

The package, one module per role (the public API is ``__all__`` below; bench/ and tests/ use only it):

- ``topology``: :class:`Topology` (namespaces, bridges, veths, addresses, tc reflection, processes);
- ``libvirt_xml``: :func:`write_domain_xml`, :func:`write_network_xml` (libvirt run-state XML);
- ``seed``: :func:`build_seed_case` and :class:`SeedLab`;
- ``validate``: name/MAC/address checks, :func:`tool` (absolute path of ip/bridge/tc/sysctl);
- ``prober``: :data:`PROBER`, the ICMP echo prober script;
- ``runner``: the ``netmedic lab`` command (:func:`main`).
"""
from netmedic.lab.libvirt_xml import write_domain_xml, write_network_xml
from netmedic.lab.prober import PROBER
from netmedic.lab.runner import SCENARIOS, main
from netmedic.lab.seed import SeedLab, build_seed_case
from netmedic.lab.topology import Topology
from netmedic.lab.validate import LAB_NETWORKS, tap_mac_for, tool, validate_ifname, validate_mac

__all__ = [
    "LAB_NETWORKS",
    "PROBER",
    "SCENARIOS",
    "SeedLab",
    "Topology",
    "build_seed_case",
    "main",
    "tap_mac_for",
    "tool",
    "validate_ifname",
    "validate_mac",
    "write_domain_xml",
    "write_network_xml",
]
