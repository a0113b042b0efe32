"""`netmedic diagnose DOMAIN`: walk the path of one VM NIC hop by hop and name the first broken hop.

Hops (docs/diagnose.md): 1 domain and NIC, 2 tap, 3 bridge port, 4 fdb, 5 duplicates, 6 uplink,
7 L3 on the host, 8 the VM's IP address, 9 probe (only with --probe: it sends traffic). Each hop has a
verdict (ok / broken / risk / unknown), evidence and a fix. The facts come from one observation (the
same Snapshot the invariants judge) and the invariants themselves, so `diagnose` and `check` never
disagree. Read-only, except that --probe sends one ARP request from the bridge.

JSON output: docs/diagnose.schema.json. Exit 0: no broken hop; 1: a hop is broken; 2: error.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import select
import socket
import struct
import time
from typing import Optional

from netmedic import hostfacts, nl
from netmedic import inventory as inventory_mod
from netmedic.errors import InputError
from netmedic.observe import observe
from netmedic.policies import INVARIANTS, healer_for
from netmedic.policies.uplink_aggregation import BOND_MODES, REMEDY_TEXT, members, uplinks

SCHEMA_VERSION = 1
VERDICTS = ("ok", "broken", "risk", "unknown")
HOPS = ((1, "nic", "domain and NIC"), (2, "tap", "tap"), (3, "port", "bridge port"), (4, "fdb", "fdb"),
        (5, "duplicates", "duplicates"), (6, "uplink", "uplink"), (7, "l3", "L3 on the host"),
        (8, "ip", "VM IP address"), (9, "probe", "probe"))
ALL_NEEDS = ("addresses", "port_vlans", "nat_rules", "dnsmasq", "bridge_addr", "kernel_events")


class DiagnoseError(InputError):
    """The domain or NIC to diagnose does not exist (exit 2)."""


@dataclasses.dataclass
class Hop:
    number: int
    name: str
    title: str
    verdict: str = "ok"
    summary: str = ""
    evidence: dict = dataclasses.field(default_factory=dict)
    fix: Optional[str] = None

    def set(self, verdict: str, summary: str, fix: Optional[str] = None) -> None:
        """Keep the worst verdict (broken > risk > unknown > ok); its summary and fix lead."""
        rank = {"ok": 0, "unknown": 1, "risk": 2, "broken": 3}
        if rank[verdict] > rank[self.verdict] or not self.summary:
            self.verdict, self.summary, self.fix = verdict, summary, fix
        elif rank[verdict] == rank[self.verdict] and verdict != "ok":
            self.summary += "; " + summary
            if fix and fix not in (self.fix or ""):
                self.fix = f"{self.fix}; {fix}" if self.fix else fix

    def as_dict(self) -> dict:
        return {"number": self.number, "name": self.name, "title": self.title, "verdict": self.verdict,
                "summary": self.summary, "evidence": self.evidence, "fix": self.fix}


# --- facts ------------------------------------------------------------------------------------------
class _Ctx:
    def __init__(self, snap, nic, policy, violations):
        self.snap, self.nic, self.policy, self.violations = snap, nic, policy, violations
        self.bridge = snap.bridge(nic.bridge)
        self.tap = snap.link(nic.tap)
        self.network = snap.inventory.networks.get(nic.network) if nic.network else None

    def about(self, invariant: str, **match) -> list:
        """This NIC's (or its bridge's/network's) violations of one invariant."""
        out = []
        kind = match.pop("kind", None)
        for v in self.violations.get(invariant, []):
            s = v.subject
            if (kind is None or v.kind == kind) and all(getattr(s, k) == val for k, val in match.items()):
                out.append(v)
        return out

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
                steps = "; ".join(s.description for s in plan.steps)
                return f"{steps} — {how}"
            if why:
                return f"netmedic will not: {why}"
        return v.evidence.get("fix") or ""


