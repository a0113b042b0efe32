"""libvirt run-state XML for labs: the files libvirt keeps for a running domain (/run/libvirt/qemu/NAME.xml)
and an active network (/run/libvirt/network/NAME.xml), written the way libvirt writes them.
"""
from __future__ import annotations

import ipaddress
import os
import re
import uuid as uuidlib
import xml.etree.ElementTree as ET

from netmedic.lab.validate import _validate_file_name, _validate_mtu, validate_ifname, validate_mac

_LIBVIRT_HEADER = (
    "<!--\n"
    "WARNING: THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE LIKELY TO BE\n"
    "OVERWRITTEN AND LOST. Changes should be made using:\n"
    "  virsh edit {name}\n"
    "or other application using the libvirt API.\n"
    "-->\n\n"
)
_DOMAIN_STATES = {"nostate": "unknown", "running": "booted", "blocked": "unknown", "paused": "user",
                  "shutdown": "user", "shutoff": "shutdown", "crashed": "unknown",
                  "pmsuspended": "unknown"}
_NIC_KEYS = {"mac", "bridge", "tap", "network", "vlan", "link_state", "mtu", "model"}
_FORWARD_MODES = ("nat", "route", "open", "bridge", "private", "vepa", "passthrough", "hostdev")


def _stable_uuid(kind: str, name: str) -> str:
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"netmedic-lab:{kind}:{name}"))


def _write_xml(directory: str, name: str, root: ET.Element) -> str:
    if hasattr(ET, "indent"):  # Python 3.9+; without it the same XML on one line
        ET.indent(root, space="  ")
    body = ET.tostring(root, encoding="unicode")
    safe = name if "--" not in name and not name.endswith("-") else "NAME"
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}.xml")
    tmp = path + ".new"  # libvirt rewrites its files the same way: write .new, then rename
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(_LIBVIRT_HEADER.format(name=safe) + body + "\n")
    os.replace(tmp, path)
    return path


def write_domain_xml(directory: str, name: str, nics: list[dict], uuid: str | None = None,
                     state: str = "running", domain_id: int = 1, pid: int | None = None) -> str:
    """Write ``<directory>/<name>.xml`` as libvirt keeps a running domain's state in
    ``/run/libvirt/qemu/NAME.xml`` (``<domstatus>`` around ``<domain type='kvm' id='N'>``).

    Each nic: ``{"mac", "bridge", "tap"}`` plus optional ``"network"`` (then ``type='network'`` with
    ``<source network='N' bridge='BR'/>``), ``"vlan"`` (tag or list of tags; several make a trunk),
    ``"link_state"`` ("up"/"down"), ``"mtu"``, ``"model"`` (default virtio). ``pid`` is the domstatus
    pid (default: this process, so that a liveness check sees a live process). Returns the path.
    """
    _validate_file_name(name, "domain name")
    if state not in _DOMAIN_STATES:
        raise ValueError(f"domain state {state!r} is not one of {', '.join(_DOMAIN_STATES)}")
    if isinstance(domain_id, bool) or not isinstance(domain_id, int):
        raise ValueError(f"domain_id {domain_id!r} must be an integer")
    uuid = str(uuidlib.UUID(uuid)) if uuid is not None else _stable_uuid("domain", name)
    status = ET.Element("domstatus", state=state, reason=_DOMAIN_STATES[state],
                        pid=str(os.getpid() if pid is None else int(pid)))
    ET.SubElement(status, "monitor", path=f"/var/lib/libvirt/qemu/domain-{domain_id}-{name}/monitor.sock",
                  type="unix")
    dom = ET.SubElement(status, "domain", type="kvm", id=str(domain_id))
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "uuid").text = uuid
    ET.SubElement(dom, "memory", unit="KiB").text = "131072"
    ET.SubElement(dom, "currentMemory", unit="KiB").text = "131072"
    ET.SubElement(dom, "vcpu", placement="static").text = "1"
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc-i440fx-7.2").text = "hvm"
    devices = ET.SubElement(dom, "devices")
    ET.SubElement(devices, "emulator").text = "/usr/bin/qemu-system-x86_64"
    for i, nic in enumerate(nics):
        if not isinstance(nic, dict):
            raise ValueError(f"nic #{i} must be a dict, not {type(nic).__name__}")
        unknown = set(nic) - _NIC_KEYS
        if unknown:
            raise ValueError(f"nic #{i}: unknown key(s) {', '.join(sorted(unknown))}")
        for key in ("mac", "bridge", "tap"):
            if key not in nic:
                raise ValueError(f"nic #{i}: missing key {key!r}")
        network = nic.get("network")
        iface = ET.SubElement(devices, "interface", type="network" if network else "bridge")
        ET.SubElement(iface, "mac", address=validate_mac(nic["mac"], f"nic #{i} mac"))
        bridge = validate_ifname(nic["bridge"], f"nic #{i} bridge")
        if network:
            _validate_file_name(network, f"nic #{i} network")
            ET.SubElement(iface, "source", network=network, bridge=bridge)
        else:
            ET.SubElement(iface, "source", bridge=bridge)
        vlan = nic.get("vlan")
        if vlan is not None:
            tags = [vlan] if isinstance(vlan, int) else list(vlan)
            if not tags or any(isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= 4094
                               for t in tags):
                raise ValueError(f"nic #{i}: vlan {vlan!r} must be a tag or a list of tags in 1..4094")
            vlan_el = ET.SubElement(iface, "vlan", trunk="yes") if len(tags) > 1 \
                else ET.SubElement(iface, "vlan")
            for tag in tags:
                ET.SubElement(vlan_el, "tag", id=str(tag))
        ET.SubElement(iface, "target", dev=validate_ifname(nic["tap"], f"nic #{i} tap"))
        model = nic.get("model", "virtio")
        if not isinstance(model, str) or not re.match(r"^[A-Za-z0-9_-]{1,32}$", model):
            raise ValueError(f"nic #{i}: model {model!r} is not valid")
        ET.SubElement(iface, "model", type=model)
        link_state = nic.get("link_state")
        if link_state is not None:
            if link_state not in ("up", "down"):
                raise ValueError(f"nic #{i}: link_state {link_state!r} must be 'up' or 'down'")
            ET.SubElement(iface, "link", state=link_state)
        if nic.get("mtu") is not None:
            ET.SubElement(iface, "mtu", size=str(_validate_mtu(nic["mtu"])))
        ET.SubElement(iface, "alias", name=f"net{i}")
    return _write_xml(directory, name, status)


