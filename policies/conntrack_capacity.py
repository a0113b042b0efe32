"""conntrack_capacity: the connection-tracking table has room. On a busy host with br_netfilter every
bridged VM flow takes an entry; when the table is full the kernel logs `nf_conntrack: table full,
dropping packet` and drops the first packet of every new connection of every VM (crowbar-openstack#849
/ SUSE bug 1025691; bloomberg/chef-bcpc#994; projectcalico/felix#617). Reported when
`nf_conntrack_count` reaches `threshold` of `nf_conntrack_max` (`table_near_full`, a risk), or when
the kernel log shows drops within the last minutes (`table_full`, broken: the `kernel_events` fact).
Healer `conntrack_raise` (opt-in, mode enforce) doubles `nf_conntrack_max` (and raises the hash
buckets with it where they are writable) within the memory bound `max_memory_mb`."""
from __future__ import annotations

from netmedic.model import Subject, Violation
from netmedic.plugin import Invariant
from netmedic.policies.config import Option

FIX = ("raise net.netfilter.nf_conntrack_max (and nf_conntrack_buckets) in the host's initial network "
       "namespace, e.g. `sysctl -w net.netfilter.nf_conntrack_max=N` plus a file in /etc/sysctl.d; or keep bridged "
       "traffic out of conntrack (`net.bridge.bridge-nf-call-iptables=0` where no rule needs it, or a `notrack` "
       "rule for the VMs' traffic)")


class ConntrackCapacity(Invariant):
    NAME = "conntrack_capacity"
    DESCRIPTION = "the conntrack table is not (nearly) full"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "observe"  # enforce (opt-in): raise the table's size within max_memory_mb
    NEEDS = frozenset({"conntrack", "kernel_events"})
    OPTIONS = {
        "threshold": Option(0.9, "report when nf_conntrack_count reaches this fraction of nf_conntrack_max",
                            type=float),
        "max_memory_mb": Option(512, "the healer never grows the table (entries and hash buckets) past this "
                                "many MiB", type=int),
        "remedy": Option("raise-max", "raise-max: double nf_conntrack_max within max_memory_mb",
                         choices=("raise-max",)),
    }
    HOP = "l3"  # netmedic diagnose shows its violations on this hop
    REMEDIES = {"table_near_full": {"raise-max": "conntrack_raise"},
                "table_full": {"raise-max": "conntrack_raise"}}
    HINTS = {"table_near_full": FIX, "table_full": FIX}

    def check(self, snapshot, options) -> list:
        ct = snapshot.conntrack
        if not ct or not ct.get("max"):
            return []
        drops = [e for e in (snapshot.kernel_events or []) if e.kind == "conntrack_full"]
        count, limit = ct["count"], ct["max"]
        ratio = count / limit
        evidence = {"count": count, "max": limit, "buckets": ct.get("buckets"), "use": round(ratio, 4),
                    "max_writable": ct.get("max_writable"), "fix": FIX}
        if drops:
            return [Violation(
                self.NAME, "table_full", Subject(),
                f"the conntrack table was full: the kernel dropped packets ({len(drops)} `table full` lines in "
                f"the kernel log, the last: {drops[-1].message!r}); now {count} of {limit} entries",
                {**evidence, "kernel_log": [e.message for e in drops[-5:]]})]
        if ratio >= float(options.get("threshold", 0.9)):
            return [Violation(
                self.NAME, "table_near_full", Subject(),
                f"the conntrack table holds {count} of {limit} entries ({ratio:.0%}): when it is full the kernel "
                f"drops the first packet of every new connection of every VM", evidence, severity="risk")]
        return []


PLUGIN = ConntrackCapacity()
