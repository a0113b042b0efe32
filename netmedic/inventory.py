"""What VMs and libvirt networks the host runs, from libvirt's run-state XML (always available, no
libvirtd needed) or, optionally, the libvirt API.

Domain files are libvirt's status format (`/run/libvirt/qemu/NAME.xml`: `<domstatus><domain>..`); a
bare `<domain>` document is accepted too. Every file in the run directory is a running domain.

Hostile input is refused, not parsed: no DOCTYPE/ENTITY declarations (entity expansion), a size cap,
and every field validated. A bad file yields one InventoryError naming the file, line and field; the
other files are still read.
"""
from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import re
import stat
import xml.etree.ElementTree as ET
import xml.parsers.expat
from typing import Iterable, Optional

from netmedic.errors import InventoryError

MAX_XML_BYTES = 4 * 1024 * 1024
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_DTD_RE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class VmNic:
    domain: str
    uuid: str
    mac: str  # canonical lower-case
    type: str  # 'bridge' or 'network' (others are not bridged and are ignored)
    bridge: Optional[str]  # the bridge the tap must be a port of
    tap: Optional[str]  # target dev (vnetN); None when libvirt has not named it
    network: Optional[str] = None  # libvirt network name for type='network'
    model: Optional[str] = None
    vlans: tuple = ()  # tags from <vlan>
    link_up: bool = True  # <link state='down'/> means the admin wants the link down
    source_file: Optional[str] = None

    @property
    def key(self) -> str:
        return f"{self.domain}/{self.mac}"


@dataclasses.dataclass(frozen=True)
class DirectNic:
    """A NIC that is not on a Linux bridge: `<interface type='direct'>` (macvtap on a parent device),
    `type='network'` on a macvtap-pool network (forward mode bridge/private/vepa/passthrough with no
    bridge), or `type='hostdev'` (an SR-IOV VF passed through). Kept apart from Domain.nics, which every
    other component walks as bridge ports."""

    domain: str
    uuid: str
    mac: str
    type: str  # 'direct', 'network' or 'hostdev'
    dev: Optional[str] = None  # the macvtap device (<target dev>, macvtapN)
    parent: Optional[str] = None  # <source dev>: the lower device (None for hostdev, or not yet known)
    mode: Optional[str] = None  # 'bridge', 'vepa', 'private', 'passthrough' (libvirt's default: vepa)
    network: Optional[str] = None
    pci: Optional[str] = None  # hostdev: 'dddd:bb:ss.f'
    model: Optional[str] = None
    source_file: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Domain:
    name: str
    uuid: str
    nics: tuple  # of VmNic
    source_file: Optional[str] = None
    direct_nics: tuple = ()  # of DirectNic


@dataclasses.dataclass(frozen=True)
class Network:
    name: str
    bridge: Optional[str]
    forward_mode: Optional[str]  # 'nat', 'route', 'open', 'bridge', None (isolated)
    forward_dev: Optional[str]
    ips: tuple = ()  # 'address/prefix'
    source_file: Optional[str] = None
    devs: tuple = ()  # <forward><interface dev>: the pool of a macvtap network

    @property
    def macvtap_pool(self) -> bool:
        return self.bridge is None and self.forward_mode in ("bridge", "private", "vepa", "passthrough")


@dataclasses.dataclass
class Inventory:
    domains: dict  # name -> Domain
    networks: dict  # name -> Network
    errors: list  # InventoryError, one per rejected file or field

    def _cached(self, name: str, build):
        """A value derived from the domains, computed once per Inventory: an Inventory is not changed after
        load() (the daemon reuses it while no file changed); a domain added later recomputes it."""
        cached = self.__dict__.get(name)
        if cached is None or cached[0] != len(self.domains):
            cached = (len(self.domains), build())
            self.__dict__[name] = cached
        return cached[1]

    @property
    def nics(self) -> list:
        """Every VM NIC."""
        return self._cached("_nics", lambda: [n for d in self.domains.values() for n in d.nics])

    @property
    def by_bridge(self) -> dict:
        """bridge name -> its VM NICs, in `nics` order (NICs with no bridge under None)."""
        return self._cached("_by_bridge", lambda: _grouped(self.nics, "bridge"))

    @property
    def by_mac(self) -> dict:
        """MAC -> the VM NICs using it, in `nics` order."""
        return self._cached("_by_mac", lambda: _grouped(self.nics, "mac"))

    @property
    def positions(self) -> dict:
        """id(NIC) -> its place in `nics` (to put NICs gathered per bridge back in inventory order)."""
        return self._cached("_positions", lambda: {id(n): i for i, n in enumerate(self.nics)})

    @property
    def taps(self) -> frozenset:
        """The tap names the VM NICs declare."""
        return self._cached("_taps", lambda: frozenset(n.tap for n in self.nics if n.tap))

    @property
    def direct_nics(self) -> list:
        """Every NIC that is not a bridge port (macvtap, hostdev)."""
        return [n for d in self.domains.values() for n in d.direct_nics]


