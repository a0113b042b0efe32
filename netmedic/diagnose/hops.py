"""The hops of a bridged VM NIC's path, and how the invariants' violations land on them.

Every verdict an invariant can reach comes from its violation: each invariant declares the hop its
violations belong on (netmedic.plugin.Invariant.HOP/HOPS) and this module never names an invariant.
What a hop adds of its own is evidence (the facts behind the verdict) and what no invariant judges: the
VM's inventory entry (hop 1), the probe and the DHCP watch (hops 9, 10), IP discovery (hop 8).
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
from typing import Optional

from netmedic import hostfacts
from netmedic.nl import data as nl
from netmedic.policies import INVARIANTS, healer_for

HOPS = ((1, "nic", "domain and NIC"), (2, "tap", "tap"), (3, "port", "bridge port"), (4, "fdb", "fdb"),
        (5, "duplicates", "duplicates"), (6, "uplink", "uplink"), (7, "l3", "L3 on the host"),
        (8, "ip", "VM IP address"), (9, "probe", "probe"), (10, "dhcp", "DHCP conversation"))
RANK = {"ok": 0, "unknown": 1, "risk": 2, "broken": 3}


@dataclasses.dataclass
class Hop:
    number: int
    name: str
    title: str
    verdict: str = "ok"
    summary: str = ""
    evidence: dict = dataclasses.field(default_factory=dict)
    fix: Optional[str] = None
    findings: list = dataclasses.field(default_factory=list)  # the violations shown here, as dicts
    cause: Optional[dict] = None  # {"invariant", "kind"} of the violation that set the verdict

    def set(self, verdict: str, summary: str, fix: Optional[str] = None, cause: Optional[dict] = None) -> None:
        """Keep the worst verdict (broken > risk > unknown > ok); its summary and fix lead."""
        if RANK[verdict] > RANK[self.verdict] or not self.summary:
            self.verdict, self.summary, self.fix, self.cause = verdict, summary, fix, cause
        elif RANK[verdict] == RANK[self.verdict] and verdict != "ok":
            self.summary += "; " + summary
            if fix and fix not in (self.fix or ""):
                self.fix = f"{self.fix}; {fix}" if self.fix else fix

    def as_dict(self) -> dict:
        return {"number": self.number, "name": self.name, "title": self.title, "verdict": self.verdict,
                "summary": self.summary, "evidence": self.evidence, "fix": self.fix, "findings": self.findings,
                "cause": self.cause}


def concerns(v, nic) -> bool:
    """Is this violation about the NIC diagnosed (its MAC, its port, its domain, its bridge or network, or
    the host as a whole)? A violation about another port that shares the MAC (a clone) is shown only on
    the duplicates hop."""
    s = v.subject
    tap = getattr(nic, "tap", None) or getattr(nic, "dev", None)
    if s.mac is not None:
        return s.mac == nic.mac and (s.port is None or s.port == tap or INVARIANTS[v.invariant].hop(v)
                                     == "duplicates")
    if s.domain is not None:
        return s.domain == nic.domain and (s.port is None or s.port == tap)
    if s.network is not None:
        return s.network == nic.network
    if s.bridge is not None:
        return s.bridge == getattr(nic, "bridge", None)
    return s.port is None or s.port == tap


class Ctx:
    def __init__(self, snap, nic, policy, violations: list):
        self.snap, self.nic, self.policy = snap, nic, policy
        self.bridge = snap.bridge(getattr(nic, "bridge", None))
        self.tap = snap.link(getattr(nic, "tap", None))
        net = getattr(nic, "network", None)
        self.network = snap.inventory.networks.get(net) if net else None
        self.mine = [v for v in violations if concerns(v, nic)]

    def on(self, hop: str) -> list:
        return [v for v in self.mine if INVARIANTS[v.invariant].hop(v) == hop]

    def apply(self, hop: Hop) -> None:
        """The invariants' verdicts on this hop."""
        for v in self.on(hop.name):
            inv = INVARIANTS[v.invariant]
            ipol = self.policy.invariants[v.invariant]
            report_only = inv.remedy(v, ipol.options) is None
            hop.findings.append({"invariant": v.invariant, "kind": v.kind, "severity": v.severity,
                                 "message": v.message})
            hop.set(v.severity, v.message + (" (report only: netmedic cannot fix this itself)" if report_only
                                             else ""), self.fix_for(v), {"invariant": v.invariant, "kind": v.kind})

    def fix_for(self, v) -> str:
        """What netmedic would do (and in which mode), or the manual fix."""
        ipol = self.policy.invariants[v.invariant]
        mode = ipol.mode_for(v.subject.bridge)
        name = healer_for(v, ipol.options)
        if name is not None:
            from netmedic.healers import HEALERS

            plan, why = HEALERS[name].plan(v, self.snap, ipol.options)
            if plan is not None:
                how = f"`netmedic heal` does it ({v.invariant}, enforce)" if mode == "enforce" else \
                    f"`netmedic heal` would ({v.invariant} is in {mode} mode: enforce it, or do it by hand)"
                return f"{'; '.join(s.description for s in plan.steps)} — {how}"
            if why:
                return f"netmedic will not: {why}"
        return v.evidence.get("fix") or INVARIANTS[v.invariant].hint(v)


