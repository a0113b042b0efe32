"""port_forwarding: each VM tap is a port of the bridge its domain XML names, link up (unless the
domain asks for link down), and in the forwarding STP state; learning/flood as the policy says."""
from __future__ import annotations

from netmedic.model import Subject, Violation
from netmedic.nl import data as nl
from netmedic.plugin import Invariant
from netmedic.policies.config import Option


class PortForwarding(Invariant):
    NAME = "port_forwarding"
    DESCRIPTION = "a VM tap is a forwarding, up port of the bridge its domain XML names"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "enforce"
    OPTIONS = {
        "learning": Option("any", "required learning flag on VM ports (any = not checked)", choices=("any", "on", "off")),
        "flood": Option("any", "required unicast-flood flag on VM ports (any = not checked)", choices=("any", "on", "off")),
    }
    HOP = "port"  # netmedic diagnose shows its violations on this hop
    HOPS = {"tap_missing": "tap", "link_down": "tap", "no_carrier": "tap"}
    REMEDIES = {"detached": "reattach", "link_down": "reattach", "not_forwarding": "port_state",
                "port_flags": "port_state", "wrong_bridge": None, "bridge_missing": None,
                "tap_missing": None, "stp_blocking": None, "no_carrier": None}
    HINTS = {
        "wrong_bridge": "move the tap with `ip link set TAP master BRIDGE` if the domain XML is right",
        "bridge_missing": "re-create the bridge; netmedic re-attaches the VM taps once it exists",
        "tap_missing": "the domain's run-state XML names a tap that does not exist: check the VM",
        "stp_blocking": "STP blocks the port (a loop?): check the topology or the bridge's STP settings",
        "no_carrier": "the tap has no carrier, so the bridge keeps its port disabled: is the VM's qemu "
                      "process attached to it?",
    }

    def check(self, snapshot, options) -> list:
        out = []
        for nic in snapshot.nics():
            if not nic.tap:
                continue
            subject = Subject(bridge=nic.bridge, port=nic.tap, domain=nic.domain, mac=nic.mac)
            br, tap = snapshot.bridge(nic.bridge), snapshot.link(nic.tap)
            if tap is None:
                out.append(Violation(self.NAME, "tap_missing", subject,
                                     f"VM {nic.domain} is running but its tap {nic.tap} does not exist",
                                     {"tap": nic.tap}, severity="risk"))
                continue
            if br is None:
                out.append(Violation(self.NAME, "bridge_missing", subject,
                                     f"bridge {nic.bridge} of VM {nic.domain} does not exist: the VM is cut off "
                                     f"until it is re-created", {"bridge": nic.bridge}))
                continue
            if tap.master is None:
                out.append(Violation(self.NAME, "detached", subject,
                                     f"tap {nic.tap} of VM {nic.domain} is not a port of any bridge (bridge "
                                     f"{nic.bridge} re-created?): the VM is cut off",
                                     {"tap": nic.tap, "master": None, "expected_master": nic.bridge}))
                continue
            if tap.master != br.index:
                out.append(Violation(self.NAME, "wrong_bridge", subject,
                                     f"tap {nic.tap} of VM {nic.domain} is a port of "
                                     f"{snapshot.name_of(tap.master)}, but its domain XML names {nic.bridge}",
                                     {"master": snapshot.name_of(tap.master), "expected_master": nic.bridge}))
                continue
            if not tap.up and nic.link_up:
                out.append(Violation(self.NAME, "link_down", subject, f"tap {nic.tap} of VM {nic.domain} is down",
                                     {"tap": nic.tap, "up": False, "domain_link_state": "up"}))
            port = tap.port
            if port is None:
                continue
            if port.state != nl.BR_STATE_FORWARDING and tap.up:
                name = nl.PORT_STATE_NAMES.get(port.state, str(port.state))
                evidence = {"port_state": name, "bridge_stp": br.bridge.stp_state if br.bridge else None}
                if not tap.carrier:
                    out.append(Violation(self.NAME, "no_carrier", subject,
                                         f"tap {nic.tap} of VM {nic.domain} has no carrier: {nic.bridge} keeps "
                                         f"its port {name}", {**evidence, "carrier": False}))
                elif br.bridge is not None and br.bridge.stp_state:
                    if port.state in (nl.BR_STATE_BLOCKING, nl.BR_STATE_DISABLED):
                        out.append(Violation(self.NAME, "stp_blocking", subject,
                                             f"STP keeps port {nic.tap} of {nic.bridge} {name}: the VM is cut off "
                                             f"(STP's decision; netmedic does not override it)", evidence, "risk"))
                else:
                    out.append(Violation(self.NAME, "not_forwarding", subject,
                                         f"port {nic.tap} of {nic.bridge} is stuck {name} with STP off: it "
                                         f"forwards no frames", evidence))
            flags = {}
            for opt, have in (("learning", port.learning), ("flood", port.flood)):
                want = options.get(opt, "any")
                if want != "any" and have != (want == "on"):
                    flags[opt] = want == "on"
            if flags:
                out.append(Violation(self.NAME, "port_flags", subject,
                                     f"port {nic.tap} of {nic.bridge}: " + ", ".join(
                                         f"{k} is {'off' if v else 'on'}, policy wants {'on' if v else 'off'}"
                                         for k, v in flags.items()),
                                     {"want": flags, "learning": port.learning, "flood": port.flood}, "risk"))
        return out


PLUGIN = PortForwarding()
