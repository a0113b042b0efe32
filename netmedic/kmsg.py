"""The kernel log (/dev/kmsg) as a source of facts: the lines of failure classes admins report, parsed
into facts.KernelEvent. Read two ways: `recent()` scans the kernel's ring buffer for the last minutes
(a snapshot fact, `kernel_events`, for `netmedic check` and every pass), and
netmedic.sources.kmsg follows new records as the daemon's event source.

/dev/kmsg gives one record per read(): `PRIO,SEQ,TS_USEC,FLAGS[,...];MESSAGE` and continuation lines
starting with a space (` SUBSYSTEM=net`, ` DEVICE=n2`), which are skipped. A reader that falls behind
the ring buffer gets EPIPE once and carries on from the oldest record still there.
"""
from __future__ import annotations

import errno
import os
import re
import stat
import time
from typing import Optional

from netmedic.facts import KernelEvent

KMSG = "/dev/kmsg"
# A file of kmsg records read instead of /dev/kmsg (a saved kernel log replayed; the tests' seam).
ENV_PATH = "NETMEDIC_KMSG"
MAX_READ = 8192  # a kmsg record is at most ~1 KiB (PRINTKRB_RECORD_MAX): one read() returns one record

# (kind, a literal every matching line holds, pattern over the message); group 'dev' is the interface
# when the line names one.
PATTERNS = (
    # e1000e (and igb/ixgbe word it alike): "e1000e 0000:00:1f.6 eno1: Detected Hardware Unit Hang:"
    ("nic_hang", " Hang", re.compile(r"(?:^|\s)(?P<dev>[^\s:]+): Detected (?:Hardware Unit|Tx Unit) Hang")),
    ("nic_reset", ": Reset adapter unexpectedly", re.compile(r"(?:^|\s)(?P<dev>[^\s:]+): Reset adapter unexpectedly")),
    # dev_watchdog: "NETDEV WATCHDOG: eno1 (e1000e): transmit queue 0 timed out 5120 ms"
    ("tx_timeout", "NETDEV WATCHDOG: ", re.compile(r"NETDEV WATCHDOG: (?:CPU: \d+: )?(?P<dev>[^\s:]+) \([^)]*\): "
                                                 r"transmit queue \d+ timed out")),
    # "nf_conntrack: nf_conntrack: table full, dropping packet" (older kernels: one prefix)
    ("conntrack_full", "table full, dropping packet", re.compile(r"nf_conntrack: table full, dropping packet")),
    # br_fdb_update: "br0: received packet on uplink0 with own address as source address (addr:..., vlan:0)"
    ("own_address", " with own address as source address",
     re.compile(r"^(?P<bridge>[^\s:]+): received packet on (?P<dev>\S+) with own address as source address")),
)


# One scan of the patterns' literals rejects nearly every line of a kernel log (the patterns are tried only
# on a hit): the ring buffer of a busy host holds thousands of lines, and a pass reads it all.
_ANY = re.compile("|".join(re.escape(literal) for _kind, literal, _pattern in PATTERNS))


def classify(message: str, ts: float = 0.0, seq: int = 0) -> Optional[KernelEvent]:
    """The KernelEvent of one kernel-log message, or None when netmedic does not know the line."""
    if _ANY.search(message) is None:
        return None
    for kind, _literal, pattern in PATTERNS:
        m = pattern.search(message)
        if m:
            return KernelEvent(kind, m.groupdict().get("dev"), message.strip()[:500], ts, seq)
    return None


def parse_record(text: str) -> Optional[KernelEvent]:
    """One /dev/kmsg record (header `PRIO,SEQ,TS_USEC,FLAGS;MESSAGE`) -> KernelEvent or None."""
    line = text.split("\n", 1)[0]
    head, sep, message = line.partition(";")
    if not sep or _ANY.search(message) is None:
        return None
    fields = head.split(",")
    try:
        seq, ts = int(fields[1]), int(fields[2]) / 1e6
    except (IndexError, ValueError):
        return None
    return classify(message, ts, seq)


def parse_lines(text: str) -> list:
    """Every known event in a run of records (continuation lines, starting with a space, skipped)."""
    out = []
    for line in text.splitlines():
        if not line or line[0].isspace():
            continue
        ev = parse_record(line)
        if ev is not None:
            out.append(ev)
    return out


def read_available(fd: int) -> list:
    """Read every record available on a non-blocking kmsg descriptor (or a file: to its end)."""
    events: list = []
    pending = b""
    while True:
        try:
            chunk = os.read(fd, MAX_READ)
        except BlockingIOError:
            break
        except OSError as exc:
            if exc.errno == errno.EPIPE:  # records were overwritten before we read them: go on
                continue
            if exc.errno == errno.EINVAL:  # a record larger than our buffer (cannot happen with 8 KiB)
                break
            raise
        if not chunk:
            break
        pending += chunk
        if b"\n" in pending:
            text, _, pending = pending.rpartition(b"\n")
            events.extend(parse_lines(text.decode("utf-8", "replace")))
    if pending:
        events.extend(parse_lines(pending.decode("utf-8", "replace")))
    return events


def default_path() -> str:
    return os.environ.get(ENV_PATH) or KMSG


def uptime() -> float:
    """Seconds since boot on the clock printk stamps records with (CLOCK_MONOTONIC, near enough)."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class _Reader:
    """One open kmsg descriptor and the known events read so far (a long-running process reads only the
    records logged since its last look, not the whole ring buffer on every pass)."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.is_file = stat.S_ISREG(os.fstat(self.fd).st_mode)
        self.events: list = []

    def read(self) -> list:
        if self.is_file and os.fstat(self.fd).st_size < os.lseek(self.fd, 0, os.SEEK_CUR):
            os.lseek(self.fd, 0, os.SEEK_SET)  # the file was truncated/rewritten: read it afresh
            self.events = []
        self.events.extend(read_available(self.fd))
        return self.events

    def close(self) -> None:
        os.close(self.fd)


_readers: dict = {}
MAX_KEPT = 10000  # known events kept between looks (a storm of `table full` lines stays bounded)


def recent(window: float = 600.0, path: Optional[str] = None, now: Optional[float] = None) -> list:
    """The known events of the last `window` seconds, oldest first ([] when the log is unreadable)."""
    path = path or default_path()
    now = uptime() if now is None else now
    reader = _readers.get(path)
    try:
        if reader is None:
            reader = _readers[path] = _Reader(path)
        events = reader.read()
    except OSError:
        if reader is not None:
            _readers.pop(path, None)
            reader.close()
        return []
    keep = [e for e in events if now - e.ts <= max(window, 3600.0)][-MAX_KEPT:]
    reader.events = keep
    return [e for e in keep if now - e.ts <= window]