def _select_nic(domain, selector: Optional[str]):
    nics = list(domain.nics)
    if not nics:
        raise DiagnoseError(f"domain {domain.name} has no bridged or libvirt-network NIC")
    if selector is None:
        return nics[0], [n for n in nics[1:]]
    sel = selector.strip().lower()
    for n in nics:
        if n.mac == sel.replace("-", ":") or (n.tap and n.tap.lower() == sel):
            return n, [o for o in nics if o is not n]
    raise DiagnoseError(f"domain {domain.name} has no NIC with MAC or tap {selector!r} "
                        f"(it has: {', '.join(f'{n.mac} ({n.tap})' for n in nics)})")


def _yesno(b) -> str:
    return "yes" if b else "no"


# --- the hops ---------------------------------------------------------------------------------------
def hop_nic(c: _Ctx, hop: Hop, others: list) -> None:
    n = c.nic
    hop.evidence = {"domain": n.domain, "uuid": n.uuid, "mac": n.mac, "model": n.model, "type": n.type,
                    "bridge": n.bridge, "network": n.network, "tap": n.tap, "vlans": list(n.vlans),
                    "link_state": "up" if n.link_up else "down", "state": "running", "xml": n.source_file,
                    "other_nics": [f"{o.mac} ({o.tap})" for o in others]}
    src = f"network {n.network} (bridge {n.bridge})" if n.network else f"bridge {n.bridge}"
    vlan = f", VLAN {'/'.join(map(str, n.vlans))}" if n.vlans else ""
    hop.set("ok", f"{n.domain} is running; NIC {n.mac} ({n.model or 'default model'}) on {src} via tap "
            f"{n.tap or '?'}{vlan}")
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


def hop_tap(c: _Ctx, hop: Hop) -> None:
    n, tap, br = c.nic, c.tap, c.bridge
    if tap is None:
        hop.evidence = {"tap": n.tap, "exists": False}
        hop.set("broken", f"tap {n.tap} does not exist while the VM runs",
                f"re-plug the NIC: virsh detach-interface / attach-interface, or restart {n.domain}")
        return
    ups = uplinks(c.snap, n.bridge) if br is not None else []
    hop.evidence = {"tap": tap.name, "exists": True, "up": tap.up, "carrier": tap.carrier,
                    "operstate": tap.operstate, "mtu": tap.mtu, "bridge_mtu": br.mtu if br else None,
                    "uplink_mtu": {u.name: u.mtu for u in ups}}
    hop.set("ok", f"{tap.name} exists, {'up' if tap.up else 'down'}, MTU {tap.mtu}"
            + (f" (bridge {br.mtu})" if br else ""))
    if not tap.up and n.link_up:
        v = c.about("port_forwarding", port=n.tap)
        hop.set("broken", f"tap {tap.name} is down", c.fix_for(v[0]) if v else f"ip link set {tap.name} up")
    for v in c.about("port_forwarding", port=n.tap, kind="no_carrier"):
        hop.set("broken", v.message + " (nothing holds the tap open: QEMU gone or the NIC unplugged)",
                f"re-plug the NIC or restart {n.domain}")
    for v in c.about("mtu_consistency", port=n.tap):
        hop.set(v.severity, v.message, c.fix_for(v))
    if br is not None:
        small = [u for u in ups if u.mtu < br.mtu]
        if small:
            hop.set("risk", f"uplink {', '.join(f'{u.name} MTU {u.mtu}' for u in small)} is smaller than "
                    f"{br.name}'s {br.mtu}: larger frames to or from the outside are dropped",
                    "give the uplink the bridge's MTU (and the switch port), or lower the bridge's")


