"""libvirt run-state XML → the VM NICs netmedic must keep connected. Hostile or malformed files are
refused with one line naming the file, the line and the field, and never stop the other files from
loading. No root, no kernel (except the last test, which runs the CLI and reads netlink)."""
from __future__ import annotations

import os

import pytest
from snapshots import MAC1, MAC2, domain_xml, interface_xml, network_xml, write

from netmedic import inventory
from netmedic.errors import InventoryError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_domain_text(tmp_path, text, networks=None, name="vm.xml"):
    return inventory.parse_domain(write(tmp_path, name, text), networks)


def refused(tmp_path, text, name="vm.xml", parse=inventory.parse_domain) -> tuple:
    path = write(tmp_path, name, text)
    with pytest.raises(InventoryError) as info:
        parse(path)
    msg = str(info.value)
    assert "\n" not in msg
    return path, info.value


# --- domains ------------------------------------------------------------------------------------
def test_run_state_domain_with_bridge_interface(tmp_path):
    dom = parse_domain_text(tmp_path, domain_xml("web1", [interface_xml(MAC1, bridge="br0", tap="vnet0")],
                                                 uuid="11111111-2222-3333-4444-555555555555"))
    assert dom.name == "web1" and dom.uuid == "11111111-2222-3333-4444-555555555555"
    assert dom.source_file == str(tmp_path / "vm.xml")
    (nic,) = dom.nics
    assert (nic.domain, nic.mac, nic.type, nic.bridge, nic.tap, nic.network) == \
        ("web1", MAC1, "bridge", "br0", "vnet0", None)
    assert nic.model == "virtio"
    assert nic.vlans == () and nic.link_up is True
    assert nic.key == f"web1/{MAC1}"


def test_bare_domain_document(tmp_path):
    text = domain_xml("db1", [interface_xml(MAC1, bridge="br1", tap="vnet3")], status=False)
    assert text.startswith("<domain")
    dom = parse_domain_text(tmp_path, text)
    assert dom.name == "db1" and [n.tap for n in dom.nics] == ["vnet3"]


def test_network_interface_takes_the_bridge_from_the_network_xml(tmp_path):
    nets = {"default": inventory.Network("default", "virbr0", "nat", None)}
    dom = parse_domain_text(tmp_path, domain_xml("vm", [interface_xml(MAC1, type="network", network="default",
                                                                      tap="vnet1")]), networks=nets)
    (nic,) = dom.nics
    assert (nic.type, nic.network, nic.bridge) == ("network", "default", "virbr0")


def test_network_interface_prefers_the_run_state_source_bridge(tmp_path):
    # libvirt's live XML records the bridge it plugged the tap into: that is the truth for this VM.
    nets = {"default": inventory.Network("default", "virbr0", "nat", None)}
    dom = parse_domain_text(tmp_path, domain_xml("vm", [interface_xml(MAC1, type="network", network="default",
                                                                      bridge="virbr9", tap="vnet1")]),
                            networks=nets)
    assert dom.nics[0].bridge == "virbr9"


def test_network_interface_of_an_unknown_network_has_no_bridge(tmp_path):
    dom = parse_domain_text(tmp_path, domain_xml("vm", [interface_xml(MAC1, type="network", network="lab",
                                                                      tap="vnet1")]), networks={})
    assert dom.nics[0].bridge is None and dom.nics[0].network == "lab"


def test_non_bridged_interfaces_are_ignored(tmp_path):
    ifaces = [interface_xml(MAC1, type="user"), interface_xml("52:54:00:00:00:09", type="direct", tap="macvtap0"),
              interface_xml(MAC2, bridge="br0", tap="vnet7")]
    dom = parse_domain_text(tmp_path, domain_xml("vm", ifaces))
    assert [n.mac for n in dom.nics] == [MAC2]


def test_vlan_tags_and_link_state_down(tmp_path):
    dom = parse_domain_text(tmp_path, domain_xml("vm", [
        interface_xml(MAC1, bridge="br0", tap="vnet0", vlans=[42]),
        interface_xml(MAC2, bridge="br0", tap="vnet1", vlans=[10, 20, 4094], link_state="down"),
    ]))
    a, b = dom.nics
    assert a.vlans == (42,) and a.link_up is True
    assert b.vlans == (10, 20, 4094) and b.link_up is False


