"""netmedic.lab without namespaces: what a lab refuses (names, MACs, addresses) before touching anything,
and the libvirt run-state XML it writes."""
from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET

import pytest

from netmedic.lab import (
    Topology,
    tap_mac_for,
    validate_ifname,
    validate_mac,
    write_domain_xml,
    write_network_xml,
)


@pytest.mark.parametrize("name", ["", "a" * 16, "a/b", "a b", "a:1", "tab\tx", "-x", ".."])
def test_bad_interface_names_are_refused(name):
    with pytest.raises(ValueError):
        validate_ifname(name)


def test_good_names_and_macs():
    assert validate_ifname("a" * 15) == "a" * 15
    assert validate_mac("52:54:00:AB:CD:EF") == "52:54:00:ab:cd:ef"
    assert tap_mac_for("52:54:00:12:34:56") == "fe:54:00:12:34:56"
    for bad in ("52:54:00:12:34", "01:00:5e:00:00:01", "zz:54:00:12:34:56"):
        with pytest.raises(ValueError):
            validate_mac(bad)


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2")
def test_topology_refuses_bad_input_before_touching_anything():
    with Topology() as t:
        with pytest.raises(ValueError, match="not a namespace of this Topology"):
            t.addr("", "eth0", "203.0.113.5/24")  # the root namespace is never one of ours
        with pytest.raises(ValueError, match="outside the lab networks"):
            t.addr("x", "eth0", "192.0.2.5/24")
        with pytest.raises(ValueError, match="outside the lab networks"):
            t.route("x", "default", "10.0.0.1")
        with pytest.raises(ValueError, match="1..15 characters"):
            t.veth("x", "averyveryverylongname", "y", "b")
        with pytest.raises(ValueError):
            t.netns("bad/name")


def test_domain_xml_has_libvirts_run_state_shape(tmp_path):
    path = write_domain_xml(str(tmp_path), "web&1", [
        {"mac": "52:54:00:00:00:01", "bridge": "br0", "tap": "vnet0"},
        {"mac": "52:54:00:00:00:02", "bridge": "virbr0", "tap": "vnet1", "network": "default",
         "vlan": [10, 20], "link_state": "down", "mtu": 1400},
    ], domain_id=7)
    assert path == str(tmp_path / "web&1.xml")
    root = ET.parse(path).getroot()
    assert root.tag == "domstatus" and root.get("state") == "running" and root.get("reason") == "booted"
    dom = root.find("domain")
    assert (dom.get("type"), dom.get("id"), dom.findtext("name")) == ("kvm", "7", "web&1")
    first, second = dom.findall("devices/interface")
    assert first.get("type") == "bridge" and first.find("alias").get("name") == "net0"
    assert second.get("type") == "network"
    assert second.find("source").attrib == {"network": "default", "bridge": "virbr0"}
    assert second.find("vlan").get("trunk") == "yes"
    assert [t.get("id") for t in second.findall("vlan/tag")] == ["10", "20"]
    assert second.find("link").get("state") == "down" and second.find("mtu").get("size") == "1400"
    assert second.find("target").get("dev") == "vnet1"
    with pytest.raises(ValueError, match="unknown key"):
        write_domain_xml(str(tmp_path), "x", [{"mac": "52:54:00:00:00:01", "bridge": "b", "tap": "t",
                                                "tpa": "oops"}])
    with pytest.raises(ValueError):
        write_domain_xml(str(tmp_path), "../escape", [])


def test_network_xml_has_libvirts_run_state_shape(tmp_path):
    path = write_network_xml(str(tmp_path), "default", "virbr0", ip="198.51.100.1", netmask="255.255.255.0")
    net = ET.parse(path).getroot().find("network")
    assert net.findtext("name") == "default"
    assert net.find("forward").get("mode") == "nat"
    assert net.find("bridge").attrib == {"name": "virbr0", "stp": "on", "delay": "0"}
    assert net.find("ip").attrib == {"address": "198.51.100.1", "netmask": "255.255.255.0"}
    isolated = ET.parse(write_network_xml(str(tmp_path), "iso", "virbr1", forward_mode=None)).getroot()
    assert isolated.find("network/forward") is None
    routed = ET.parse(write_network_xml(str(tmp_path), "r", "virbr2", forward_mode="route",
                                        forward_dev="uplink0")).getroot()
    assert routed.find("network/forward").get("dev") == "uplink0"