def uplinks(snap, bridge: Optional[str]) -> list:
    """The bridge's ports that are not VM taps."""
    return snap.uplinks(bridge)


# --- the hops ---------------------------------------------------------------------------------------
def hop_nic(c: Ctx, hop: Hop, others: list) -> None:
    n = c.nic
    hop.evidence = {"domain": n.domain, "uuid": n.uuid, "mac": n.mac, "model": n.model, "type": n.type,
                    "bridge": n.bridge, "network": n.network, "tap": n.tap, "vlans": list(n.vlans),
                    "link_state": "up" if n.link_up else "down", "state": "running", "xml": n.source_file,
                    "other_nics": [f"{o.mac} ({getattr(o, 'tap', None) or getattr(o, 'dev', None)})" for o in others]}
    src = f"network {n.network} (bridge {n.bridge})" if n.network else f"bridge {n.bridge}"
    vlan = f", VLAN {'/'.join(map(str, n.vlans))}" if n.vlans else ""
    hop.set("ok", f"{n.domain} is running; NIC {n.mac} ({n.model or 'default model'}) on {src} via tap "
            f"{n.tap or '?'}{vlan}")
    # The domain's own configuration (its run-state XML), which no invariant judges:
    if n.network and c.network is None:
        hop.set("broken", f"libvirt network {n.network} is not active (no run-state XML)",
                f"virsh net-start {n.network}")
    if not n.bridge:
        hop.set("broken", "the NIC names no bridge", "check the domain XML's <source>")
    if not n.tap:
        hop.set("unknown", "libvirt has not named the NIC's tap (<target dev>)")
    if not n.link_up:
        hop.set("broken", "the domain XML sets the NIC's link state down: the guest sees no carrier",
                f"virsh domif-setlink {n.domain} {n.tap or n.mac} up")
    c.apply(hop)


def hop_tap(c: Ctx, hop: Hop, counters: Optional[dict]) -> None:
    n, tap, br = c.nic, c.tap, c.bridge
    if tap is None:
        hop.evidence = {"tap": n.tap, "exists": False}
        hop.set("unknown", f"tap {n.tap} does not exist")
    else:
        ups = uplinks(c.snap, n.bridge)
        hop.evidence = {"tap": tap.name, "exists": True, "up": tap.up, "carrier": tap.carrier,
                        "operstate": tap.operstate, "mtu": tap.mtu, "bridge_mtu": br.mtu if br else None,
                        "uplink_mtu": {u.name: u.mtu for u in ups}}
        hop.set("ok", f"{tap.name} exists, {'up' if tap.up else 'down'}, MTU {tap.mtu}"
                + (f" (bridge {br.mtu})" if br else ""))
    if counters:
        hop.evidence["counters"] = counters
    c.apply(hop)