def _grouped(nics: list, attr: str) -> dict:
    out: dict = {}
    for nic in nics:
        out.setdefault(getattr(nic, attr), []).append(nic)
    return out


def canonical_mac(value: str) -> str:
    mac = value.strip().lower().replace("-", ":")
    if not _MAC_RE.match(mac):
        raise ValueError(f"not a MAC address: {value!r}")
    return mac


def valid_ifname(name: str) -> bool:
    """The kernel's rules for an interface name (dev_valid_name)."""
    return (0 < len(name) <= 15 and name not in (".", "..")
            and not any(c in name for c in "/: \t\n\r\x00\x0b\x0c"))


class _DtdFound(Exception):
    def __init__(self, line: int):
        super().__init__(line)
        self.line = line


def _dtd_line(data: bytes) -> Optional[int]:
    """The line of a DOCTYPE or ENTITY declaration that the byte scan cannot see (the document is in
    another encoding, e.g. UTF-16): expat stops at the declaration, before any entity is defined."""
    parser = xml.parsers.expat.ParserCreate()

    def refuse(*_args):
        raise _DtdFound(parser.CurrentLineNumber)

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    try:
        parser.Parse(data, True)
    except _DtdFound as found:
        return found.line
    except (xml.parsers.expat.ExpatError, ValueError, LookupError):
        pass  # malformed: ElementTree reports it
    return None


