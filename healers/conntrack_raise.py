"""conntrack_raise: double nf_conntrack_max (opt-in: conntrack_capacity in enforce mode), never past
the policy's memory bound `max_memory_mb` (an entry costs about ENTRY_BYTES of kernel memory, a hash
bucket 8 bytes), and raise nf_conntrack_buckets to the new max where it is writable (the initial
network namespace only; a larger hash keeps lookups short). Never lowers either. Undo: the prior
values. In a child network namespace both are read-only (the table is the host's): refused there."""
from __future__ import annotations

from netmedic.model import Plan, Step
from netmedic.plugin import Healer

ENTRY_BYTES = 320  # sizeof(struct nf_conn) with its extensions, rounded up to its slab object
BUCKET_BYTES = 8  # one hlist_nulls_head
MAX_KEY = "net/netfilter/nf_conntrack_max"
BUCKETS_KEY = "net/netfilter/nf_conntrack_buckets"


def bound_entries(max_memory_mb: int) -> int:
    """The largest table (max entries, as many buckets) that fits in max_memory_mb."""
    return int(max_memory_mb) * 1024 * 1024 // (ENTRY_BYTES + BUCKET_BYTES)


class ConntrackRaise(Healer):
    NAME = "conntrack_raise"
    HANDLES = ("conntrack_capacity",)

    def plan(self, violation, snapshot, options):
        ct = snapshot.conntrack
        if not ct:
            return None, "conntrack is not loaded"
        if not ct.get("max_writable"):
            return None, ("nf_conntrack_max is read-only in this network namespace (the table's size is the "
                          "host's, set in the initial namespace)")
        old = ct["max"]
        threshold = float(options.get("threshold", 0.9))
        if ct.get("count", 0) < threshold * old:
            # The drops in the kernel log are past (or were before the last raise): no pressure now.
            return None, (f"the table has room now ({ct.get('count')} of {old} entries, below the threshold "
                          f"{threshold:g}): nothing to raise")
        bound = bound_entries(options.get("max_memory_mb", 512))
        new = min(old * 2, bound)
        if new <= old:
            return None, (f"nf_conntrack_max is {old}: raising it would pass the memory bound "
                          f"max_memory_mb={options.get('max_memory_mb', 512)} ({bound} entries)")
        steps = [Step("sysctl", {"key": MAX_KEY, "value": str(new)}, f"set net.netfilter.nf_conntrack_max = {new}",
                      undo=Step("sysctl", {"key": MAX_KEY, "value": str(old)},
                                f"set net.netfilter.nf_conntrack_max = {old}"))]
        buckets = ct.get("buckets")
        if ct.get("buckets_writable") and buckets and buckets < new:
            steps.append(Step("sysctl", {"key": BUCKETS_KEY, "value": str(new)},
                              f"set net.netfilter.nf_conntrack_buckets = {new}",
                              undo=Step("sysctl", {"key": BUCKETS_KEY, "value": str(buckets)},
                                        f"set net.netfilter.nf_conntrack_buckets = {buckets}")))
        mib = new * (ENTRY_BYTES + BUCKET_BYTES) / 2 ** 20
        return Plan(self.NAME, violation, tuple(steps),
                    f"raise the conntrack table from {old} to {new} entries (at most ~{mib:.0f} MiB when full; "
                    f"bound {options.get('max_memory_mb', 512)} MiB)",
                    before={"max": old, "buckets": buckets, "count": ct.get("count")}), ""

    def after(self, snapshot, violation) -> dict:
        ct = snapshot.conntrack or {}
        return {k: ct.get(k) for k in ("count", "max", "buckets")}

    def verify(self, snapshot, violation):
        """Fixed when the table grew: the drops already logged stay in the kernel log for a while, and a
        table still busy may stay above the threshold after one doubling (the next pass doubles again)."""
        ct = snapshot.conntrack or {}
        return bool(ct.get("max")) and ct["max"] > violation.evidence["max"]


PLUGIN = ConntrackRaise()
