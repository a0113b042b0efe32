"""unique_mac: no two VM interfaces on the host share a MAC (cloned guests), and no VM MAC equals a
host interface's MAC."""
from __future__ import annotations

from netmedic.model import Subject, Violation
from netmedic.policies.config import Option

NAME = "unique_mac"
DESCRIPTION = "every VM NIC's MAC is unique on the host"
DEFAULT_ENABLED = True
DEFAULT_MODE = "observe"
OPTIONS = {
    "on_start": Option("allow", "libvirt hook at VM start: allow (and audit) or refuse-start a VM whose MAC "
                       "is already used", choices=("allow", "refuse-start")),
    "remedy": Option("quarantine", "enforce mode: quarantine = set the newer duplicate's bridge port to "
                     "listening (it forwards and learns nothing; link untouched) until the duplicate is gone",
                     choices=("quarantine",)),
}
REMEDIES = {"duplicate_vm_mac": "quarantine", "host_mac_clash": None}


def _age(snapshot, nic):
    """Order by tap ifindex (the later-created tap is the newer duplicate); missing taps last."""
    tap = snapshot.link(nic.tap)
    return (tap.index if tap else 1 << 30, nic.domain, nic.tap or "")


def check(snapshot, options) -> list:
    out = []
    by_mac: dict = {}
    for nic in snapshot.inventory.nics:
        by_mac.setdefault(nic.mac, []).append(nic)
    for mac, nics in sorted(by_mac.items()):
        if len(nics) < 2:
            continue
        nics = sorted(nics, key=lambda n: _age(snapshot, n))
        first = nics[0]
        for nic in nics[1:]:
            if not snapshot.covers(nic.bridge, nic.domain):
                continue
            out.append(Violation(
                NAME, "duplicate_vm_mac", Subject(bridge=nic.bridge, port=nic.tap, domain=nic.domain, mac=mac),
                f"VM {nic.domain} ({nic.tap}) uses MAC {mac}, already used by VM {first.domain} ({first.tap}): "
                f"the bridges deliver its frames to whichever sent last",
                {"mac": mac, "first": {"domain": first.domain, "tap": first.tap, "bridge": first.bridge},
                 "duplicate": {"domain": nic.domain, "tap": nic.tap, "bridge": nic.bridge}}))
    if not snapshot.links_complete:  # a scoped observation did not see every host interface
        return out
    vm_taps = {n.tap for n in snapshot.inventory.nics}
    host: dict = {}  # VM MAC -> host interfaces with it (a bond and its slaves share one: one violation)
    for link in sorted(snapshot.links.values(), key=lambda lk: lk.index):
        if link.name not in vm_taps and link.mac in by_mac:
            host.setdefault(link.mac, []).append(link.name)
    for mac, names in sorted(host.items()):
        for nic in by_mac[mac]:
            if snapshot.covers(nic.bridge, nic.domain):
                out.append(Violation(
                    NAME, "host_mac_clash", Subject(bridge=nic.bridge, port=nic.tap, domain=nic.domain, mac=mac),
                    f"VM {nic.domain}'s MAC {mac} is also the MAC of host interface{'s' if len(names) > 1 else ''} "
                    f"{', '.join(names)}",
                    {"mac": mac, "host_interface": names[0], "host_interfaces": names}))
    return out
