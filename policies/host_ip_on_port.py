"""host_ip_on_port: no IP address on a port of a bridge with VMs. Frames arriving on an enslaved NIC
belong to the bridge: an address left on the NIC (instead of on the bridge) is unreachable, so the
host loses its own connectivity over that NIC and host <-> VM traffic breaks. Observe only: moving
addresses can cut the admin's own session. IPv6 link-local addresses (fe80::/10, made automatically)
are ignored."""
from __future__ import annotations

import ipaddress

from netmedic.model import Subject, Violation
from netmedic.plugin import Invariant


def port_addresses(snapshot, link) -> list:
    out = []
    for a in (snapshot.addresses or {}).get(link.index, []):
        try:
            if ipaddress.ip_interface(a).ip.is_link_local:
                continue
        except ValueError:
            pass
        out.append(a)
    return out


def fix_text(port: str, bridge: str, addrs: list) -> str:
    moves = "; ".join(f"ip addr del {a} dev {port} && ip addr add {a} dev {bridge}" for a in addrs)
    return (f"move the address(es) to the bridge, from a console (not over {port}): {moves} "
            f"(and fix the network configuration that put them on {port})")


class HostIpOnPort(Invariant):
    NAME = "host_ip_on_port"
    DESCRIPTION = "no IPv4/IPv6 address on a port of a bridge with VMs"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "observe"
    OPTIONS = {}
    HOP = "uplink"  # netmedic diagnose shows its violations on this hop
    REMEDIES = {"address_on_port": None}
    NEEDS = frozenset(("addresses",))

    def check(self, snapshot, options) -> list:
        out = []
        if snapshot.addresses is None:
            return out
        bridges = snapshot.vm_bridges()
        for bridge in bridges:
            br = snapshot.bridge(bridge)
            for link in sorted(snapshot.links.values(), key=lambda lk: lk.index):
                if link.master != br.index:
                    continue
                addrs = port_addresses(snapshot, link)
                if addrs:
                    out.append(Violation(
                        self.NAME, "address_on_port", Subject(bridge=bridge, port=link.name),
                        f"{link.name} is a port of {bridge} but carries {', '.join(addrs)}: frames arriving on "
                        f"{link.name} go to the bridge, so that address is unreachable (host <-> VM and the host's "
                        f"own traffic over {link.name} are cut off); the address belongs on {bridge}",
                        {"port": link.name, "addresses": addrs, "fix": fix_text(link.name, bridge, addrs)}))
        return out


PLUGIN = HostIpOnPort()
