"""Hop 10, the DHCP conversation (the first guide: "the guest gets no IP over the bridge"): who stops
talking? From the probe's capture (netmedic.diagnose.probe) of the VM MAC's DHCP messages on its tap,
the bridge's uplinks and the bridge, the verdict the guide's checklist reaches:

- no DISCOVER from the guest: the guest does not ask (its driver, link or DHCP client);
- a DISCOVER that never leaves through an uplink: the bridge drops it (hops 3, 7);
- a DISCOVER out of the uplink and no OFFER back: the LAN's DHCP server does not answer, or DHCP
  snooping / port security on the switch, or a firewall, drops it;
- an OFFER on the uplink that never reaches the tap: the host drops it;
- an OFFER leaving the tap with a bad UDP checksum (or one never filled: checksum offload) followed by
  another DISCOVER from the guest: its DHCP client dropped the OFFER (the probe verifies each frame's
  checksum);
- an OFFER the guest does not REQUEST, a NAK, a REQUEST with no ACK;
- an ACK on the tap: the lease was obtained.

For a libvirt NAT/routed network the server is the network's dnsmasq on the host: its process, its
listening DHCP socket (UDP 67, in this network namespace) and its lease file are shown.
"""
from __future__ import annotations

import os
from typing import Optional

from netmedic import hostfacts

WHY = ("a DHCP client retransmits its DISCOVER every few seconds (RFC 2131: ~4 s then ~8 s; udhcpc every 3 s; "
       "dhclient from 1-2 s, backing off), so the window sees at least two attempts")


PARTIAL_NOTE = ("not filled: checksum offload left only the pseudo-header sum in the field; a guest whose virtio "
                "driver honours NEEDS_CSUM may still accept it, an old dhclient or busybox udhcpc reading a raw "
                "socket drops it")


def checksum_drops(events: list, tap: str) -> list:
    """The OFFERs that left the tap with a bad or never-filled ("partial") UDP checksum and were followed by
    another DISCOVER from the guest on the tap, with no REQUEST in between: the guest dropped them."""
    on_tap = [e for e in events if e.get("interface") == tap]
    out = []
    for e in on_tap:
        if e["type"] != "OFFER" or e["direction"] != "out" or e.get("udp_checksum") not in ("bad", "partial"):
            continue
        later = [x["type"] for x in on_tap if x["direction"] == "in" and x["t"] > e["t"]]
        nxt = next((t for t in later if t in ("DISCOVER", "REQUEST")), None)
        if nxt == "DISCOVER":
            out.append(e)
    return out


def _checksum_verdict(drops: list, events: list, tap: str, br: Optional[str], where: str) -> tuple:
    """(summary, fix, evidence) of the bad-checksum verdict."""
    bad = [e for e in drops if e["udp_checksum"] == "bad"]
    first = (bad or drops)[0]
    found = f"{first['checksum_found']} where {first['checksum_expected']} is expected"
    what = found if first["udp_checksum"] == "bad" else f"{PARTIAL_NOTE}; {found}"
    xids = {e["xid"] for e in drops}
    upstream = sorted({e["interface"] for e in events if e["role"] == "uplink" and e["direction"] == "in"
                       and e["type"] == "OFFER" and e["xid"] in xids and e.get("udp_checksum") == "bad"})
    summary = (f"the OFFERs reaching the guest carry a bad UDP checksum ({what}; {len(drops)} OFFER(s) out of "
               f"{tap} each followed by another DISCOVER): the guest's DHCP client drops them and asks again")
    fill = "`iptables -t mangle -A POSTROUTING -p udp --dport 68 -j CHECKSUM --checksum-fill`"
    if upstream:
        fix = (f"the LAN's DHCP server sends them so (already bad on {', '.join(upstream)}): on its host, fill the "
               f"checksum of its DHCP replies in the mangle POSTROUTING chain ({fill}) or turn tx checksum offload "
               "off on the device it sends from (`ethtool -K DEV tx off`)")
    else:
        fix = (f"on the side of {where}: fill the checksum of the DHCP replies in the mangle POSTROUTING chain "
               f"({fill}; libvirt adds it for its networks in iptables mode, nftables has no equivalent) — on an "
               "nftables-only host turn tx checksum offload off on the device the server sends from, e.g. "
               f"`ethtool -K {br or 'BRIDGE'} tx off`, or on the tap: `ethtool -K {tap} tx off`")
    evidence = {"events": [{k: e[k] for k in ("t", "interface", "direction", "type", "xid", "udp_checksum",
                                               "checksum_found", "checksum_expected")} for e in drops],
                "found": first["checksum_found"], "expected": first["checksum_expected"],
                "already_bad_on": upstream}
    if first["udp_checksum"] == "partial":
        evidence["note"] = PARTIAL_NOTE
    return summary, fix, evidence


