"""Builders for captured snapshots, so that unit tests read like data.

    snap = snapshot(
        links=[bridge("br0", 2), uplink("bond0", 3, master=2), tap("vnet0", 10, master=2)],
        nics=[nic("vm1", MAC1, "br0", "vnet0")],
        fdb={("br0", MAC1): fdb(MAC1, port_index=3, bridge_index=2)},  # learned on the uplink
    )

Nothing here talks to the host: these are the plain dataclasses netmedic.nl / netmedic.inventory build
from the kernel and libvirt, filled in by hand. Also writes libvirt-like XML files for the tests that
go through netmedic.inventory.load().
"""
from __future__ import annotations

import os
from typing import Iterable, Optional
from xml.sax.saxutils import quoteattr

from netmedic import nl
from netmedic.inventory import Domain, Inventory, Network, VmNic
from netmedic.observe import Snapshot
from netmedic.ops import ForwardChain

MAC1 = "52:54:00:00:00:01"
MAC2 = "52:54:00:00:00:02"
MAC3 = "52:54:00:00:00:03"

FORWARDING = nl.BR_STATE_FORWARDING
BLOCKING = nl.BR_STATE_BLOCKING
DISABLED = nl.BR_STATE_DISABLED
LEARNING = nl.BR_STATE_LEARNING
LISTENING = nl.BR_STATE_LISTENING


# --- links ------------------------------------------------------------------------------------
def port_info(state: int = FORWARDING, learning: bool = True, flood: bool = True) -> nl.PortInfo:
    return nl.PortInfo(state=state, learning=learning, flood=flood)


def link(name: str, index: int, kind: Optional[str] = None, master: Optional[int] = None, mac: str = "",
         up: bool = True, port: Optional[nl.PortInfo] = None, mtu: int = 1500,
         bond_mode: Optional[int] = None) -> nl.LinkInfo:
    """Any link. `port` only for a port of a bridge (a bond's slave has a master but no bridge port)."""
    return nl.LinkInfo(index=index, name=name, kind=kind, mac=mac or _mac_for(index), mtu=mtu, up=up,
                       carrier=up, operstate="UP" if up else "DOWN", master=master, bridge=None, port=port,
                       bond_mode=bond_mode)


def uplink(name: str, index: int, master: int, kind: Optional[str] = "bond", **kw) -> nl.LinkInfo:
    """A non-VM port of a bridge (the uplink bond, a veth), forwarding."""
    kw.setdefault("port", port_info(FORWARDING))
    return link(name, index, kind=kind, master=master, **kw)


def bridge(name: str, index: int, stp: int = 0, nf_call_iptables: bool = False, up: bool = True,
           mac: str = "", vlan_filtering: bool = False) -> nl.LinkInfo:
    info = nl.BridgeInfo(stp_state=stp, nf_call_iptables=nf_call_iptables, vlan_filtering=vlan_filtering,
                         forward_delay=1500, ageing_time=30000)
    return nl.LinkInfo(index=index, name=name, kind="bridge", mac=mac or _mac_for(index), mtu=1500, up=up,
                       carrier=up, operstate="UP" if up else "DOWN", master=None, bridge=info)


def tap(name: str, index: int, master: Optional[int] = None, state: Optional[int] = None,
        learning: bool = True, flood: bool = True, up: bool = True, mac: str = "") -> nl.LinkInfo:
    """A VM's tap (kind 'tun', MAC fe:54:..., as libvirt makes them); a port of `master` if given."""
    port = None
    if master is not None:
        if state is None:
            state = FORWARDING if up else DISABLED
        port = port_info(state, learning, flood)
    return link(name, index, kind="tun", master=master, mac=mac or f"fe:54:00:00:{index >> 8:02x}:{index & 255:02x}",
                up=up, port=port)


def _mac_for(index: int) -> str:
    return f"02:00:00:00:{index >> 8:02x}:{index & 255:02x}"


# --- fdb ------------------------------------------------------------------------------------
def fdb(mac: str, port_index: int, bridge_index: Optional[int] = None, static: bool = False,
        sticky: bool = False, local: bool = False, vlan: Optional[int] = None) -> nl.FdbInfo:
    """A master fdb entry: learned (dynamic) by default; `static`/`sticky`/`local` as `bridge fdb` says."""
    if local:
        state = nl.NUD_PERMANENT
    elif static:
        state = nl.NUD_NOARP
    else:
        state = nl.NUD_REACHABLE
    flags = nl.NTF_MASTER | (nl.NTF_STICKY if sticky else 0)
    return nl.FdbInfo(mac=mac, port_index=port_index, bridge_index=bridge_index, vlan=vlan, state=state,
                      flags=flags)