def hop_port(c: _Ctx, hop: Hop) -> None:
    n, tap, br = c.nic, c.tap, c.bridge
    hop.evidence = {"bridge": n.bridge, "bridge_exists": br is not None}
    if br is None:
        hop.set("broken", f"bridge {n.bridge} does not exist: the VM is cut off",
                f"re-create {n.bridge} (its network configuration); netmedic then re-attaches the taps")
        return
    info = br.bridge
    hop.evidence.update({"stp": bool(info and info.stp_state),
                         "forward_delay_s": round(info.forward_delay / 100, 2) if info else None,
                         "vlan_filtering": bool(info and info.vlan_filtering)})
    if tap is None:
        hop.set("unknown", "no tap to check (hop 2)")
        return
    master = c.snap.name_of(tap.master)
    hop.evidence["master"] = master
    if tap.master is None:
        v = c.about("port_forwarding", port=n.tap)
        hop.set("broken", f"tap {tap.name} is not a port of any bridge (detached; {n.bridge} re-created?): "
                "the VM is cut off", c.fix_for(v[0]) if v else f"ip link set {tap.name} master {n.bridge}")
        return
    if tap.master != br.index:
        hop.set("broken", f"tap {tap.name} is a port of {master}, but the domain XML names {n.bridge}",
                f"ip link set {tap.name} master {n.bridge} (after checking why it moved)")
        return
    port = tap.port
    state = nl.PORT_STATE_NAMES.get(port.state, str(port.state)) if port else "unknown"
    hop.evidence.update({"port_state": state, "learning": port.learning if port else None,
                         "flood": port.flood if port else None})
    hop.set("ok", f"{tap.name} is a {state} port of {n.bridge} (STP {'on' if info and info.stp_state else 'off'})")
    if port is not None and port.state != nl.BR_STATE_FORWARDING and tap.up:
        if info is not None and info.stp_state:
            fd = info.forward_delay / 100
            if port.state in (nl.BR_STATE_LISTENING, nl.BR_STATE_LEARNING):
                hop.set("broken", f"STP holds {tap.name} in {state} for the forward delay of {n.bridge} "
                        f"({fd:g} s per state, up to {2 * fd:g} s after every link change): it forwards nothing yet",
                        f"wait, or shorten it: ip link set {n.bridge} type bridge forward_delay 200 (2 s), or "
                        f"turn STP off on a bridge with a single uplink (stp_state 0)")
            else:
                hop.set("broken", f"STP keeps {tap.name} {state}: it forwards nothing (a loop elsewhere?)",
                        "check the bridge's STP topology (`bridge link`, `mstpctl`); netmedic never overrides STP")
        else:
            v = c.about("port_forwarding", port=n.tap, kind="not_forwarding")
            hop.set("broken", f"port {tap.name} of {n.bridge} is stuck {state} with STP off: it forwards no frames",
                    c.fix_for(v[0]) if v else f"bridge link set dev {tap.name} state 3")
    if port is not None and not port.learning and not port.flood:
        hop.set("broken", f"learning and unicast flood are both off on {tap.name}: frames for the VM reach it "
                "only through a static fdb entry", f"bridge link set dev {tap.name} flood on")
    elif port is not None and not port.learning:
        hop.set("risk", f"learning is off on {tap.name}: the bridge floods the VM's traffic to every port",
                f"bridge link set dev {tap.name} learning on (or keep netmedic's sticky pin)")
    for v in c.about("vlan_membership", port=n.tap):
        hop.evidence["vlans"] = {"want": v.evidence["want"], "have": v.evidence["have"]}
        hop.set("broken", v.message, c.fix_for(v))