def hop_port(c: Ctx, hop: Hop) -> None:
    n, tap, br = c.nic, c.tap, c.bridge
    hop.evidence = {"bridge": n.bridge, "bridge_exists": br is not None}
    if br is not None:
        info = br.bridge
        hop.evidence.update({"stp": bool(info and info.stp_state),
                             "forward_delay_s": round(info.forward_delay / 100, 2) if info else None,
                             "vlan_filtering": bool(info and info.vlan_filtering)})
        if tap is not None:
            hop.evidence["master"] = c.snap.name_of(tap.master)
            port = tap.port if tap.master == br.index else None
            if port is not None:
                state = nl.PORT_STATE_NAMES.get(port.state, str(port.state))
                hop.evidence.update({"port_state": state, "learning": port.learning, "flood": port.flood})
                hop.set("ok", f"{tap.name} is a {state} port of {n.bridge} (STP "
                        f"{'on' if info and info.stp_state else 'off'})")
    if not hop.summary:
        hop.set("unknown", f"{n.tap} is not a port of {n.bridge}")
    for v in c.on("port"):
        if "want" in v.evidence and "have" in v.evidence:
            hop.evidence["vlans"] = {"want": v.evidence["want"], "have": v.evidence["have"]}
    c.apply(hop)


def hop_fdb(c: Ctx, hop: Hop, moves: Optional[dict]) -> None:
    n, tap, br = c.nic, c.tap, c.bridge
    if moves is not None:
        hop.evidence["daemon_moves"] = moves
    if br is None or tap is None or tap.master != br.index:
        hop.set("unknown", "not checked: the tap is not a port of its bridge (hops 2-3)")
        return
    entry = c.snap.fdb.get((n.bridge, n.mac))
    if entry is None:
        hop.evidence["entry"] = None
        hop.set("unknown", f"{n.mac} is not in {n.bridge}'s fdb: the guest has sent nothing since its port came "
                "up (not booted, no network configuration, or its frames never reach the bridge)")
    else:
        where = c.snap.name_of(entry.port_index) or f"ifindex {entry.port_index}"
        hop.evidence.update({"entry": {"port": where, "static": entry.static, "sticky": entry.sticky,
                                       "local": entry.local}, "expected_port": tap.name})
        pinned = ", pinned static sticky" if entry.sticky and entry.static else ""
        if c.snap.guard is not None and c.snap.guard.guards(n.bridge, n.mac, tap.name):
            pinned += ", held by netmedic's reflection guard (its frames entering other ports are dropped)"
        hop.set("ok", f"{n.mac} is on {'its tap ' + tap.name if where == tap.name else where}{pinned}")
    c.apply(hop)
    if moves and moves.get("moves_last_60s"):
        hop.summary += (f"; the daemon saw it move {moves['moves_last_60s']} time(s) in the last minute "
                        f"({moves['moves_total']} since it started)")
    if hop.verdict == "broken":
        hop.fix = (hop.fix or "") + "; the cause is behind the port that taught it (hop 6)"


def hop_duplicates(c: Ctx, hop: Hop) -> None:
    n = c.nic
    local = [o for o in c.snap.inventory.nics if o.mac == n.mac and o is not n]
    host = [lk.name for lk in c.snap.links.values() if lk.mac == n.mac
            and lk.name not in {o.tap for o in c.snap.inventory.nics}]
    seen = (c.snap.sightings or {}).get((n.bridge, n.mac))
    hop.evidence = {"local_vms": [{"domain": o.domain, "tap": o.tap, "bridge": o.bridge} for o in local],
                    "host_interfaces": host, "probe": seen}
    remote_note = "" if seen is not None else "; remote duplicates not checked (needs --probe)"
    hop.set("ok", f"no other local VM or host interface uses {n.mac}{remote_note}")
    c.apply(hop)
    if seen is not None and not seen.get("remote"):
        hop.summary += (f"; the probe saw {seen['reflected']} reflected and no foreign frame with {n.mac} "
                        f"on {', '.join(seen['ports'])}")