def pinned(mac: str, port_index: int, bridge_index: Optional[int] = None) -> nl.FdbInfo:
    """What netmedic's fdb_pin makes: static sticky on the port."""
    return fdb(mac, port_index, bridge_index, static=True, sticky=True)


# --- inventory ------------------------------------------------------------------------------
def nic(domain: str, mac: str, bridge: Optional[str], tap: Optional[str], type: str = "bridge",
        network: Optional[str] = None, link_up: bool = True, vlans: tuple = (),
        uuid: Optional[str] = None) -> VmNic:
    return VmNic(domain=domain, uuid=uuid or f"uuid-{domain}", mac=mac, type=type, bridge=bridge, tap=tap,
                 network=network, model="virtio", vlans=tuple(vlans), link_up=link_up)


def network(name: str, bridge: Optional[str], forward_mode: Optional[str] = "nat",
            forward_dev: Optional[str] = None, ips: tuple = ()) -> Network:
    return Network(name=name, bridge=bridge, forward_mode=forward_mode, forward_dev=forward_dev, ips=tuple(ips))


def inventory(nics: Iterable[VmNic] = (), networks: Iterable[Network] = ()) -> Inventory:
    """Group the NICs into domains by name (in order)."""
    by_domain: dict = {}
    for n in nics:
        by_domain.setdefault(n.domain, []).append(n)
    domains = {name: Domain(name=name, uuid=ns[0].uuid, nics=tuple(ns)) for name, ns in by_domain.items()}
    return Inventory(domains=domains, networks={n.name: n for n in networks}, errors=[])


# --- firewall -------------------------------------------------------------------------------
def chain(policy: str = "DROP", rules: Iterable[str] = (), backend: str = "nft") -> ForwardChain:
    return ForwardChain(backend=backend, policy=policy, rules=tuple(rules))


# --- the snapshot ---------------------------------------------------------------------------
def sysctls(ip_forward: Optional[str] = "1", bridge_nf: Optional[str] = "0", **per_dev: str) -> dict:
    """{'net/ipv4/ip_forward': .., 'net/bridge/bridge-nf-call-iptables': .., per-device forwarding}.

    per_dev: virbr0="0" -> 'net/ipv4/conf/virbr0/forwarding': '0'."""
    out = {"net/ipv4/ip_forward": ip_forward, "net/bridge/bridge-nf-call-iptables": bridge_nf}
    for dev, value in per_dev.items():
        out[f"net/ipv4/conf/{dev}/forwarding"] = value
    return out


def snapshot(links: Iterable[nl.LinkInfo] = (), nics: Iterable[VmNic] = (), networks: Iterable[Network] = (),
             fdb: Optional[dict] = None, sysctl: Optional[dict] = None, chains: Iterable[ForwardChain] = (),
             records: Optional[dict] = None, bridges_observed: Optional[Iterable[str]] = None) -> Snapshot:
    return Snapshot(links={lk.name: lk for lk in links}, inventory=inventory(nics, networks),
                    fdb=dict(fdb or {}), sysctls=dict(sysctls() if sysctl is None else sysctl),
                    forward_chains=list(chains), records=dict(records or {}),
                    bridges_observed=frozenset(bridges_observed) if bridges_observed is not None else None)


def seed_links(tap_master: Optional[int] = 2, **tap_kw) -> list:
    """The founding case's host: br0 (2) with the round-robin bond0 (3) as uplink, and vnet0 (10)."""
    return [bridge("br0", 2), uplink("bond0", 3, master=2, bond_mode=0),
            link("eth0", 4, kind=None, master=3), tap("vnet0", 10, master=tap_master, **tap_kw)]


