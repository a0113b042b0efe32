"""vlan_membership's netlink path on this kernel (no CONFIG_BRIDGE_VLAN_FILTERING): Netlink.port_vlans()
reports no VLANs and vlan_add() is refused with EOPNOTSUPP, as a HostError."""
from __future__ import annotations

import os
import sys


def test_vlan_netlink_path_on_this_kernel():
    """The real code path against this kernel (no CONFIG_BRIDGE_VLAN_FILTERING): the dump returns the
    bridge ports with no VLANs, and an add is refused (EOPNOTSUPP), as a HostError."""
    from netmedic.lab import Topology
    with Topology("nmtv") as topo:
        ns = topo.netns("h")
        topo.bridge(ns, "br0")
        topo.veth(ns, "vnet0", ns, "peer0")
        topo.enslave(ns, "vnet0", "br0")
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        code = (f"import sys; sys.path.insert(0, {root!r})\n"
                "from netmedic import nl\nfrom netmedic.errors import HostError\n"
                "n = nl.Netlink(); idx = n.link('vnet0').index\n"
                "v = n.port_vlans(); print(idx in v and v[idx] == ())\n"
                "try:\n    n.vlan_add(idx, 20, pvid=True, untagged=True); print('added')\n"
                "except HostError as e:\n    print('refused', e)\n")
        out = topo.run(ns, sys.executable, "-c", code).stdout.splitlines()
    assert out[0] == "True"
    assert out[1].startswith("refused") and "EOPNOTSUPP" in out[1]