def hop_fdb(c: _Ctx, hop: Hop) -> None:
    n, tap, br = c.nic, c.tap, c.bridge
    if br is None or tap is None or tap.master != br.index:
        hop.set("unknown", "not checked: the tap is not a port of its bridge (hops 2-3)")
        return
    entry = c.snap.fdb.get((n.bridge, n.mac))
    if entry is None:
        hop.evidence = {"entry": None}
        hop.set("unknown", f"{n.mac} is not in {n.bridge}'s fdb: the guest has sent nothing since its port "
                "came up (not booted, no network configuration, or its frames never reach the bridge)",
                f"netmedic heal pins it on {tap.name} before the guest sends (fdb_ownership)")
        return
    where = c.snap.name_of(entry.port_index) or f"ifindex {entry.port_index}"
    hop.evidence = {"entry": {"port": where, "static": entry.static, "sticky": entry.sticky,
                              "local": entry.local}, "expected_port": tap.name}
    if entry.port_index == tap.index:
        if entry.sticky and entry.static:
            hop.set("ok", f"{n.mac} is on its tap {tap.name}, pinned static sticky")
        else:
            v = c.about("fdb_ownership", mac=n.mac, kind="unpinned")
            hop.set("risk", f"{n.mac} is learned on its tap {tap.name} but not pinned: a reflected frame can "
                    "move it to the uplink", c.fix_for(v[0]) if v else f"bridge fdb replace {n.mac} dev "
                    f"{tap.name} master static sticky")
        return
    clone = [o for o in c.snap.inventory.nics if o.mac == n.mac and o.tap == where and o is not n]
    if clone:
        hop.set("risk", f"{n.mac} is on {where}, the tap of VM {clone[0].domain}, which uses the same MAC "
                "(hop 5)", None)
        return
    v = c.about("fdb_ownership", mac=n.mac, kind="poisoned")
    hop.set("broken", f"{n.bridge} has learned the VM's MAC {n.mac} on {where}, not on its tap {tap.name}: "
            f"frames for the VM are sent out {where} (fdb poisoned)",
            (c.fix_for(v[0]) if v else f"bridge fdb replace {n.mac} dev {tap.name} master static sticky")
            + "; the cause is behind the port that taught it (hop 6)")


def hop_duplicates(c: _Ctx, hop: Hop) -> None:
    n = c.nic
    local = [o for o in c.snap.inventory.nics if o.mac == n.mac and o is not n]
    host = [lk.name for lk in c.snap.links.values() if lk.mac == n.mac
            and lk.name not in {o.tap for o in c.snap.inventory.nics}]
    seen = (c.snap.sightings or {}).get((n.bridge, n.mac))
    hop.evidence = {"local_vms": [{"domain": o.domain, "tap": o.tap, "bridge": o.bridge} for o in local],
                    "host_interfaces": host, "probe": seen}
    remote_note = "" if seen is not None else "; remote duplicates not checked (needs --probe)"
    hop.set("ok", f"no other local VM or host interface uses {n.mac}{remote_note}")
    for o in local:
        hop.set("broken", f"VM {o.domain} ({o.tap} on {o.bridge}) uses the same MAC {n.mac}: the bridge "
                f"delivers the VM's frames to whichever sent last",
                "give one of them another MAC (virsh edit; a cloned guest keeps its source's MAC); "
                "unique_mac in enforce mode quarantines the newer one meanwhile")
    for name in host:
        hop.set("broken", f"host interface {name} has the VM's MAC {n.mac}",
                f"change the MAC of {name} or of the VM")
    for v in c.about("remote_duplicate", mac=n.mac):
        hop.set("broken", v.message + " — netmedic cannot fix this from this host", v.evidence["fix"])
    if seen is not None and not seen.get("remote"):
        hop.summary += (f"; the probe saw {seen['reflected']} reflected and no foreign frame with {n.mac} "
                        f"on {', '.join(seen['ports'])}")


