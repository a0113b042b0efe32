"""Finding the VM's addresses and what others saw of it (the third guide's question; no invariant's
verdict): libvirt's DHCP leases, the host's IPv4 and IPv6 neighbour tables, the guest agent (through
libvirt-python when a libvirtd runs: diagnose is a command, not a hook, so the API is allowed), and the
daemon's memory of the MAC's recent fdb moves (asked through its socket)."""
from __future__ import annotations

import os
from typing import Optional

from netmedic import hostfacts, pathfacts

LIBVIRT_SOCKETS = ("/run/libvirt/libvirt-sock", "/run/libvirt/virtqemud-sock")


def guest_agent(domain: str, mac: str, uri: str = "qemu:///system") -> tuple:
    """([(address/prefix, ifname)], note): the guest agent's view of the NIC with this MAC."""
    if not any(os.path.exists(p) for p in LIBVIRT_SOCKETS):
        return [], "not asked: no running libvirtd"
    try:
        import libvirt
    except ImportError:
        return [], "not asked: libvirt-python is not installed"
    try:
        libvirt.registerErrorHandler(lambda *_a: None, None)
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        return [], f"libvirt: {exc.get_error_message()}"
    try:
        dom = conn.lookupByName(domain)
        ifaces = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT)
    except libvirt.libvirtError as exc:
        return [], f"guest agent: {exc.get_error_message()}"
    finally:
        conn.close()
    out = []
    for name, info in sorted((ifaces or {}).items()):
        if str(info.get("hwaddr", "")).lower() != mac:
            continue
        for a in info.get("addrs") or []:
            out.append((f"{a.get('addr')}/{a.get('prefix')}", name))
    return out, "asked" if out else "asked: no address for this MAC"


def find(netlink, nic, leases_dir: str, agent: bool = True) -> dict:
    """Every address known for the NIC, by source; the first one is the one diagnose uses."""
    leases = hostfacts.leases(nic.mac, leases_dir)
    neigh = pathfacts.neighbours(netlink, {nic.mac}).get(nic.mac, [])
    found, note = guest_agent(nic.domain, nic.mac) if agent else ([], "not asked")
    return {"leases": [{"address": ip, "file": path, "hostname": host} for ip, path, host in leases],
            "neighbours": [{"address": ip, "device": dev} for ip, dev in neigh],
            "agent": [{"address": a, "interface": i} for a, i in found], "agent_note": note}


def daemon_moves(mac: str, socket_path: Optional[str] = None) -> Optional[dict]:
    """What the running daemon saw of this MAC's fdb moves, or None when no daemon answers."""
    from netmedic.hooks import notify

    path = socket_path or notify.socket_path()
    if not os.path.exists(path):
        return None
    answer = notify.request({"request": "fdb_moves", "mac": mac, "source": "diagnose"}, path=path, timeout=1.0)
    if not isinstance(answer, dict) or not answer.get("ok"):
        return None
    return {k: answer.get(k) for k in ("moves_total", "moves_last_60s", "recent", "known")}
