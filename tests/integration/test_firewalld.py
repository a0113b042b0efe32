"""A real firewalld (Debian's, nftables backend) in the test's host namespace, with its own system D-Bus
in a private mount view (tests/nmlab.py: the lab's /run, so no other bus is touched), and the
VM bridge in a zone without intra-zone forwarding: under br_netfilter its `table inet firewalld` chain
`filter_FORWARD` rejects the bridged VM traffic. The daemon (enforce) inserts its accept in THAT chain,
and after `firewall-cmd --reload` (which re-creates the table without it) inserts it again at once.
Judged by connectivity across the lab bridge."""
from __future__ import annotations

import os
import time

import nmlab
import pytest

FIREWALLD_CONF = """\
DefaultZone=public
FirewallBackend=nftables
FlushAllOnReload=yes
IndividualCalls=no
LogDenied=off
CleanupOnExit=yes
IPv6_rpfilter=no
"""

# The bridge's zone has no <forward/>: traffic in and out of br0 is not forwarded.
ZONE = """<?xml version="1.0" encoding="utf-8"?>
<zone>
  <short>vms</short>
  <interface name="br0"/>
</zone>
"""

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/sbin/firewalld") or bool(nmlab.available()),
                                reason="firewalld / dbus-daemon not installed: run scripts/bootstrap.sh")


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Firewalld:
    """firewalld with its own bus and its own /etc/firewalld in the lab's private view."""

    def __init__(self, topo, ns, workdir):
        self.lab = nmlab.NMLab(topo, ns, workdir)
        self.etc = os.path.join(self.lab.dir, "etc-firewalld")
        os.makedirs(os.path.join(self.etc, "zones"), exist_ok=True)
        with open(os.path.join(self.etc, "firewalld.conf"), "w") as fh:
            fh.write(FIREWALLD_CONF)
        with open(os.path.join(self.etc, "zones", "vms.xml"), "w") as fh:
            fh.write(ZONE)
        self.proc = None

    def _argv(self, *argv):
        # /etc/firewalld is the lab's too (an inner private mount view of the lab's view).
        return ("/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
                'mount --bind "$1" /etc/firewalld && shift && exec "$@"', "sh", self.etc, *argv)

    def start(self):
        self.lab.start_bus()
        self.proc = self.lab.spawn(*self._argv("/usr/sbin/firewalld", "--nofork", "--nopid"), log="firewalld.log",
                                   env=nmlab._clean_env())
        ok = _wait(lambda: self.cmd("--state", check=False).returncode == 0, 30)
        assert ok, "firewalld did not come up:\n" + self.lab.log("firewalld.log")[-3000:]

    def cmd(self, *args, check=True):
        return self.lab.run(*self._argv("/usr/bin/firewall-cmd", *args), check=check, timeout=60,
                            env=nmlab._clean_env())

    def stop(self):
        nmlab._kill(self.proc)
        self.lab.kill_bus()


def _own(topo, ns):
    out = topo.run(ns, "nft", "-a", "list", "chain", "inet", "firewalld", "filter_FORWARD", check=False).stdout
    return out.count("netmedic: accept bridged traffic of br0")


def test_firewalld_blackholed_bridge_is_healed_and_healed_again_after_reload(quiet, tmp_path):
    lab, topo = quiet, quiet.topo
    assert lab.vm_reaches_gateway(count=2)
    fw = Firewalld(topo, lab.host, tmp_path / "fw")
    fw.start()
    try:
        assert fw.cmd("--get-zone-of-interface=br0").stdout.strip() == "vms"
        assert not lab.vm_reaches_gateway(count=2, timeout=0.3, all_replies=False), \
            "firewalld was expected to blackhole br0's bridged traffic"

        # What netmedic sees (one-shot, shipped default): the chain that drops, named.
        report = lab.nm.heal_json()
        nf = [o for o in report["outcomes"] if o["violation"]["kind"] == "bridged_traffic_dropped_nft"]
        assert nf and nf[0]["result"] == "observed"
        chains = nf[0]["violation"]["evidence"]["chains"]
        assert [(c["family"], c["table"], c["chain"]) for c in chains] == [("inet", "firewalld", "filter_FORWARD")]
        assert "reject" in chains[0]["dropped_by"]["rule"]

        lab.nm.set_policy({"invariants": {"bridge_netfilter": {"mode": "enforce"}}})
        daemon = lab.nm.daemon("--resync", "3600", "--no-dbus", "--socket", "none", "--libvirt-uri", "none")
        try:
            assert _wait(lambda: _own(topo, lab.host) == 1), "netmedic's accept was not inserted"
            assert lab.vm_reaches_gateway(count=3)

            # firewalld reload: the table is re-created without netmedic's rule; the nf_tables event
            # brings netmedic back at once.
            for _ in range(2):
                t0 = time.monotonic()
                fw.cmd("--reload")
                assert _wait(lambda: _own(topo, lab.host) == 1), "not re-inserted after firewall-cmd --reload"
                assert time.monotonic() - t0 < 10
                assert lab.vm_reaches_gateway(count=2)
            healed = [r for r in lab.nm.audit("healed") if r.get("kind") == "bridged_traffic_dropped_nft"]
            assert len(healed) >= 3
            assert healed[0]["steps"] == ['nft insert rule inet firewalld filter_FORWARD iifname "br0" '
                                          'oifname "br0" accept']
            # The admin's configuration is untouched: the zone still has no forward.
            assert fw.cmd("--zone=vms", "--query-forward", check=False).stdout.strip() == "no"

            # The admin allows forwarding in the zone: netmedic's rule is not needed any more and goes.
            fw.cmd("--zone=vms", "--add-forward")
            assert _wait(lambda: _own(topo, lab.host) == 0 and any(
                "no longer drops" in r.get("reason", "") for r in lab.nm.audit("released")), 10)
            assert lab.vm_reaches_gateway(count=2)
        finally:
            daemon.terminate()
            daemon.wait(10)
        assert daemon.returncode == 0
    finally:
        fw.stop()