def _read_regular(path: str) -> bytes:
    """A regular file's bytes, at most MAX_XML_BYTES: a FIFO, a device or a socket in an XML directory
    is refused without blocking (opened O_NONBLOCK, checked with fstat before any read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise InventoryError(f"cannot read: {exc.strerror}", source=path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) \
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
            raise InventoryError(f"cannot read: {kind}, not a regular file", source=path)
        if st.st_size > MAX_XML_BYTES:
            raise InventoryError(f"larger than {MAX_XML_BYTES} bytes, refused", source=path)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(MAX_XML_BYTES + 1)
    except OSError as exc:
        raise InventoryError(f"cannot read: {exc.strerror}", source=path) from None
    finally:
        os.close(fd)


def dir_problems(*directories) -> list:
    """What is wrong with the run-state XML directories given: missing, or not a directory (one line
    each, naming the path). The CLI refuses to judge a host from them (exit 2); the daemon warns and
    keeps looking (libvirtd may create them later)."""
    out = []
    for d in directories:
        if not d:
            continue
        try:
            st = os.stat(d)
        except OSError as exc:
            out.append(f"{d}: {exc.strerror or exc}")
            continue
        if not stat.S_ISDIR(st.st_mode):
            out.append(f"{d}: not a directory")
    return out


def _parse_xml(path: str, data: Optional[bytes] = None) -> ET.Element:
    if data is None:
        data = _read_regular(path)
    if len(data) > MAX_XML_BYTES:
        raise InventoryError(f"larger than {MAX_XML_BYTES} bytes, refused", source=path)
    m = _DTD_RE.search(data)
    line = data.count(b"\n", 0, m.start()) + 1 if m else _dtd_line(data)
    if line is not None:
        raise InventoryError("DOCTYPE/ENTITY declarations are refused (entity expansion)",
                             source=path, line=line)
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        line = exc.position[0] if getattr(exc, "position", None) else None
        msg = str(exc).split(":")[0]
        raise InventoryError(f"malformed XML: {msg}", source=path, line=line) from None
    except (ValueError, LookupError) as exc:  # an encoding expat cannot read ("UTF-32", unknown)
        raise InventoryError(f"malformed XML: unsupported encoding ({exc})", source=path, line=1) from None


def _line_of(source, needle: str, nth: int = 0, after: Optional[int] = None) -> Optional[int]:
    """Best-effort line number of the nth (0-based) occurrence of needle at or after line `after`
    (ElementTree keeps no positions). `source`: the file's path, or the document's bytes."""
    if not needle:
        return after
    try:
        if isinstance(source, (bytes, bytearray)):
            text = bytes(source).decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
        else:
            with open(source, encoding="utf-8", errors="replace") as fh:  # universal newlines
                text = fh.read(MAX_XML_BYTES + 1)
        lines = text.split("\n")
    except OSError:
        return after
    for i, line in enumerate(lines, 1):
        if after is not None and i < after:
            continue
        nth -= line.count(needle)
        if nth < 0:
            return i
    return after


def parse_domain(path: str, networks: Optional[dict] = None, data: Optional[bytes] = None) -> Domain:
    """A domain from a file, or from `data` (e.g. the XML libvirt gives a hook on stdin; `path` then
    only names it in errors)."""
    root = _parse_xml(path, data)
    text_src = data if data is not None else path  # where line numbers are looked up
    dom = root.find("domain") if root.tag == "domstatus" else root
    if dom is None or dom.tag != "domain":
        raise InventoryError(f"root element <{root.tag}> is neither <domstatus> nor <domain>", source=path)
    name = (dom.findtext("name") or "").strip()
    if not name:
        raise InventoryError("missing", source=path, field="domain/name")
    uuid = (dom.findtext("uuid") or "").strip()
    nics, direct = [], []
    for i, iface in enumerate(dom.findall("./devices/interface")):
        itype = iface.get("type", "")
        if itype not in ("bridge", "network", "direct", "hostdev"):
            continue
        field = f"devices/interface[{i}]"
        # the interface's line, looked up only for an error (it re-reads the file)
        iface_line = functools.partial(_line_of, text_src, "<interface", nth=i)
        mac_el = iface.find("mac")
        if mac_el is None or not mac_el.get("address"):
            raise InventoryError("missing <mac address>", source=path, field=f"{field}/mac",
                                 line=iface_line())
        try:
            mac = canonical_mac(mac_el.get("address", ""))
        except ValueError as exc:
            raise InventoryError(str(exc), source=path, field=f"{field}/mac/@address",
                                 line=_line_of(text_src, mac_el.get("address", ""), after=iface_line())) from None
        src = iface.find("source")
        bridge = src.get("bridge") if src is not None else None
        network = src.get("network") if src is not None else None
        if itype == "network" and not bridge and network and networks and network in networks:
            bridge = networks[network].bridge
        target = iface.find("target")
        tap = target.get("dev") if target is not None else None
        actual = iface.find("actual")
        pool = bool(itype == "network" and not bridge and network and networks and network in networks
                    and networks[network].macvtap_pool)
        if itype in ("direct", "hostdev") or pool or (actual is not None and actual.get("type") in ("direct",
                                                                                                   "hostdev")):
            direct.append(_direct_nic(name, uuid, mac, itype, iface, actual, network, tap, path, field,
                                      text_src, iface_line))
            continue
        for fname, value in (("source/@bridge", bridge), ("target/@dev", tap)):
            if value is not None and not valid_ifname(value):
                raise InventoryError(f"not a valid interface name: {value!r}", source=path,
                                     field=f"{field}/{fname}", line=_line_of(text_src, value, after=iface_line()))
        model_el = iface.find("model")
        vlans = []
        for tag in iface.findall("./vlan/tag"):
            try:
                vid = int(tag.get("id", ""))
                if not 1 <= vid <= 4094:
                    raise ValueError
            except ValueError:
                raise InventoryError(f"VLAN id {tag.get('id')!r} is not 1..4094", source=path,
                                     field=f"{field}/vlan/tag/@id", line=iface_line()) from None
            vlans.append(vid)
        link = iface.find("link")
        nics.append(VmNic(domain=name, uuid=uuid, mac=mac, type=itype, bridge=bridge, tap=tap,
                          network=network, model=model_el.get("type") if model_el is not None else None,
                          vlans=tuple(vlans), link_up=(link is None or link.get("state", "up") != "down"),
                          source_file=path))
    return Domain(name=name, uuid=uuid, nics=tuple(nics), source_file=path, direct_nics=tuple(direct))


def _direct_nic(domain, uuid, mac, itype, iface, actual, network, dev, path, field, text_src,
                line_of) -> DirectNic:
    """A macvtap or hostdev NIC: its own <source> (type='direct'), or libvirt's <actual> for a network."""
    el = actual if actual is not None else iface
    kind = (actual.get("type") if actual is not None else None) or itype
    src = el.find("source")
    parent = mode = pci = None
    if kind == "hostdev":
        addr = src.find("address") if src is not None else None
        if addr is not None and addr.get("type", "pci") == "pci":
            try:
                d, b, sl, f = (int(addr.get(k, "0"), 0) for k in ("domain", "bus", "slot", "function"))
                pci = f"{d:04x}:{b:02x}:{sl:02x}.{f:x}"
            except ValueError:
                raise InventoryError("not a valid PCI address", source=path, field=f"{field}/source/address",
                                     line=line_of()) from None
    elif src is not None:
        parent, mode = src.get("dev"), src.get("mode", "vepa")
    for fname, value in (("source/@dev", parent), ("target/@dev", dev)):
        if value is not None and not valid_ifname(value):
            raise InventoryError(f"not a valid interface name: {value!r}", source=path, field=f"{field}/{fname}",
                                 line=_line_of(text_src, value, after=line_of()))
    model_el = iface.find("model")
    return DirectNic(domain=domain, uuid=uuid, mac=mac, type=itype, dev=dev, parent=parent, mode=mode,
                     network=network, pci=pci, model=model_el.get("type") if model_el is not None else None,
                     source_file=path)