def hop_uplink(c: _Ctx, hop: Hop, fdb_hop: Hop) -> None:
    n, br = c.nic, c.bridge
    if br is None:
        hop.set("unknown", "no bridge (hop 3)")
        return
    ups = uplinks(c.snap, n.bridge)
    addrs = c.snap.addresses or {}
    hop.evidence = {"uplinks": [{"name": u.name, "kind": u.kind, "carrier": u.carrier, "up": u.up,
                                 "mtu": u.mtu, "bond_mode": BOND_MODES.get(u.bond_mode, u.bond_mode)
                                 if u.kind == "bond" else None,
                                 "members": members(c.snap, u) if u.kind in ("bond", "team") else [],
                                 "addresses": addrs.get(u.index, [])} for u in ups]}
    routed = c.network is not None and c.network.forward_mode in ("nat", "route", "open", None)
    if not ups:
        if routed:
            hop.set("ok", f"libvirt {c.network.forward_mode or 'isolated'} network: no uplink port, traffic "
                    "is routed by the host (hop 7)")
        else:
            hop.set("risk", f"{n.bridge} has no uplink port: its VMs reach only each other and the host",
                    f"enslave the uplink NIC (or bond) to {n.bridge}")
    else:
        hop.set("ok", ", ".join(f"{u.name} ({u.kind or 'nic'}, carrier {'on' if u.carrier else 'off'})"
                                for u in ups))
        if not any(u.carrier and u.up for u in ups):
            hop.set("broken", f"no uplink of {n.bridge} has carrier: {', '.join(u.name for u in ups)}",
                    "check the cable, the switch port and the NIC driver (`ip link`, `ethtool`)")
    for v in c.about("host_ip_on_port", bridge=n.bridge):
        hop.set("broken", v.message, v.evidence["fix"])
    for v in c.about("uplink_aggregation", bridge=n.bridge):
        hop.set("risk", v.message, REMEDY_TEXT)
    for v in [v for inv in ("bridge_uplink", "kernel_log", "bridge_mac") for v in c.about(inv, bridge=n.bridge)]:
        hop.set(v.severity, v.message, c.fix_for(v))
    for u in ups:
        if u.kind == "team":
            hop.set("risk", f"{u.name} is a team device: its runner is not visible over rtnetlink; a "
                    "roundrobin or broadcast runner reflects the VMs' broadcasts like a balance-rr bond",
                    f"teamdctl {u.name} state; prefer the activebackup or lacp runner")
    entry = fdb_hop.evidence.get("entry") if fdb_hop.verdict == "broken" else None
    if entry and entry.get("port") in {u.name for u in ups}:
        hop.set("risk", f"the VM's MAC was learned on {entry['port']}: something behind it sends frames "
                "with the VM's MAC — a switch reflecting the VM's broadcasts (on a real host: a round-robin "
                "bond, the founding case) or a remote duplicate (hop 5; --probe tells them apart)", REMEDY_TEXT)
    seen = (c.snap.sightings or {}).get((n.bridge, n.mac))
    if seen and seen.get("reflected"):
        hop.set("risk", f"{seen['reflected']} of the VM's own frames came back from {', '.join(seen['ports'])}: "
                "the network behind the uplink reflects its broadcasts", REMEDY_TEXT)


def hop_l3(c: _Ctx, hop: Hop) -> None:
    n, snap = c.nic, c.snap
    br = c.bridge
    gsys = snap.sysctl("net", "bridge", "bridge-nf-call-iptables")
    hop.evidence = {"bridge_nf_call_iptables": {"sysctl": gsys, "bridge": bool(br and br.bridge
                                                                              and br.bridge.nf_call_iptables)},
                    "forward_chains": [{"backend": ch.backend, "policy": ch.policy, "rules": len(ch.rules)}
                                       for ch in snap.forward_chains]}
    hop.set("ok", "bridge netfilter lets the VM's bridged traffic through")
    for v in c.about("bridge_netfilter", bridge=n.bridge):
        hop.set("broken", v.message, c.fix_for(v))
    net = c.network
    if net is None or net.forward_mode not in ("nat", "route"):
        return
    hop.evidence.update({"network": net.name, "forward_mode": net.forward_mode, "subnets": list(net.ips),
                         "ip_forward": snap.sysctl("net", "ipv4", "ip_forward"),
                         "forwarding": {d: snap.sysctl("net", "ipv4", "conf", d, "forwarding")
                                        for d in (net.bridge, net.forward_dev) if d}})
    if net.forward_mode == "nat" and snap.nat_rules is not None:
        from netmedic.policies.nat_network_health import subnets

        hop.evidence["masquerade"] = {s: [r.rule for r in hostfacts.masquerades(snap.nat_rules, s)]
                                      for s in subnets(net)}
    dns = (snap.dnsmasq or {}).get(net.name)
    if dns is not None:
        hop.evidence["dnsmasq"] = {"pid": dns.pid, "alive": dns.alive, "same_netns": dns.same_netns,
                                   "pid_file": dns.pid_file}
    hop.summary = f"{net.forward_mode} network {net.name}: forwarding on" + (
        ", MASQUERADE and dnsmasq in place" if net.forward_mode == "nat" else "")
    for inv in ("ip_forwarding", "nat_network_health"):
        for v in c.about(inv, network=net.name):
            hop.set("broken", v.message, c.fix_for(v))