def write_network_xml(directory: str, name: str, bridge: str, forward_mode: str | None = "nat",
                      ip: str | None = None, netmask: str | None = None, forward_dev: str | None = None,
                      uuid: str | None = None) -> str:
    """Write ``<directory>/<name>.xml`` as libvirt keeps an active network's state in
    ``/run/libvirt/network/NAME.xml`` (``<networkstatus><network>...``). ``forward_mode`` None makes an
    isolated network (no ``<forward>``). Returns the path."""
    _validate_file_name(name, "network name")
    validate_ifname(bridge, "bridge name")
    if forward_mode is not None and forward_mode not in _FORWARD_MODES:
        raise ValueError(f"forward mode {forward_mode!r} is not one of {', '.join(_FORWARD_MODES)}")
    if forward_dev is not None:
        validate_ifname(forward_dev, "forward dev")
    if netmask is not None and ip is None:
        raise ValueError("netmask given without ip")
    if ip is not None:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ValueError(f"network ip {ip!r} is not an IP address") from None
    if netmask is not None:
        try:
            ipaddress.IPv4Network(f"0.0.0.0/{netmask}")
        except ValueError:
            raise ValueError(f"netmask {netmask!r} is not a dotted IPv4 netmask") from None
    uuid = str(uuidlib.UUID(uuid)) if uuid is not None else _stable_uuid("network", name)
    status = ET.Element("networkstatus")
    ET.SubElement(status, "class_id", bitmap="1-2")
    ET.SubElement(status, "floor", sum="0")
    net = ET.SubElement(status, "network")
    ET.SubElement(net, "name").text = name
    ET.SubElement(net, "uuid").text = uuid
    if forward_mode is not None:
        fwd = ET.SubElement(net, "forward", mode=forward_mode)
        if forward_dev is not None:
            fwd.set("dev", forward_dev)
            ET.SubElement(fwd, "interface", dev=forward_dev)
        if forward_mode == "nat":
            nat = ET.SubElement(fwd, "nat")
            ET.SubElement(nat, "port", start="1024", end="65535")
    if forward_mode in ("bridge", "private", "vepa", "passthrough", "hostdev"):
        ET.SubElement(net, "bridge", name=bridge)  # an existing bridge, not managed by libvirt
    else:
        ET.SubElement(net, "bridge", name=bridge, stp="on", delay="0")
    if ip is not None:
        ip_el = ET.SubElement(net, "ip", address=ip)
        if netmask is not None:
            ip_el.set("netmask", netmask)
    return _write_xml(directory, name, status)
