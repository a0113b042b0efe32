"""mtu_consistency: a VM's tap has its bridge's MTU. A tap with a smaller MTU than its bridge drops
every larger frame the bridge forwards to the VM (and the VM's own larger frames never reach the
bridge): small packets — ARP, ping, DHCP — work, large transfers stall. A tap with a larger MTU lets
the VM send frames the bridge and the uplink cannot carry."""
from __future__ import annotations

from netmedic.model import Subject, Violation
from netmedic.plugin import Invariant


class MtuConsistency(Invariant):
    NAME = "mtu_consistency"
    DESCRIPTION = "a VM tap's MTU equals its bridge's MTU"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "enforce"  # setting a tap's MTU to its bridge's is safe
    OPTIONS = {}
    HOP = "tap"  # netmedic diagnose shows its violations on this hop
    REMEDIES = {"mtu_mismatch": "mtu_set"}

    def check(self, snapshot, options) -> list:
        out = []
        for nic in snapshot.nics():
            br, tap = snapshot.bridge(nic.bridge), snapshot.link(nic.tap)
            if br is None or tap is None or tap.master != br.index:
                continue  # missing or detached: port_forwarding's business
            if tap.mtu == br.mtu:
                continue
            smaller = tap.mtu < br.mtu
            effect = (f"frames larger than {tap.mtu} bytes to and from the VM are dropped" if smaller else
                      f"the VM can send frames of up to {tap.mtu} bytes that {nic.bridge} cannot carry")
            out.append(Violation(
                self.NAME, "mtu_mismatch", Subject(bridge=nic.bridge, port=nic.tap, domain=nic.domain, mac=nic.mac),
                f"tap {nic.tap} of VM {nic.domain} has MTU {tap.mtu}, its bridge {nic.bridge} {br.mtu}: {effect}",
                {"tap_mtu": tap.mtu, "bridge_mtu": br.mtu}, severity="broken" if smaller else "risk"))
        return out


PLUGIN = MtuConsistency()
