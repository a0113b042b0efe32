"""kernel_log: what the kernel log says about the host's bridged networking in the last minutes (the
`kernel_events` fact: /dev/kmsg, netmedic.kmsg). Observe only — each is reported with its remedy named,
never applied:
- `nic_hang` (broken): a NIC driver hang — e1000e's "Detected Hardware Unit Hang" followed by "Reset
  adapter unexpectedly", or the stack's "NETDEV WATCHDOG ... transmit queue N timed out". While the
  adapter resets, the bridge port is disabled and every VM behind it is cut off (several Proxmox
  write-ups). The community workaround is to turn segmentation offloads off on that NIC.
- `own_address` (risk, only with `own_address: report`): a bridge received a frame carrying its own MAC
  as source on a port — a loop or a switch reflecting frames back into the uplink (the founding case's
  signature). Off by default: the kernel log is the host's, and its lines name interfaces by the names
  they have in their own network namespace, where containers (and test labs) reuse br0/eth0; a NIC
  hang names a physical NIC, which lives in one namespace.
`nf_conntrack: table full` lines are conntrack_capacity's."""
from __future__ import annotations

from netmedic.model import Subject, Violation
from netmedic.plugin import Invariant
from netmedic.policies.config import Option

HANG_KINDS = ("nic_hang", "nic_reset", "tx_timeout")


def offload_fix(dev: str) -> str:
    return (f"community workaround for e1000e/igb hangs: `ethtool -K {dev} tso off gso off` (persist it in the "
            f"NIC's configuration, e.g. a post-up line or a udev rule); update the NIC firmware/driver; check the "
            f"cable and the switch port")


class KernelLog(Invariant):
    NAME = "kernel_log"
    DESCRIPTION = "no NIC hang or bridge loop signal in the kernel log of the last minutes"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "observe"  # findings only
    NEEDS = frozenset({"kernel_events"})
    OPTIONS = {
        "own_address": Option("ignore", "report: also report a bridge receiving its own address (a loop or a "
                              "reflecting switch) from the kernel log", choices=("ignore", "report")),
    }
    HOP = "uplink"  # netmedic diagnose shows its violations on this hop
    REMEDIES = {"nic_hang": None, "own_address": None}
    HINTS = {
        "own_address": "a loop or a switch reflecting the bridge's frames into its uplink (a round-robin bond "
                       "without a switch-side LAG?): check the uplink's bond mode and the switch; netmedic's "
                       "fdb_ownership pins keep the VMs reachable meanwhile",
    }

    def check(self, snapshot, options) -> list:
        events = snapshot.kernel_events
        if not events:
            return []
        hangs: dict = {}
        own: dict = {}
        for ev in events:
            if ev.kind in HANG_KINDS and ev.device:
                hangs.setdefault(ev.device, []).append(ev)
            elif ev.kind == "own_address" and ev.device and options.get("own_address") == "report" and \
                    self._bridge_of(snapshot, ev.device) == \
                    ev.message.split(":", 1)[0]:  # that port of that bridge here (the log is the host's)
                own.setdefault(ev.device, []).append(ev)
        out = []
        for dev, evs in sorted(hangs.items()):
            bridge = self._bridge_of(snapshot, dev)
            if bridge is not None and not snapshot.observed(bridge):
                continue
            kinds = sorted({e.kind for e in evs})
            out.append(Violation(
                self.NAME, "nic_hang", Subject(bridge=bridge, port=dev),
                f"NIC {dev}{f' (uplink of {bridge})' if bridge else ''} hung in the last minutes: "
                f"{len(evs)} kernel-log line(s) ({', '.join(kinds)}), the last: {evs[-1].message!r}; while it "
                f"resets, the VMs behind it are cut off",
                {"device": dev, "kinds": kinds, "kernel_log": [e.message for e in evs[-5:]],
                 "last_ts": evs[-1].ts, "fix": offload_fix(dev)}))
        for dev, evs in sorted(own.items()):
            bridge = self._bridge_of(snapshot, dev)
            if bridge is not None and not snapshot.observed(bridge):
                continue
            out.append(Violation(
                self.NAME, "own_address", Subject(bridge=bridge, port=dev),
                f"{dev}{f' (port of {bridge})' if bridge else ''} brought back frames carrying its bridge's own "
                f"address ({len(evs)} kernel-log line(s)): a loop or a reflecting switch",
                {"device": dev, "kernel_log": [e.message for e in evs[-5:]], "last_ts": evs[-1].ts},
                severity="risk"))
        return out

    @staticmethod
    def _bridge_of(snapshot, dev):
        link = snapshot.link(dev)
        if link is None or link.master is None:
            return None
        master = snapshot.by_index.get(link.master)
        return master.name if master is not None and master.kind == "bridge" else None


PLUGIN = KernelLog()
