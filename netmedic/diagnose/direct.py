"""The path of a NIC that is not a bridge port: macvtap (`type='direct'`, or a network on a macvtap pool)
and hostdev/SR-IOV. Hops: 1 domain and NIC, 2 the macvtap device and its parent (or the VF), 3 host <->
guest (macvtap's isolation from its host, by design), 4 the VM's IP address. The verdicts are the
invariants' (declared on the hops "nic", "direct", "isolation"); this module adds the evidence."""
from __future__ import annotations

import os

from netmedic.diagnose.hops import Hop

DIRECT_HOPS = ((1, "nic", "domain and NIC"), (2, "direct", "macvtap and parent"),
               (3, "isolation", "host <-> guest"), (4, "ip", "VM IP address"))


def _pci_netdevs(pci: str) -> dict:
    """sysfs facts of a PCI function: its PF (for a VF) and their network devices."""
    base = f"/sys/bus/pci/devices/{pci}"
    out = {"exists": os.path.isdir(base), "pf": None, "pf_netdevs": [], "driver": None}
    if not out["exists"]:
        return out
    try:
        out["driver"] = os.path.basename(os.readlink(f"{base}/driver"))
    except OSError:
        pass
    try:
        pf = os.path.basename(os.readlink(f"{base}/physfn"))
        out["pf"] = pf
        out["pf_netdevs"] = sorted(os.listdir(f"/sys/bus/pci/devices/{pf}/net"))
    except OSError:
        pass
    return out


def walk(c, others: list) -> list:
    n, snap = c.nic, c.snap
    hops = [Hop(num, name, title) for num, name, title in DIRECT_HOPS]
    nic_hop, dev_hop, iso_hop = hops[0], hops[1], hops[2]
    nic_hop.evidence = {"domain": n.domain, "uuid": n.uuid, "mac": n.mac, "model": n.model, "type": n.type,
                        "network": n.network, "dev": n.dev, "parent": n.parent, "mode": n.mode, "pci": n.pci,
                        "xml": n.source_file, "other_nics": [f"{o.mac}" for o in others]}
    if n.type == "hostdev" or n.pci:
        nic_hop.set("ok", f"{n.domain} is running; NIC {n.mac} is a PCI device passed through ({n.pci}, hostdev/SR-IOV)")
        facts = _pci_netdevs(n.pci) if n.pci else {"exists": False}
        dev_hop.evidence = {"pci": n.pci, **facts}
        if not facts.get("exists"):
            dev_hop.set("unknown", f"PCI function {n.pci} is not on this host's PCI bus")
        else:
            pf = facts.get("pf_netdevs") or []
            pfs = [snap.link(p) for p in pf]
            dev_hop.evidence["pf_links"] = {p.name: {"up": p.up, "carrier": p.carrier} for p in pfs if p}
            dev_hop.set("ok", f"{n.pci} (driver {facts.get('driver')}) is a VF of {facts.get('pf')} "
                        f"({', '.join(pf) or 'no netdev'})" if facts.get("pf") else f"{n.pci} (driver "
                        f"{facts.get('driver')})")
            if any(p and not (p.up and p.carrier) for p in pfs):
                dev_hop.set("broken", f"the physical function {', '.join(pf)} is down or has no carrier: its VFs "
                            "are cut off", "bring the PF up, check its cable and switch port")
        iso_hop.set("unknown", "a VF reaches its host through the NIC's embedded switch: the host talks to the guest "
                    "when the PF (or another VF) carries the host's address on the same network and VLAN")
    else:
        link = (snap.direct or {}).get(n.dev) if n.dev else None
        nic_hop.set("ok", f"{n.domain} is running; NIC {n.mac} is macvtap {n.dev or '?'} on {n.parent or '?'} in "
                    f"{n.mode or 'vepa'} mode" + (f" (network {n.network})" if n.network else ""))
        dev_hop.evidence = {"dev": n.dev, "exists": link is not None}
        if link is not None:
            dev_hop.evidence.update({"kind": link.kind, "mode": link.mode, "parent": link.parent, "up": link.up,
                                     "carrier": link.carrier, "parent_up": link.parent_up,
                                     "parent_carrier": link.parent_carrier})
            dev_hop.set("ok", f"{link.name} ({link.kind}, {link.mode} mode) on {link.parent}, parent "
                        f"{'up' if link.parent_up else 'down'} with carrier {'on' if link.parent_carrier else 'off'}")
        helpers = [d for d in (snap.direct or {}).values() if d.kind == "macvlan"]
        iso_hop.evidence = {"mode": link.mode if link else n.mode, "parent": link.parent if link else n.parent,
                            "host_macvlans": [{"name": d.name, "parent": d.parent, "mode": d.mode,
                                               "addresses": list(d.addresses)} for d in helpers]}
        iso_hop.set("ok", "the host has a macvlan in bridge mode on the parent: host and guest can talk through it")
    for h in hops[:3]:
        c.apply(h)
    return hops