def dnsmasq_listens(pid: int) -> Optional[bool]:
    """Does the process's network namespace hold a UDP socket bound to port 67 (/proc/PID/net/udp lists the
    sockets of the namespace the process lives in)? None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/net/udp") as fh:
            lines = fh.read().splitlines()[1:]
    except OSError:
        return None
    return any(len(f) > 2 and f[1].endswith(":0043") for f in (line.split() for line in lines))


def dnsmasq_facts(snap, network, leases_dir: str) -> Optional[dict]:
    if network is None or network.forward_mode not in ("nat", "route", "open") or not network.ips:
        return None
    dns = (snap.dnsmasq or {}).get(network.name)
    if dns is None and network.source_file:
        dns = hostfacts.read_dnsmasq(network.name, os.path.dirname(network.source_file))
    lease_file = os.path.join(leases_dir, f"{network.bridge}.status")
    out = {"network": network.name, "pid": dns.pid if dns else None, "alive": bool(dns and dns.alive),
           "same_netns": bool(dns and dns.same_netns), "lease_file": lease_file,
           "lease_file_exists": os.path.exists(lease_file)}
    out["listening_udp_67"] = dnsmasq_listens(dns.pid) if dns and dns.alive else False
    return out


def hop_dhcp(c, hop, probe: Optional[dict], vm_ip: Optional[str], counters: Optional[dict],
             leases_dir: str) -> None:
    server = dnsmasq_facts(c.snap, c.network, leases_dir)
    if server is not None:
        hop.evidence["dnsmasq"] = server
    if probe is None or probe.get("dhcp") is None:
        hop.set("unknown", "not watched (--probe captures the DHCP exchange on the tap and the uplinks)")
        c.apply(hop)
        return
    d = probe["dhcp"]
    hop.evidence.update(d)
    hop.evidence["why_this_long"] = WHY
    tap, ups, br = d["tap"], d["uplinks"], d["bridge"]
    seen = {k: set(v) for k, v in d["seen"].items()}
    at_tap = seen.get(tap, set())
    from_guest = {s.split()[0] for s in at_tap if s.endswith(" in")}
    to_guest = {s.split()[0] for s in at_tap if s.endswith(" out")}
    up_out = {s.split()[0] for u in ups for s in seen.get(u, ()) if s.endswith(" out")}
    up_in = {s.split()[0] for u in ups for s in seen.get(u, ()) if s.endswith(" in")}
    window = f"{d['seconds']:g} s"
    local = server is not None  # the host's dnsmasq is the server
    where = f"network {c.network.name}'s dnsmasq" if local else "the LAN's DHCP server"
    drops = checksum_drops(d.get("events") or [], tap)
    order = " -> ".join(t for t in ("DISCOVER", "OFFER", "REQUEST", "ACK", "NAK") if t in from_guest | to_guest)
    if "ACK" in to_guest:
        hop.set("ok", f"lease obtained: {order} seen on {tap}")
    elif "NAK" in to_guest:
        hop.set("broken", f"{where} refused the guest's REQUEST (DHCPNAK on {tap}): the guest asks for an address "
                "the server will not give (a lease from another network?)", "release and renew inside the guest")
    elif not from_guest:
        sent = counters.get("from_guest_recent") if counters else None
        if vm_ip or sent:
            hop.set("unknown", f"no DHCP message from the guest in {window}: it did not ask (a guest with a lease "
                    "renews only at half its lease time; a static address needs none)"
                    + (f"; it sent {sent} other frame(s) meanwhile" if sent else ""),
                    "restart the guest's DHCP client during --probe to watch the exchange")
        else:
            hop.set("broken", f"the guest sent no DHCPDISCOVER in {window} (and nothing else): it does not ask for an "
                    "address — look inside the guest: its NIC driver (e.g. virtio), its link state, its DHCP client",
                    "check the guest's network configuration and driver (virsh console)")
    elif not to_guest & {"OFFER", "ACK", "NAK"}:
        if local:
            why = ("its dnsmasq is not running" if not server["alive"] else
                   "it runs in another network namespace" if not server["same_netns"] else
                   "it holds no DHCP socket (UDP 67)" if not server["listening_udp_67"] else
                   "it did not answer (its dhcp-range? the bridge's firewall?)")
            hop.set("broken", f"the guest's DISCOVER reached the host ({br}) and no OFFER came back in {window}: "
                    f"{where} is the server and {why}", "restart libvirt's network daemon (virtnetworkd, or "
                    "libvirtd): it restarts the network's dnsmasq; check the host firewall's INPUT for UDP 67")
        elif not ups:
            hop.set("broken", f"the guest's DISCOVER has nowhere to go: {c.nic.bridge} has no uplink and no DHCP "
                    "server answers on it", f"enslave the uplink to {c.nic.bridge} or run a DHCP server for it")
        elif "DISCOVER" not in up_out:
            hop.set("broken", f"the guest's DISCOVER (seen on {tap}) never left through {', '.join(ups)} in {window}: "
                    "the bridge drops it (port state, VLAN, bridge firewall: hops 3, 7)",
                    "see hops 3 and 7")
        elif "OFFER" not in up_in:
            hop.set("broken", f"the guest's DISCOVER left through {', '.join(ups)} and no DHCPOFFER came back in "
                    f"{window}: {where} does not answer — it is down, out of addresses or on another VLAN, or DHCP "
                    "snooping / port security on the switch or a firewall drops the exchange",
                    "check the DHCP server and the switch port (DHCP snooping trusted port, port security MAC "
                    "limit, VLAN); a firewall between them")
        else:
            hop.set("broken", f"an OFFER arrived on {', '.join(ups)} but never reached {tap}: the host drops it on "
                    "the way to the guest (fdb hop 4, port hop 3, firewall hop 7)", "see hops 3, 4 and 7")
    elif drops:
        summary, fix, hop.evidence["bad_udp_checksum"] = _checksum_verdict(drops, d.get("events") or [], tap, br,
                                                                            where)
        hop.set("broken", summary, fix)
    elif "REQUEST" not in from_guest:
        hop.set("broken", f"the guest got an OFFER on {tap} and sent no REQUEST in {window}: its DHCP client "
                "rejected or never saw it (look inside the guest: firewall, client logs)",
                "check the guest's DHCP client")
    else:
        hop.set("broken", f"the guest's REQUEST got no ACK in {window}: {where} did not confirm the lease",
                "check the DHCP server's logs")
    c.apply(hop)