def hop_ip(c: _Ctx, hop: Hop, leases_dir: str) -> Optional[str]:
    n = c.nic
    found = hostfacts.leases(n.mac, leases_dir)
    tried = [f"dhcp leases ({leases_dir})", "neighbour table"]
    if found:
        ip, path, hostname = found[0]
        hop.evidence = {"address": ip, "source": "dhcp_lease", "file": path, "hostname": hostname,
                        "all": [f[0] for f in found], "sources_tried": tried[:1]}
        hop.set("ok", f"{ip} (DHCP lease in {os.path.basename(path)})")
        return ip
    neigh = hostfacts.neighbours(n.mac)
    if neigh:
        ip, dev = neigh[0]
        hop.evidence = {"address": ip, "source": "neighbour", "device": dev, "all": [x[0] for x in neigh],
                        "sources_tried": tried}
        hop.set("ok", f"{ip} (the host's neighbour table, on {dev})")
        return ip
    hop.evidence = {"address": None, "source": None, "sources_tried": tried + ["guest agent: not queried "
                                                                                "(needs libvirt)"]}
    if c.network is not None and c.network.forward_mode in ("nat", "route") and c.network.ips:
        hop.set("risk", f"no DHCP lease for {n.mac} on network {c.network.name} and no neighbour entry: the "
                "guest got no address (DHCP not answered?) or has not talked to the host",
                "check the guest's network configuration and the network's dnsmasq (hop 7)")
    else:
        hop.set("unknown", "no DHCP lease and no neighbour entry for the VM's MAC on this host (a bridged VM "
                "talking only to the outside leaves none); `virsh domifaddr --source agent` asks the guest")
    return None


# --- probe --------------------------------------------------------------------------------------------
ETH_P_ALL, ETH_P_ARP, PACKET_OUTGOING = 0x0003, 0x0806, 4


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def arp_request(src_mac: str, src_ip: Optional[str], target_ip: str) -> bytes:
    """A broadcast ARP request; with no src_ip an RFC 5227 ARP probe (sender IP 0.0.0.0)."""
    smac = _mac_bytes(src_mac)
    sip = ipaddress.IPv4Address(src_ip or "0.0.0.0").packed
    return (b"\xff" * 6 + smac + struct.pack("!H", ETH_P_ARP)
            + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + smac + sip + b"\0" * 6
            + ipaddress.IPv4Address(target_ip).packed)