def hop_uplink(c: Ctx, hop: Hop, fdb_hop: Hop) -> None:
    n, br = c.nic, c.bridge
    if br is None:
        hop.set("unknown", "no bridge (hop 3)")
        return
    ups = uplinks(c.snap, n.bridge)
    addrs = c.snap.addresses or {}
    hop.evidence = {"uplinks": [{"name": u.name, "kind": u.kind, "carrier": u.carrier, "up": u.up, "mtu": u.mtu,
                                 "bond_mode": u.bond_mode if u.kind == "bond" else None,
                                 "members": sorted(lk.name for lk in c.snap.links.values() if lk.master == u.index)
                                 if u.kind in ("bond", "team") else [],
                                 "addresses": addrs.get(u.index, [])} for u in ups]}
    routed = c.network is not None and c.network.forward_mode in ("nat", "route", "open", None)
    if not ups:
        hop.set("ok" if routed else "unknown",
                f"libvirt {c.network.forward_mode or 'isolated'} network: no uplink port, traffic is routed by the "
                "host (hop 7)" if routed else f"{n.bridge} has no uplink port: its VMs reach only each other and "
                "the host")
    else:
        hop.set("ok", ", ".join(f"{u.name} ({u.kind or 'nic'}, carrier {'on' if u.carrier else 'off'})" for u in ups))
    c.apply(hop)
    # Where hop 4's verdict points: the MAC was learned on an uplink, so the cause is behind it.
    entry = fdb_hop.evidence.get("entry") if fdb_hop.verdict == "broken" else None
    if entry and entry.get("port") in {u.name for u in ups}:
        hop.set("risk", f"the VM's MAC was learned on {entry['port']}: something behind it sends frames with the "
                "VM's MAC — a switch reflecting the VM's broadcasts (on a real host: a round-robin bond, the "
                "founding case) or a remote duplicate (hop 5; --probe tells them apart)", REFLECT_FIX)
    seen = (c.snap.sightings or {}).get((n.bridge, n.mac))
    if seen and seen.get("reflected"):
        hop.set("risk", f"{seen['reflected']} of the VM's own frames came back from {', '.join(seen['ports'])}: "
                "the network behind the uplink reflects its broadcasts", REFLECT_FIX)


REFLECT_FIX = ("find what reflects the VM's broadcasts behind the uplink (a round-robin/broadcast bond without a "
               "switch LAG, a hairpin or loop on the switch); meanwhile netmedic pins each VM MAC static sticky "
               "on its tap")


def hop_l3(c: Ctx, hop: Hop) -> None:
    n, snap, br = c.nic, c.snap, c.bridge
    hop.evidence = {"bridge_nf_call_iptables": {"sysctl": snap.sysctl("net", "bridge", "bridge-nf-call-iptables"),
                                                "bridge": bool(br and br.bridge and br.bridge.nf_call_iptables)},
                    "forward_chains": [{"backend": ch.backend, "policy": ch.policy, "rules": len(ch.rules)}
                                       for ch in snap.forward_chains]}
    routes = (snap.routes or {}).get((n.bridge, n.mac))
    if routes:
        hop.evidence["routes"] = [{"address": r.address, "oif": r.oif, "route": r.route} for r in routes]
    hop.set("ok", "bridge netfilter lets the VM's bridged traffic through"
            + (f"; the host routes {', '.join(r.address for r in routes)} through "
               f"{', '.join(sorted({r.oif or '-' for r in routes}))}" if routes else ""))
    net = c.network
    if net is not None and net.forward_mode in ("nat", "route"):
        hop.evidence.update({"network": net.name, "forward_mode": net.forward_mode, "subnets": list(net.ips),
                             "ip_forward": snap.sysctl("net", "ipv4", "ip_forward"),
                             "forwarding": {d: snap.sysctl("net", "ipv4", "conf", d, "forwarding")
                                            for d in (net.bridge, net.forward_dev) if d}})
        if net.forward_mode == "nat" and snap.nat_rules is not None:
            nets = [str(ipaddress.ip_interface(ip).network) for ip in net.ips if ipaddress.ip_interface(ip).version == 4]
            hop.evidence["masquerade"] = {s: [r.rule for r in hostfacts.masquerades(snap.nat_rules, s)] for s in nets}
        dns = (snap.dnsmasq or {}).get(net.name)
        if dns is not None:
            hop.evidence["dnsmasq"] = {"pid": dns.pid, "alive": dns.alive, "same_netns": dns.same_netns,
                                       "pid_file": dns.pid_file}
        hop.summary = f"{net.forward_mode} network {net.name}: forwarding on" + (
            ", MASQUERADE and dnsmasq in place" if net.forward_mode == "nat" else "")
    c.apply(hop)
    for v in c.on(hop.name):  # nf_tables: the table and chain that drop, as the violation names them
        for ch in v.evidence.get("chains") or ():
            hop.evidence.setdefault("nft_chains", []).append(
                {k: ch.get(k) for k in ("family", "table", "chain", "hook", "policy", "dropped_by")})


