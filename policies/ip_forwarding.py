"""ip_forwarding: for libvirt NAT and routed networks, IPv4 forwarding is on for the interfaces the VM
traffic crosses (the network's bridge and its forward device), and globally. The kernel checks
forwarding per input interface, so the global `ip_forward` alone is not enough."""
from __future__ import annotations

from netmedic.model import Subject, Violation
from netmedic.plugin import Invariant


class IpForwarding(Invariant):
    NAME = "ip_forwarding"
    DESCRIPTION = "IPv4 forwarding is on where a libvirt NAT/routed network's traffic crosses"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "enforce"
    OPTIONS = {}
    HOP = "l3"  # netmedic diagnose shows its violations on this hop
    REMEDIES = {"forwarding_off": "ip_forward"}

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
        return out


PLUGIN = IpForwarding()