# --- libvirt XML files ------------------------------------------------------------------------
def interface_xml(mac: str, bridge: Optional[str] = None, tap: Optional[str] = None, type: str = "bridge",
                  network: Optional[str] = None, vlans: Iterable[int] = (), link_state: Optional[str] = None,
                  model: str = "virtio") -> str:
    src = " ".join(f"{k}={quoteattr(v)}" for k, v in (("network", network), ("bridge", bridge)) if v)
    lines = [f"      <interface type={quoteattr(type)}>", f"        <mac address={quoteattr(mac)}/>"]
    if src:
        lines.append(f"        <source {src}/>")
    vlans = list(vlans)
    if vlans:
        lines.append("        <vlan" + (" trunk='yes'" if len(vlans) > 1 else "") + ">")
        lines += [f"          <tag id='{v}'/>" for v in vlans]
        lines.append("        </vlan>")
    if tap:
        lines.append(f"        <target dev={quoteattr(tap)}/>")
    lines.append(f"        <model type={quoteattr(model)}/>")
    if link_state:
        lines.append(f"        <link state={quoteattr(link_state)}/>")
    lines.append("      </interface>")
    return "\n".join(lines)


def domain_xml(name: str, interfaces: Iterable[str] = (), uuid: Optional[str] = None, status: bool = True) -> str:
    """Run-state XML (`<domstatus><domain>..`, as /run/libvirt/qemu/NAME.xml) or a bare `<domain>`."""
    body = "\n".join([
        "  <domain type='kvm' id='1'>",
        f"    <name>{name}</name>",
        f"    <uuid>{uuid or 'c7a5fdbd-cdaf-9455-926a-d65c16db1809'}</uuid>",
        "    <devices>",
        "      <emulator>/usr/bin/qemu-system-x86_64</emulator>",
        *interfaces,
        "    </devices>",
        "  </domain>",
    ])
    if status:
        return f"<!-- run state -->\n<domstatus state='running' reason='booted' pid='4242'>\n{body}\n</domstatus>\n"
    return body.replace("\n  ", "\n").lstrip() + "\n"


def network_xml(name: str, bridge: Optional[str], forward_mode: Optional[str] = "nat",
                forward_dev: Optional[str] = None, ip: str = "<ip address='192.168.122.1' netmask='255.255.255.0'/>",
                status: bool = False) -> str:
    lines = ["<network>", f"  <name>{name}</name>"]
    if forward_mode:
        dev = f" dev={quoteattr(forward_dev)}" if forward_dev else ""
        lines.append(f"  <forward mode={quoteattr(forward_mode)}{dev}/>")
    if bridge:
        lines.append(f"  <bridge name={quoteattr(bridge)} stp='on' delay='0'/>")
    if ip:
        lines.append(f"  {ip}")
    lines.append("</network>")
    text = "\n".join(lines) + "\n"
    if status:
        text = "<networkstatus>\n" + text + "</networkstatus>\n"
    return text


def write(directory, filename: str, text) -> str:
    os.makedirs(str(directory), exist_ok=True)
    path = os.path.join(str(directory), filename)
    if isinstance(text, bytes):
        with open(path, "wb") as fh:
            fh.write(text)
    else:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    return path


def check_invariant(name: str, snap: Snapshot, **options) -> list:
    """The registered invariant `name` checked on `snap` with its default options (overridden by `options`)."""
    from netmedic.policies import INVARIANTS

    inv = INVARIANTS[name]
    opts = {k: o.default for k, o in inv.OPTIONS.items()}
    opts.update(options)
    return inv.check(snap, opts)


def plan_remedy(violation, snap: Snapshot):
    """(plan, why) of the healer the default policy binds to `violation`."""
    from netmedic.healers import HEALERS
    from netmedic.policies import healer_for

    return HEALERS[healer_for(violation, {})].plan(violation, snap, {})


def pyroute2_events(datagram: bytes) -> list:
    """The reference: pyroute2's parse of the same bytes, reduced with the Listener's rules."""
    from pyroute2.netlink.rtnl.marshal import MarshalRtnl

    out = []
    for msg in MarshalRtnl().parse(datagram):
        mtype = msg["header"]["type"]
        if mtype in (28, 29) and msg["family"] == 7:  # RTM_NEWNEIGH/DELNEIGH, AF_BRIDGE
            mac = msg.get_attr("NDA_LLADDR")
            out.append(nl.Event("fdb", "new" if mtype == 28 else "del", msg["ifindex"], None,
                                msg.get_attr("NDA_MASTER") or None, mac.lower() if mac else None))
        elif mtype in (16, 17) and (msg["family"] == 0 or (msg["family"] == 7 and mtype == 16)):
            mac = msg.get_attr("IFLA_ADDRESS")
            out.append(nl.Event("link", "new" if mtype == 16 else "del", msg["index"],
                                msg.get_attr("IFLA_IFNAME"), msg.get_attr("IFLA_MASTER") or None,
                                mac.lower() if mac else None))
    return out