def run_probe(snap, nic, vm_ip: Optional[str], seconds: float = 1.5) -> dict:
    """ARP-probe the VM's address from its bridge and capture, meanwhile, the frames carrying the VM's
    MAC on the bridge's uplinks. A frame arriving from an uplink that is a byte copy of one the uplink
    sent out shortly before is a reflection; any other is a remote duplicate's."""
    br = snap.bridge(nic.bridge)
    ups = uplinks(snap, nic.bridge) if br is not None else []
    vm = _mac_bytes(nic.mac)
    socks, result = {}, {"arp": None, "capture": None}
    arp = None
    try:
        for u in ups:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.bind((u.name, ETH_P_ALL))
            s.setblocking(False)
            socks[s] = u.name
        if vm_ip and br is not None and ipaddress.ip_address(vm_ip).version == 4:
            arp = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
            arp.bind((br.name, ETH_P_ARP))
            arp.setblocking(False)
            src_ip = None
            for a in (snap.addresses or {}).get(br.index, []):
                iface = ipaddress.ip_interface(a)
                if iface.version == 4 and ipaddress.ip_address(vm_ip) in iface.network:
                    src_ip = str(iface.ip)
            arp.send(arp_request(br.mac, src_ip, vm_ip))
            result["arp"] = {"target": vm_ip, "sender_ip": src_ip or "0.0.0.0", "from": br.name, "replies": []}
        outgoing: list = []  # (time, bytes)
        counts = {"outgoing": 0, "incoming": 0, "reflected": 0, "remote": 0}
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            rlist = list(socks) + ([arp] if arp is not None else [])
            ready, _, _ = select.select(rlist, [], [], left)
            now = time.monotonic()
            for s in ready:
                try:
                    data, addr = s.recvfrom(65535)
                except BlockingIOError:
                    continue
                if s is arp:
                    if len(data) >= 42 and data[20:22] == b"\x00\x02" and \
                            ipaddress.IPv4Address(data[28:32]) == ipaddress.IPv4Address(vm_ip):
                        mac = data[22:28].hex(":")
                        if mac not in result["arp"]["replies"]:
                            result["arp"]["replies"].append(mac)
                    continue
                if data[6:12] != vm:
                    continue
                if addr[2] == PACKET_OUTGOING:
                    counts["outgoing"] += 1
                    outgoing.append((now, data))
                    continue
                counts["incoming"] += 1
                match = next((i for i, (t, d) in enumerate(outgoing) if d == data and now - t < 1.0), None)
                if match is not None:
                    counts["reflected"] += 1
                    del outgoing[match]
                else:
                    counts["remote"] += 1
        result["capture"] = {"ports": [u.name for u in ups], "seconds": seconds, **counts}
    finally:
        for s in list(socks) + ([arp] if arp is not None else []):
            try:
                s.close()
            except OSError:
                pass
    return result


def hop_probe(c: _Ctx, hop: Hop, probe: Optional[dict], vm_ip: Optional[str]) -> None:
    if probe is None:
        hop.set("unknown", "not run (--probe sends an ARP probe and captures on the uplink)")
        return
    hop.evidence = probe
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


