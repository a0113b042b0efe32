"""nat_network_health: an active libvirt NAT network has the MASQUERADE rule for its subnet (iptables
nat table, nft or legacy, or libvirt's own nftables table) and its dnsmasq (DHCP/DNS) running. Both
vanish when someone flushes the firewall (`iptables -t nat -F`, a firewall reload) or kills dnsmasq;
libvirt re-creates them when its network daemon restarts, without touching the running VMs.
Opt-in remedy (`remedy: reload-libvirt`, mode enforce) for a missing masquerade: the healer
`libvirt_reload` asks libvirt to re-apply its rules (SIGHUP to virtnetworkd or libvirtd, libvirt's
documented fix after a firewall reload) instead of writing rules itself."""
from __future__ import annotations

import ipaddress

from netmedic import facts
from netmedic.model import Subject, Violation
from netmedic.plugin import Invariant
from netmedic.policies.config import Option

RESTART = "restart libvirt's network daemon (`systemctl restart virtnetworkd`, or libvirtd on a monolithic " \
          "install): it re-creates the network's firewall rules and dnsmasq; running VMs keep their taps"


def subnets(net) -> list:
    return [str(ipaddress.ip_interface(ip).network) for ip in net.ips
            if ipaddress.ip_interface(ip).version == 4]


def masquerade_fix(subnet: str, forward_dev=None) -> str:
    out = f" -o {forward_dev}" if forward_dev else ""
    return (f"{RESTART}; or by hand: iptables -t nat -A POSTROUTING -s {subnet} ! -d {subnet}{out} "
            f"-j MASQUERADE")


class NatNetworkHealth(Invariant):
    NAME = "nat_network_health"
    DESCRIPTION = "a libvirt NAT network has its MASQUERADE rule and a running dnsmasq"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "observe"  # a finding with the exact fix; libvirt owns these rules and processes
    OPTIONS = {
        "remedy": Option("none", "none: report only; reload-libvirt: SIGHUP libvirt's network daemon (it "
                         "re-applies every active network's firewall rules)", choices=("none", "reload-libvirt")),
    }
    HOP = "l3"  # netmedic diagnose shows its violations on this hop
    REMEDIES = {"masquerade_missing": {"none": None, "reload-libvirt": "libvirt_reload"}, "dnsmasq_down": None}
    NEEDS = frozenset(("nat_rules", "dnsmasq", "libvirt_firewall"))

    def check(self, snapshot, options) -> list:
        out = []
        for net in sorted(snapshot.inventory.networks.values(), key=lambda n: n.name):
            if net.forward_mode != "nat" or not net.bridge or snapshot.bridge(net.bridge) is None:
                continue
            if not snapshot.observed(net.bridge):
                continue
            subject = Subject(bridge=net.bridge, network=net.name)
            if snapshot.nat_rules is not None:
                for subnet in subnets(net):
                    if not facts.masquerades(snapshot.nat_rules, subnet):
                        out.append(Violation(
                            self.NAME, "masquerade_missing", subject,
                            f"libvirt NAT network {net.name} ({subnet} on {net.bridge}) has no MASQUERADE rule for "
                            f"{subnet}: its VMs' traffic leaves the host with private source addresses and gets "
                            f"no replies",
                            {"subnet": subnet, "masquerade_rules": [r.rule for r in snapshot.nat_rules],
                             "fix": masquerade_fix(subnet, net.forward_dev)}))
            dns = (snapshot.dnsmasq or {}).get(net.name)
            if dns is not None and not (dns.alive and dns.same_netns is not False):  # None: unknown, not a fault
                why = ("no pid file" if dns.pid is None else
                       f"pid {dns.pid} is not a running dnsmasq" if not dns.alive else
                       f"dnsmasq pid {dns.pid} runs in another network namespace")
                out.append(Violation(
                    self.NAME, "dnsmasq_down", subject,
                    f"libvirt NAT network {net.name}: its dnsmasq is not running ({why}): VMs get no DHCP lease "
                    f"and no DNS",
                    {"pid_file": dns.pid_file, "pid": dns.pid, "alive": dns.alive, "same_netns": dns.same_netns,
                     "fix": RESTART}))
        return out


PLUGIN = NatNetworkHealth()