@pytest.mark.parametrize("vid", ["0", "4095", "ten", ""])
def test_invalid_vlan_tag_names_the_field(tmp_path, vid):
    text = domain_xml("vm", [interface_xml(MAC1, bridge="br0", tap="vnet0")]).replace(
        "<target", f"<vlan><tag id='{vid}'/></vlan>\n        <target")
    path, err = refused(tmp_path, text)
    assert err.field == "devices/interface[0]/vlan/tag/@id"
    assert str(err).startswith(f"{path}:")


@pytest.mark.parametrize("raw", ["52:54:00:AB:CD:EF", "52-54-00-ab-cd-ef", " 52:54:00:Ab:cD:eF "])
def test_mac_canonicalisation(tmp_path, raw):
    dom = parse_domain_text(tmp_path, domain_xml("vm", [interface_xml(raw, bridge="br0", tap="vnet0")]))
    assert dom.nics[0].mac == "52:54:00:ab:cd:ef"
    assert inventory.canonical_mac(raw) == "52:54:00:ab:cd:ef"


@pytest.mark.parametrize("mac", ["52:54:00:00:00:0g", "52:54:00:00:00", "52:54:00:00:00:00:01", "525400000001",
                                 "52:54:00:00:00:1"])
def test_invalid_mac_is_an_error_naming_the_field(tmp_path, mac):
    text = domain_xml("vm", [interface_xml(MAC1, bridge="br0", tap="vnet0"),
                             interface_xml(mac, bridge="br0", tap="vnet1")])
    path, err = refused(tmp_path, text)
    assert err.field == "devices/interface[1]/mac/@address"
    line = next(i for i, t in enumerate(text.splitlines(), 1) if f"'{mac}'" in t or f'"{mac}"' in t)
    assert str(err).startswith(f"{path}:{line}: field 'devices/interface[1]/mac/@address': ")
    assert repr(mac) in str(err)


def test_missing_mac_names_the_line_of_its_interface(tmp_path):
    text = domain_xml("vm", [interface_xml(MAC1, bridge="br0", tap="vnet0"),
                             interface_xml(MAC2, bridge="br0", tap="vnet1")])
    text = text.replace(f"<mac address='{MAC2}'/>", "<mac/>").replace(f'<mac address="{MAC2}"/>', "<mac/>")
    path, err = refused(tmp_path, text)
    second = [i for i, t in enumerate(text.splitlines(), 1) if "<interface" in t][1]
    assert (err.line, err.field) == (second, "devices/interface[1]/mac")


@pytest.mark.parametrize("dev", ["../../x", "a" * 16, "eth 0", "vnet0:1", "vnet/0", ".", ".."])
def test_invalid_target_dev_is_an_error_naming_the_field(tmp_path, dev):
    text = domain_xml("vm", [interface_xml(MAC1, bridge="br0", tap=dev)])
    path, err = refused(tmp_path, text)
    assert err.field == "devices/interface[0]/target/@dev"
    assert f"not a valid interface name: {dev!r}" in str(err)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "<target" in t)
    assert err.line == line and str(err).startswith(f"{path}:{line}: ")


def test_invalid_source_bridge_is_an_error_naming_the_field(tmp_path):
    _path, err = refused(tmp_path, domain_xml("vm", [interface_xml(MAC1, bridge="br0;reboot", tap="vnet0")])
                         .replace("br0;reboot", "br 0"))
    assert err.field == "devices/interface[0]/source/@bridge"


def test_valid_ifname_follows_the_kernel_rules():
    assert inventory.valid_ifname("vnet0") and inventory.valid_ifname("a" * 15)
    assert inventory.valid_ifname("br-lan.100")
    for bad in ("", ".", "..", "a" * 16, "eth 0", "vnet0:1", "a/b", "tab\tx", "nl\nx", "nul\x00x"):
        assert not inventory.valid_ifname(bad), bad


def test_domain_without_a_name_is_refused(tmp_path):
    _path, err = refused(tmp_path, "<domain type='kvm'><devices/></domain>\n")
    assert err.field == "domain/name"


def test_other_root_element_is_refused(tmp_path):
    path, err = refused(tmp_path, "<network><name>x</name></network>\n")
    assert "neither <domstatus> nor <domain>" in str(err) and str(err).startswith(path)


def test_domstatus_without_a_domain_is_refused(tmp_path):
    _path, err = refused(tmp_path, "<domstatus state='running'/>\n")
    assert "neither" in str(err)