def hop_ip(c: Ctx, hop: Hop, found: dict, leases_dir: str) -> Optional[str]:
    """IP discovery (no invariant judges it): the first address found is the one the probe uses."""
    n = c.nic
    tried = [f"dhcp leases ({leases_dir})", "neighbour tables (IPv4, IPv6)", "guest agent"]
    hop.evidence = {"address": None, "source": None, "sources_tried": tried, "agent_note": found["agent_note"],
                    "all": [x["address"] for k in ("leases", "neighbours") for x in found[k]],
                    "agent": found["agent"]}
    v4 = [x for x in found["neighbours"] if ipaddress.ip_address(x["address"]).version == 4]
    if found["leases"]:
        lease = found["leases"][0]
        hop.evidence.update({"address": lease["address"], "source": "dhcp_lease", "file": lease["file"],
                             "hostname": lease["hostname"], "all": [x["address"] for x in found["leases"]],
                             "sources_tried": tried[:1]})
        hop.set("ok", f"{lease['address']} (DHCP lease in {os.path.basename(lease['file'])})")
    elif found["agent"]:
        addr = found["agent"][0]["address"].split("/")[0]
        hop.evidence.update({"address": addr, "source": "guest_agent"})
        hop.set("ok", f"{addr} (the guest agent, interface {found['agent'][0]['interface']})")
    elif found["neighbours"]:
        first = (v4 or found["neighbours"])[0]
        hop.evidence.update({"address": first["address"], "source": "neighbour", "device": first["device"]})
        hop.set("ok", f"{first['address']} (the host's neighbour table, on {first['device']})")
    elif c.network is not None and c.network.forward_mode in ("nat", "route") and c.network.ips:
        hop.set("risk", f"no DHCP lease for {n.mac} on network {c.network.name} and no neighbour entry: the guest "
                "got no address (DHCP not answered? --probe watches the exchange) or has not talked to the host",
                "check the guest's network configuration and the network's dnsmasq (hops 7, 10)")
    else:
        hop.set("unknown", "no DHCP lease, no neighbour entry and no guest agent answer for the VM's MAC on this "
                "host (a bridged VM talking only to the outside leaves none)")
    six = [x["address"] for x in found["neighbours"] if ipaddress.ip_address(x["address"]).version == 6]
    if six:
        hop.evidence["ipv6"] = six
        hop.summary += f"; IPv6: {', '.join(six)}"
    return hop.evidence["address"]


def hop_probe(c: Ctx, hop: Hop, probe: Optional[dict], vm_ip: Optional[str]) -> None:
    if probe is None:
        hop.set("unknown", "not run (--probe sends an ARP probe and captures on the tap and the uplinks)")
        return
    hop.evidence = {k: probe.get(k) for k in ("arp", "capture")}
    arp, cap = probe.get("arp"), probe.get("capture") or {}
    hop.set("ok", "probe sent")
    if arp is None:
        hop.set("unknown", "no ARP probe: the VM's IPv4 address is unknown (hop 8)")
    else:
        replies = arp["replies"]
        others = [m for m in replies if m != c.nic.mac]
        if c.nic.mac in replies:
            hop.set("ok", f"{vm_ip} answered the ARP probe from {c.nic.mac}")
        if others:
            hop.set("broken", f"{', '.join(others)} also answered for {vm_ip}: an IP address conflict",
                    "find the machine with that MAC and change one of the two addresses")
        elif not replies:
            hop.set("broken", f"no ARP reply from {vm_ip} within {cap.get('seconds', 0):g} s: the VM does not "
                    "answer on its link (guest down or firewalled, or the path is broken: see the hops above)")
    if cap.get("ports"):
        hop.summary += (f"; on {', '.join(cap['ports'])}: {cap['outgoing']} frame(s) with the VM's MAC out, "
                        f"{cap['incoming']} in ({cap['reflected']} reflected, {cap['remote']} foreign)")