def parse_network(path: str) -> Network:
    root = _parse_xml(path)
    net = root.find("network") if root.tag == "networkstatus" else root
    if net is None or net.tag != "network":
        raise InventoryError(f"root element <{root.tag}> is neither <networkstatus> nor <network>",
                             source=path)
    name = (net.findtext("name") or "").strip()
    if not name:
        raise InventoryError("missing", source=path, field="network/name")
    br = net.find("bridge")
    bridge = br.get("name") if br is not None else None
    if bridge is not None and not valid_ifname(bridge):
        raise InventoryError(f"not a valid interface name: {bridge!r}", source=path,
                             field="network/bridge/@name")
    fwd = net.find("forward")
    mode = (fwd.get("mode", "nat") if fwd is not None else None)
    dev = fwd.get("dev") if fwd is not None else None
    ips = []
    for i, ip in enumerate(net.findall("ip")):
        addr = ip.get("address")
        if not addr:
            continue
        try:
            if ip.get("prefix"):
                iface = ipaddress.ip_interface(f"{addr}/{ip.get('prefix')}")
            elif ip.get("netmask"):  # IPv4 only; a non-contiguous mask is an error
                iface = ipaddress.IPv4Interface(f"{addr}/{ip.get('netmask')}")
            else:
                continue  # no prefix: nothing netmedic can use
        except ValueError as exc:
            raise InventoryError(f"not a valid address/prefix: {exc}", source=path,
                                 field=f"network/ip[{i}]", line=_line_of(path, addr)) from None
        ips.append(f"{iface.ip}/{iface.network.prefixlen}")
    devs = tuple(d for d in (el.get("dev") for el in (fwd.findall("interface") if fwd is not None else []))
                 if d and valid_ifname(d))
    return Network(name=name, bridge=bridge, forward_mode=mode, forward_dev=dev, ips=tuple(ips),
                   source_file=path, devs=devs)


def _xml_files(directory: Optional[str]) -> Iterable[str]:
    if not directory or not os.path.isdir(directory):
        return []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(os.path.join(directory, f) for f in names if f.endswith(".xml") and not f.startswith("."))


# The daemon reads the run-state directory at every reconcile: a file that has not changed (same inode,
# size and mtime, same networks) is not parsed again. Errors are not cached.
_DOMAIN_CACHE: dict = {}


def _parse_domain_cached(path: str, networks: dict, net_sig: tuple, trust: bool = False) -> Domain:
    """trust: the caller knows the file did not change since it was cached (an inotify watch): no stat."""
    hit = _DOMAIN_CACHE.get(path) if trust else None
    if hit is not None and hit[0][3] == net_sig:
        return hit[1]
    try:
        st = os.stat(path)
        key = (st.st_ino, st.st_size, st.st_mtime_ns, net_sig)
    except OSError:
        return parse_domain(path, networks)
    hit = _DOMAIN_CACHE.get(path)
    if hit is not None and hit[0] == key:
        return hit[1]
    dom = parse_domain(path, networks)
    if len(_DOMAIN_CACHE) > 20000:
        _DOMAIN_CACHE.clear()
    _DOMAIN_CACHE[path] = (key, dom)
    return dom


def load(domain_dir: Optional[str], network_dir: Optional[str], extra_domains: Iterable = (),
         changed: Optional[set] = None) -> Inventory:
    """Read every domain and network file; bad files become errors, never exceptions. `extra_domains`
    (Domain objects, e.g. the one a libvirt hook is called for) replace files of the same name.
    `changed`: the paths that may have changed since the previous load (the daemon's inotify watch
    knows): a domain file not among them is taken from the cache without even a stat."""
    errors: list = []
    networks: dict = {}
    for path in _xml_files(network_dir):
        try:
            net = parse_network(path)
            networks[net.name] = net
        except InventoryError as exc:
            errors.append(exc)
    domains: dict = {}
    net_sig = tuple(sorted((n.name, n.bridge) for n in networks.values()))
    for path in _xml_files(domain_dir):
        try:
            dom = _parse_domain_cached(path, networks, net_sig, trust=changed is not None and path not in changed)
        except InventoryError as exc:
            errors.append(exc)
            continue
        if dom.name in domains:
            errors.append(InventoryError(f"domain {dom.name!r} is also defined in "
                                         f"{domains[dom.name].source_file}", source=path, field="domain/name"))
            continue
        domains[dom.name] = dom
    for dom in extra_domains:
        domains[dom.name] = dom
    return Inventory(domains=domains, networks=networks, errors=errors)
