"""The daemon under an fdb event storm that overflows its netlink socket (ENOBUFS): it reopens the
socket, resyncs with a full observation, and still heals a fault made during the storm."""
from __future__ import annotations

import os
import time

from conftest import fdb_entry, is_sticky_pin


def _pinned(lab):
    return is_sticky_pin(fdb_entry(lab.topo, lab.host, lab.bridge, lab.vm_mac), lab.tap)


def test_overflow_ends_in_resync_and_heal(quiet, tmp_path):
    lab, topo = quiet, quiet.topo
    daemon = lab.nm.daemon("--netlink-rcvbuf", "4096", "--resync", "3600")
    t0 = time.monotonic()
    while not _pinned(lab):
        assert time.monotonic() - t0 < 10, "daemon never pinned"
        time.sleep(0.05)
    # 20,000 fdb entries in one burst (a busy hypervisor's worth), then a fault inside the storm.
    batch = tmp_path / "storm.batch"
    batch.write_text("".join(f"fdb add 02:00:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x} "
                             f"dev {lab.uplink} master\n" for i in range(20000)))
    topo.run(lab.host, "bridge", "-batch", str(batch), timeout=120)
    topo.release(lab.host, lab.tap)
    t0 = time.monotonic()
    while not (topo.link(lab.host, lab.tap).get("master") == lab.bridge and _pinned(lab)):
        assert time.monotonic() - t0 < 15, "the fault made during the storm was not healed"
        time.sleep(0.05)
    overflow = lab.nm.audit("netlink_overflow")
    assert overflow, "the storm did not overflow a 4 KiB socket buffer: the test proves nothing"
    resyncs = [r for r in lab.nm.audit("reconciled") if "netlink overflow" in r.get("trigger", "")]
    assert resyncs and resyncs[0]["scope"] == "all"
    assert daemon.poll() is None, "the daemon died in the storm"
    daemon.terminate()
    assert daemon.wait(10) == 0
    assert os.path.exists(lab.nm.audit_log)