# --- hostile and malformed input ----------------------------------------------------------------
BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<domstatus><domain><name>&lol9;</name></domain></domstatus>
"""

XXE = """<?xml version="1.0"?>
<!-- looks like a run-state file -->
<!DOCTYPE domain [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<domain><name>&secret;</name></domain>
"""

ENTITY_ONLY = """<?xml version="1.0"?>
<domain>
<!ENTITY x "y">
<name>vm</name></domain>
"""


@pytest.mark.parametrize("text,line", [(BILLION_LAUGHS, 2), (XXE, 3), (ENTITY_ONLY, 3)],
                         ids=["billion-laughs", "xxe", "entity"])
def test_entity_declarations_are_refused_naming_file_and_line(tmp_path, text, line):
    path, err = refused(tmp_path, text)
    assert str(err) == f"{path}:{line}: DOCTYPE/ENTITY declarations are refused (entity expansion)"
    assert "root:" not in str(err) and "lollol" not in str(err)


@pytest.mark.parametrize("declared,encoding,bom", [("UTF-16", "utf-16", b""), ("UTF-16", "utf-16-be", b"\xfe\xff"),
                                                   ("UTF-16BE", "utf-16-be", b"")], ids=["le-bom", "be-bom", "be"])
@pytest.mark.parametrize("text,line", [(BILLION_LAUGHS, 2), (XXE, 3)], ids=["billion-laughs", "xxe"])
def test_entity_declarations_in_other_encodings_are_refused(tmp_path, text, line, declared, encoding, bom):
    # A byte scan for '<!DOCTYPE' does not see UTF-16: the refusal must not depend on the encoding.
    data = bom + text.replace('<?xml version="1.0"?>', f'<?xml version="1.0" encoding="{declared}"?>').encode(encoding)
    path, err = refused(tmp_path, data)
    assert str(err) == f"{path}:{line}: DOCTYPE/ENTITY declarations are refused (entity expansion)"


@pytest.mark.parametrize("data", [
    '<?xml version="1.0" encoding="UTF-32"?>\n<domain><name>vm</name></domain>\n'.encode("utf-32"),
    b'<?xml version="1.0" encoding="UTF-32"?>\n<domain><name>vm</name></domain>\n',
    b'<?xml version="1.0" encoding="x-no-such-charset"?>\n<domain><name>vm</name></domain>\n',
], ids=["utf-32", "declares-utf-32", "unknown-charset"])
def test_unreadable_encodings_are_input_errors(tmp_path, data):
    # ElementTree raises ValueError/LookupError for these: it must come out as one InventoryError.
    path, err = refused(tmp_path, data)
    assert str(err).startswith(f"{path}:1: malformed XML")


def test_malformed_xml_names_file_and_line(tmp_path):
    text = "<domstatus>\n  <domain>\n    <name>vm</name>\n    <devices>\n  </domain>\n</domstatus>\n"
    path, err = refused(tmp_path, text)
    assert str(err).startswith(f"{path}:5: malformed XML: ")
    assert err.line == 5


def test_empty_and_binary_files_are_malformed(tmp_path):
    path, err = refused(tmp_path, "", name="empty.xml")
    assert str(err).startswith(f"{path}:") and "malformed XML" in str(err)
    path, err = refused(tmp_path, b"\x00\xff\xfe garbage", name="bin.xml")
    assert "malformed XML" in str(err)


def test_oversized_file_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(inventory, "MAX_XML_BYTES", 1024)
    text = domain_xml("vm", [interface_xml(MAC1, bridge="br0", tap="vnet0")])
    text = text.replace("<!-- run state -->", "<!-- " + "x" * 2000 + " -->")
    path, err = refused(tmp_path, text)
    assert str(err) == f"{path}: larger than 1024 bytes, refused"


def test_unreadable_path_is_an_error_not_an_exception(tmp_path):
    os.mkdir(tmp_path / "dir.xml")
    with pytest.raises(InventoryError) as info:
        inventory.parse_domain(str(tmp_path / "dir.xml"))
    assert str(info.value).startswith(f"{tmp_path / 'dir.xml'}: cannot read: ")


# --- load(): one bad file does not hide the others ---------------------------------------------------
def test_load_collects_errors_and_keeps_the_good_files(tmp_path):
    ddir, ndir = tmp_path / "qemu", tmp_path / "network"
    write(ndir, "default.xml", network_xml("default", "virbr0"))
    write(ndir, "broken.xml", "<network><name>x</name>\n<bridge name='a b'/></network>\n")
    write(ddir, "a-good.xml", domain_xml("good1", [interface_xml(MAC1, type="network", network="default",
                                                                 tap="vnet0")]))
    write(ddir, "b-laughs.xml", BILLION_LAUGHS)
    write(ddir, "c-bad-tap.xml", domain_xml("bad", [interface_xml(MAC2, bridge="br0", tap="../../x")]))
    write(ddir, "d-good.xml", domain_xml("good2", [interface_xml(MAC2, bridge="br0", tap="vnet1")]))
    write(ddir, "e-dup.xml", domain_xml("good2", [interface_xml("52:54:00:00:00:33", bridge="br0", tap="vnet2")]))
    write(ddir, "notes.txt", "not XML, not read")
    write(ddir, ".hidden.xml", "<<<")

    inv = inventory.load(str(ddir), str(ndir))
    assert sorted(inv.domains) == ["good1", "good2"]
    assert list(inv.networks) == ["default"]
    assert {n.mac: n.bridge for n in inv.nics} == {MAC1: "virbr0", MAC2: "br0"}
    sources = sorted(os.path.basename(e.source) for e in inv.errors)
    assert sources == ["b-laughs.xml", "broken.xml", "c-bad-tap.xml", "e-dup.xml"]
    assert all(isinstance(e, InventoryError) and "\n" not in str(e) for e in inv.errors)
    dup = next(e for e in inv.errors if e.source.endswith("e-dup.xml"))
    assert "also defined in" in str(dup) and dup.field == "domain/name"


def test_domain_xml_given_as_data_is_checked_the_same(tmp_path):
    # the libvirt hook gets the domain XML on stdin: the same refusals, named after what it was given as
    with pytest.raises(InventoryError) as info:
        inventory.parse_domain("<stdin>", data=XXE.encode())
    assert str(info.value) == "<stdin>:3: DOCTYPE/ENTITY declarations are refused (entity expansion)"
    dom = inventory.parse_domain("<stdin>", data=domain_xml("vm", [interface_xml(MAC1, bridge="br0",
                                                                                  tap="vnet0")]).encode())
    assert dom.name == "vm" and dom.nics[0].tap == "vnet0"


def test_errors_in_xml_given_as_data_name_lines_of_that_data(tmp_path):
    # The hook may name the run-state path while passing the XML on stdin: lines come from the data,
    # not from a stale file at that path.
    stale = write(tmp_path, "vm.xml", "\n" * 40 + domain_xml("vm", [interface_xml(MAC1, bridge="br0", tap="vnet0")]))
    text = domain_xml("vm", [interface_xml(MAC1, bridge="br0", tap="vnet0"),
                             interface_xml(MAC2, bridge="br0", tap="vnet0:1")])
    with pytest.raises(InventoryError) as info:
        inventory.parse_domain(stale, data=text.encode())
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "vnet0:1" in t)
    assert info.value.line == line and info.value.field == "devices/interface[1]/target/@dev"


def test_load_extra_domains_replace_files_of_the_same_name(tmp_path):
    ddir = tmp_path / "qemu"
    write(ddir, "vm.xml", domain_xml("vm", [interface_xml(MAC1, bridge="br0", tap="vnet0")]))
    write(ddir, "other.xml", domain_xml("other", [interface_xml(MAC2, bridge="br0", tap="vnet1")]))
    extra = inventory.parse_domain("<stdin>", data=domain_xml("vm", [interface_xml(
        "52:54:00:00:00:33", bridge="br1", tap="vnet5")]).encode())
    inv = inventory.load(str(ddir), None, [extra])
    assert sorted(inv.domains) == ["other", "vm"]
    assert [(n.domain, n.bridge, n.tap) for n in inv.domains["vm"].nics] == [("vm", "br1", "vnet5")]
    assert inv.errors == []


def test_load_missing_directories_is_an_empty_inventory(tmp_path):
    inv = inventory.load(str(tmp_path / "none"), None)
    assert (inv.domains, inv.networks, inv.errors, inv.nics) == ({}, {}, [], [])


# --- networks -------------------------------------------------------------------------------------
def test_network_xml_with_netmask(tmp_path):
    net = inventory.parse_network(write(tmp_path, "default.xml", network_xml("default", "virbr0",
                                                                             forward_dev="eth0")))
    assert (net.name, net.bridge, net.forward_mode, net.forward_dev) == ("default", "virbr0", "nat", "eth0")
    assert net.ips == ("192.168.122.1/24",)


@pytest.mark.parametrize("ip,expected", [
    ("<ip address='10.0.0.1' netmask='255.255.0.0'/>", ("10.0.0.1/16",)),
    ("<ip address='10.0.0.1' netmask='255.255.255.252'/>", ("10.0.0.1/30",)),
    ("<ip address='10.0.0.1' netmask='0.0.0.0'/>", ("10.0.0.1/0",)),
    ("<ip address='10.0.0.1' prefix='8'/>", ("10.0.0.1/8",)),
    ("<ip family='ipv6' address='fd00::1' prefix='64'/>", ("fd00::1/64",)),
    ("<ip address='10.0.0.1'/>", ()),
])
def test_network_ip_prefixes(tmp_path, ip, expected):
    net = inventory.parse_network(write(tmp_path, "n.xml", network_xml("n", "virbr1", ip=ip)))
    assert net.ips == expected


@pytest.mark.parametrize("ip", ["<ip address='10.0.0.1' netmask='255.0.255.0'/>",
                                "<ip address='10.0.0.1' netmask='255.255.255.256'/>",
                                "<ip address='10.0.0.1' prefix='abc'/>",
                                "<ip address='10.0.0.999' prefix='24'/>"])
def test_invalid_network_ip_names_the_field(tmp_path, ip):
    path, err = refused(tmp_path, network_xml("n", "virbr1", ip=ip), name="n.xml", parse=inventory.parse_network)
    assert err.field == "network/ip[0]"
    assert str(err).startswith(f"{path}:5: field 'network/ip[0]': not a valid address/prefix: ")


@pytest.mark.parametrize("mode,expected", [("nat", "nat"), ("route", "route"), ("open", "open"),
                                           (None, None)])
def test_network_forward_modes(tmp_path, mode, expected):
    net = inventory.parse_network(write(tmp_path, "n.xml", network_xml("n", "virbr1", forward_mode=mode)))
    assert net.forward_mode == expected


def test_forward_without_mode_is_nat(tmp_path):
    text = network_xml("n", "virbr1").replace("<forward mode='nat'/>", "<forward/>")
    assert inventory.parse_network(write(tmp_path, "n.xml", text)).forward_mode == "nat"


def test_network_status_document(tmp_path):
    net = inventory.parse_network(write(tmp_path, "n.xml", network_xml("n", "virbr1", status=True)))
    assert net.name == "n" and net.bridge == "virbr1"


def test_network_with_invalid_bridge_name(tmp_path):
    _path, err = refused(tmp_path, network_xml("n", "virbr1").replace("virbr1", "virbr1/../x"), name="n.xml",
                         parse=inventory.parse_network)
    assert err.field == "network/bridge/@name"


def test_network_hostile_input_is_refused(tmp_path):
    path, err = refused(tmp_path, XXE.replace("<domain>", "<network>").replace("</domain>", "</network>"),
                        name="n.xml", parse=inventory.parse_network)
    assert str(err) == f"{path}:3: DOCTYPE/ENTITY declarations are refused (entity expansion)"


# --- the CLI ----------------------------------------------------------------------------------------


def test_unchanged_domain_files_are_not_parsed_again_but_changed_ones_are(tmp_path, monkeypatch):
    from netmedic import inventory as inv_mod

    d = tmp_path / "qemu"
    d.mkdir()
    f = d / "vm1.xml"
    f.write_text("<domain><name>vm1</name><devices><interface type='bridge'><mac address='52:54:00:00:00:01'/>"
                 "<source bridge='br0'/><target dev='vnet0'/></interface></devices></domain>")
    calls = []
    real = inv_mod.parse_domain
    monkeypatch.setattr(inv_mod, "parse_domain", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    first = inv_mod.load(str(d), None)
    second = inv_mod.load(str(d), None)
    assert first.domains == second.domains and len(calls) == 1
    f.write_text(f.read_text().replace("vnet0", "vnet12"))  # same name, other tap (VM restarted)
    third = inv_mod.load(str(d), None)
    assert len(calls) == 2 and third.domains["vm1"].nics[0].tap == "vnet12"
