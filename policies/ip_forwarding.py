"""ip_forwarding: for libvirt NAT and routed networks, forwarding is on for the interfaces the VM traffic
crosses (the network's bridge and its forward device), and globally: IPv4 always, IPv6 when the network
has an IPv6 address (libvirt routes/NATs IPv6 then). The kernel checks forwarding per input interface, so
the global switch alone is not enough. IPv6 forwarding on an interface whose `accept_ra` is 1 makes it
ignore router advertisements: the fix sets `accept_ra=2` on the forward device first (libvirt asks the
same of RA-configured uplinks)."""
from __future__ import annotations

from netmedic.model import Subject, Violation
from netmedic.plugin import Invariant


def _has_ipv6(net) -> bool:
    return any(":" in ip for ip in net.ips)


class IpForwarding(Invariant):
    NAME = "ip_forwarding"
    DESCRIPTION = "IPv4 (and IPv6) forwarding is on where a libvirt NAT/routed network's traffic crosses"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "enforce"
    OPTIONS = {}
    HOP = "l3"  # netmedic diagnose shows its violations on this hop
    REMEDIES = {"forwarding_off": "ip_forward", "ipv6_forwarding_off": "ip_forward"}

    def check(self, snapshot, options) -> list:
        out = []
        for net in sorted(snapshot.inventory.networks.values(), key=lambda n: n.name):
            if net.forward_mode not in ("nat", "route") or not net.bridge or snapshot.bridge(net.bridge) is None:
                continue
            if not snapshot.observed(net.bridge):
                continue
            off = {}
            if snapshot.sysctl("net", "ipv4", "ip_forward") == "0":
                off["net/ipv4/ip_forward"] = "0"
            for dev in (net.bridge, net.forward_dev):
                if dev and snapshot.sysctl("net", "ipv4", "conf", dev, "forwarding") == "0":
                    off[f"net/ipv4/conf/{dev}/forwarding"] = "0"
            if off:
                out.append(Violation(
                    self.NAME, "forwarding_off", Subject(bridge=net.bridge, network=net.name),
                    f"libvirt {net.forward_mode} network {net.name} on {net.bridge}: IPv4 forwarding is off "
                    f"({', '.join(k.replace('/', '.') for k in off)}): its VMs cannot reach beyond the host",
                    {"sysctls": off, "forward_mode": net.forward_mode, "forward_dev": net.forward_dev}))
            if not _has_ipv6(net):
                continue
            off6 = {}
            if snapshot.sysctl("net", "ipv6", "conf", "all", "forwarding") == "0":
                off6["net/ipv6/conf/all/forwarding"] = "0"
            for dev in (net.bridge, net.forward_dev):
                if dev and snapshot.sysctl("net", "ipv6", "conf", dev, "forwarding") == "0":
                    off6[f"net/ipv6/conf/{dev}/forwarding"] = "0"
            if off6:
                ra = {}
                dev = net.forward_dev
                if dev and snapshot.sysctl("net", "ipv6", "conf", dev, "accept_ra") == "1":
                    ra[f"net/ipv6/conf/{dev}/accept_ra"] = "1"
                out.append(Violation(
                    self.NAME, "ipv6_forwarding_off", Subject(bridge=net.bridge, network=net.name),
                    f"libvirt {net.forward_mode} network {net.name} on {net.bridge}: IPv6 forwarding is off "
                    f"({', '.join(k.replace('/', '.') for k in off6)}): its VMs cannot reach beyond the host "
                    f"over IPv6",
                    {"sysctls": off6, "accept_ra": ra, "forward_mode": net.forward_mode,
                     "forward_dev": net.forward_dev}))
        return out


PLUGIN = IpForwarding()