# --- the walk -------------------------------------------------------------------------------------------
def diagnose(domain: str, nic: Optional[str] = None, domain_dir: Optional[str] = None,
             network_dir: Optional[str] = None, policy=None, leases_dir: str = hostfacts.DEFAULT_LEASES_DIR,
             probe: bool = False, probe_seconds: float = 1.5, netlink=None) -> dict:
    from netmedic.policies import config

    policy = policy or config.load(None)
    inv = inventory_mod.load(domain_dir, network_dir)
    dom = inv.domains.get(domain)
    if dom is None:
        bad = [str(e) for e in inv.errors if domain in str(e)]
        raise DiagnoseError(f"domain {domain!r} is not running here (no run-state XML in {domain_dir})"
                            + (f"; {bad[0]}" if bad else ""))
    chosen, others = _select_nic(dom, nic)
    own = netlink is None
    netlink = netlink or nl.Netlink()
    try:
        snap = observe(netlink, inv, {}, needs=ALL_NEEDS)
        hops = [Hop(num, name, title) for num, name, title in HOPS]
        ctx = _Ctx(snap, chosen, policy, {})
        vm_ip = hop_ip(ctx, hops[7], leases_dir)
        probe_result = None
        if probe:
            probe_result = run_probe(snap, chosen, vm_ip, probe_seconds)
            cap = probe_result.get("capture") or {}
            if cap.get("ports"):
                snap.sightings = {(chosen.bridge, chosen.mac): {
                    "ports": cap["ports"], "incoming": cap["incoming"], "reflected": cap["reflected"],
                    "remote": cap["remote"], "seconds": cap["seconds"]}}
        ctx.violations = {name: mod.check(snap, policy.invariants[name].options)
                          for name, mod in INVARIANTS.items()}
        hop_nic(ctx, hops[0], others)
        hop_tap(ctx, hops[1])
        hop_port(ctx, hops[2])
        hop_fdb(ctx, hops[3])
        hop_duplicates(ctx, hops[4])
        hop_uplink(ctx, hops[5], hops[3])
        hop_l3(ctx, hops[6])
        hop_probe(ctx, hops[8], probe_result, vm_ip)
    finally:
        if own:
            netlink.close()
    first = next((h for h in hops if h.verdict == "broken"), None)
    risks = [h for h in hops if h.verdict == "risk"]
    verdict = "broken" if first else ("risk" if risks else "healthy")
    if first:
        headline = f"Most likely cause: hop {first.number} ({first.title}): {first.summary}"
    elif risks:
        headline = ("No broken hop; at risk: " + "; ".join(f"hop {h.number} ({h.title})" for h in risks))
    else:
        headline = "The path looks healthy: no broken hop."
    return {"schema_version": SCHEMA_VERSION, "domain": dom.name, "nic": {
        "mac": chosen.mac, "tap": chosen.tap, "bridge": chosen.bridge, "network": chosen.network},
        "verdict": verdict, "headline": headline,
        "first_broken": None if first is None else {"number": first.number, "name": first.name,
                                                    "title": first.title, "summary": first.summary,
                                                    "fix": first.fix},
        "vm_ip": hops[7].evidence.get("address"), "probe": probe,
        "hops": [h.as_dict() for h in hops], "errors": [str(e) for e in inv.errors]}


# --- rendering ------------------------------------------------------------------------------------------
def _fmt(v) -> str:
    if isinstance(v, bool):
        return _yesno(v)
    if v is None:
        return "-"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def render(report: dict) -> str:
    nic = report["nic"]
    where = f"network {nic['network']}, bridge {nic['bridge']}" if nic["network"] else f"bridge {nic['bridge']}"
    out = [f"netmedic diagnose {report['domain']}: NIC {nic['mac']} on {nic['tap']} ({where})", ""]
    out.append(report["headline"])
    fb = report["first_broken"]
    if fb and fb.get("fix"):
        out.append(f"Fix: {fb['fix']}")
    out.append("")
    for h in report["hops"]:
        out.append(f"{h['number']}. {h['title']:<16} {h['verdict'].upper():<8} {h['summary']}")
        if h["evidence"] and h["verdict"] != "ok":
            out.append(f"   {'evidence:':<24} " + "; ".join(f"{k}={_fmt(v)}" for k, v in h["evidence"].items()
                                                           if v not in (None, [], {})))
        if h["fix"] and h["verdict"] != "ok":
            out.append(f"   {'fix:':<24} {h['fix']}")
    for e in report["errors"]:
        out.append(f"input error: {e}")
    return "\n".join(out)


def exit_code(report: dict) -> int:
    return 1 if report["first_broken"] else 0


def main(args) -> int:
    """The CLI entry (netmedic.cli registers the subcommand)."""
    import json
    import sys

    from netmedic.errors import NetmedicError
    from netmedic.policies import config

    policy = config.load(args.policy).with_mode(getattr(args, "mode", None))
    try:
        report = diagnose(args.domain, nic=args.nic, domain_dir=args.domain_xml_dir,
                          network_dir=args.network_xml_dir, policy=policy, leases_dir=args.leases_dir,
                          probe=args.probe, probe_seconds=args.probe_seconds)
    except (NetmedicError, PermissionError):
        raise  # the CLI's one-line error, exit 2
    except Exception as exc:  # noqa: BLE001 - a bug must not look like a broken hop (exit 1)
        print(f"netmedic: error: diagnose failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(render(report))
    return exit_code(report)
