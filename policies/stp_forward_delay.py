"""stp_forward_delay: a bridge with VMs does not keep new VM ports waiting. With STP on, each new port
spends 2 × forward_delay listening and learning before it forwards a frame — 30 s with
NetworkManager's defaults (`bridge.stp yes`, `forward-delay 15`): the guest's DHCP/PXE gives up (the
RHEL 6 Virtualization guide, section B.8, names it the most common cause). Reported (`stp_delay`,
broken while a VM port is waiting, a risk otherwise) when STP is on and the forward delay exceeds
`max_forward_delay`.

Opt-in healer `stp_tune` (mode enforce), only on a bridge whose one non-tap port is its single uplink
(no loop STP could be breaking): `remedy: stp-off` turns STP off (a new port then forwards at once) and
sets the ports still listening/learning to forwarding; `remedy: lower-delay` lowers the delay to the
kernel's minimum with STP on (2 s: ports then wait 4 s)."""
from __future__ import annotations

from netmedic.model import Subject, Violation
from netmedic.nl import data as nl
from netmedic.plugin import Invariant
from netmedic.policies.bridge_uplink import non_tap_ports
from netmedic.policies.config import Option

WAITING = (nl.BR_STATE_LISTENING, nl.BR_STATE_LEARNING)


def ports_of(snapshot, bridge: str) -> list:
    """Every port of the bridge, sorted by name: from the `stp_ports` fact (read even by a pass narrowed
    to one VM, which lists no other port) or else the observed links."""
    br = snapshot.bridge(bridge)
    if br is None:
        return []
    ports = (snapshot.stp_ports or {}).get(bridge)
    return sorted(ports, key=lambda lk: lk.name) if ports is not None else snapshot.ports(bridge)


def uplinks_of(snapshot, bridge: str) -> list:
    """The bridge's non-tap ports (bridge_uplink.non_tap_ports over ports_of)."""
    return non_tap_ports(snapshot, bridge, ports_of(snapshot, bridge))


def persistent_fix(bridge: str) -> str:
    return (f"make it last: NetworkManager `nmcli connection modify {bridge} bridge.stp no` (or "
            f"`bridge.forward-delay 2`); ifupdown `bridge_stp off` and `bridge_fd 0`; systemd-networkd "
            f"`STP=no` in the .netdev; a libvirt network `<bridge stp='off' delay='0'/>`; a change made at "
            f"runtime is lost when the bridge is re-created")


class StpForwardDelay(Invariant):
    NAME = "stp_forward_delay"
    DESCRIPTION = "a bridge with VMs and STP on does not hold new VM ports for long forward delays"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "observe"  # enforce (opt-in): turn STP off / lower the delay on single-uplink bridges
    OPTIONS = {
        "max_forward_delay": Option(2.0, "seconds of forward delay tolerated with STP on (a new port waits "
                                    "twice that)", type=float),
        "remedy": Option("stp-off", "stp-off: turn STP off (new ports forward at once); lower-delay: forward "
                         "delay 2 s, the kernel's minimum with STP on (new ports wait 4 s)",
                         choices=("stp-off", "lower-delay")),
    }
    HOP = "port"  # netmedic diagnose shows its violations on this hop
    REMEDIES = {"stp_delay": {"stp-off": "stp_tune", "lower-delay": "stp_tune"}}
    NEEDS = frozenset({"stp_ports"})

    def check(self, snapshot, options) -> list:
        limit = float(options.get("max_forward_delay", 2.0))
        out = []
        for bridge in snapshot.vm_bridges():
            br = snapshot.bridge(bridge)
            info = br.bridge
            if info is None or not info.stp_state or info.forward_delay <= round(limit * 100):
                continue
            taps = {n.tap for n in snapshot.nics() if n.bridge == bridge and n.tap}
            waiting = sorted((lk.name, nl.PORT_STATE_NAMES[lk.port.state]) for lk in ports_of(snapshot, bridge)
                             if lk.port is not None and lk.port.state in WAITING)
            vm_waiting = [p for p, _ in waiting if p in taps]
            fd = info.forward_delay / 100
            out.append(Violation(
                self.NAME, "stp_delay", Subject(bridge=bridge),
                f"bridge {bridge} runs STP with a forward delay of {fd:g} s: each VM port that joins waits "
                f"{2 * fd:g} s listening and learning before it forwards (guests' DHCP/PXE time out)"
                + (f"; waiting now: {', '.join(vm_waiting)}" if vm_waiting else ""),
                {"stp_state": info.stp_state, "forward_delay": fd, "port_wait": 2 * fd,
                 "waiting_ports": dict(waiting), "uplinks": [lk.name for lk in uplinks_of(snapshot, bridge)],
                 "fix": persistent_fix(bridge)},
                severity="broken" if vm_waiting else "risk"))
        return out


PLUGIN = StpForwardDelay()
