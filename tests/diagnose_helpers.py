"""Helpers for the diagnose and new-invariant tests: a libvirt NAT network lab with its MASQUERADE rule
and a real dnsmasq (both inside the test's own namespace), a sized ICMP ping, and a tiny JSON Schema
validator (jsonschema is in neither the venv nor Debian's python3 here; this covers the subset
docs/diagnose.schema.json uses)."""
from __future__ import annotations

import json
import os
import re
import sys
import time

from conftest import Netmedic

from netmedic.lab import write_domain_xml, write_network_xml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = os.path.join(ROOT, "docs", "diagnose.schema.json")
MASQ = ["-t", "nat", "-A", "POSTROUTING", "-s", "203.0.113.0/24", "!", "-d", "203.0.113.0/24", "-j", "MASQUERADE"]


def diagnose(nm, *extra, expect=(0, 1)):
    proc = nm.run("diagnose", *extra)
    assert proc.returncode in expect, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def diagnose_json(nm, domain, *extra, expect=(0, 1)) -> dict:
    proc = diagnose(nm, domain, "--json", *extra, expect=expect)
    report = json.loads(proc.stdout)
    validate(report, load_schema())
    assert (proc.returncode == 1) == (report["first_broken"] is not None)
    return report


def hop(report, number) -> dict:
    return report["hops"][number - 1]


def first_broken(report) -> int:
    return report["first_broken"]["number"] if report["first_broken"] else 0


class NatNet:
    pass


def build_natnet(topo, tmp_path, masquerade=True, dnsmasq=True) -> NatNet:
    """host: libvirt NAT network nat1 on virbr1 (203.0.113.1/24) with VM natvm (tap vnet0), its
    MASQUERADE rule (iptables-nft, in the host namespace) and a dnsmasq bound to virbr1 whose pid file
    sits beside the network's run-state XML, as libvirt keeps it; an uplink eth1 (198.51.100.1/24) to
    an `out` namespace."""
    host, vm, out = topo.netns("host"), topo.netns("vm"), topo.netns("out")
    topo.bridge(host, "virbr1")
    topo.addr(host, "virbr1", "203.0.113.1/24")
    topo.veth(host, "vnet0", vm, "eth0", mac_a="fe:54:00:00:01:01", mac_b="52:54:00:00:01:01")
    topo.enslave(host, "vnet0", "virbr1")
    topo.addr(vm, "eth0", "203.0.113.10/24")
    topo.route(vm, "default", "203.0.113.1")
    topo.veth(host, "eth1", out, "eth0")
    topo.addr(host, "eth1", "198.51.100.1/24")
    topo.addr(out, "eth0", "198.51.100.2/24")
    topo.sysctl(host, "net.ipv4.ip_forward", 1)
    doms, nets = tmp_path / "domains", tmp_path / "networks"
    doms.mkdir()
    nets.mkdir()
    write_network_xml(str(nets), "nat1", "virbr1", forward_mode="nat", ip="203.0.113.1",
                             netmask="255.255.255.0")
    write_domain_xml(str(doms), "natvm", [{"mac": "52:54:00:00:01:01", "network": "nat1",
                                                  "bridge": "virbr1", "tap": "vnet0"}])
    n = NatNet()
    n.topo, n.host, n.vm, n.out, n.nets = topo, host, vm, out, str(nets)
    n.nm = Netmedic(topo, host, tmp_path, str(doms), str(nets))
    n.dnsmasq = None
    if masquerade:
        topo.run(host, "iptables-nft", *MASQ)
    if dnsmasq:
        n.dnsmasq = start_dnsmasq(topo, host, "virbr1", os.path.join(n.nets, "nat1.pid"))
    return n


def start_dnsmasq(topo, ns, bridge, pid_file):
    """A real dnsmasq (DNS off, nothing to serve) bound to the bridge; `ip netns exec` execs it, so the
    spawned PID is dnsmasq's. Ended by the Topology, by PID."""
    proc = topo.spawn(ns, "/usr/sbin/dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
                      "--bind-interfaces", f"--interface={bridge}", "--except-interface=lo",
                      stdout=open(os.devnull, "w"), stderr=open(os.devnull, "w"))
    deadline = time.monotonic() + 5
    while True:
        try:
            with open(f"/proc/{proc.pid}/comm") as fh:
                if fh.read().strip() == "dnsmasq":
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, "dnsmasq did not start"
        time.sleep(0.02)
    with open(pid_file, "w") as fh:
        fh.write(f"{proc.pid}\n")
    return proc


_SIZED_PING = r"""
import os, select, socket, struct, sys, time
dst, size, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident, got = os.getpid() & 0xFFFF, 0
for seq in range(1, count + 1):
    payload = b"x" * size
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    sock.sendto(struct.pack("!BBHHH", 8, 0, csum(hdr + payload), ident, seq) + payload, (dst, 0))
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        r, _, _ = select.select([sock], [], [], end - time.monotonic())
        if not r:
            break
        data = sock.recv(size + 100)
        ihl = (data[0] & 15) * 4
        t, _, _, i, sq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        if t == 0 and i == ident and sq == seq:
            got += 1
            break
print(got)
"""


def sized_ping(topo, ns, dst, size, count=2) -> int:
    """ICMP echo with a `size`-byte payload: the number of replies."""
    res = topo.run(ns, sys.executable, "-I", "-S", "-c", _SIZED_PING, dst, str(size), str(count), timeout=30)
    return int(res.stdout.strip())


def normalise(text: str, *paths: str) -> str:
    for p in paths:
        text = text.replace(str(p), "<TMP>")
    return re.sub(r"nmt[a-z0-9]+-\w+", "<NS>", text)


# --- a tiny JSON Schema validator (draft 2020-12 subset: type, enum, const, properties, required,
# additionalProperties, items, minimum, maximum, minItems, $ref to #/$defs) ---------------------------
def load_schema() -> dict:
    with open(SCHEMA) as fh:
        return json.load(fh)


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is(value, t) -> bool:
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[t])


def validate(value, schema: dict, root: dict = None, path: str = "$") -> None:
    root = root or schema
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/$defs/"), f"{path}: unsupported $ref {ref}"
        return validate(value, root["$defs"][ref.split("/")[-1]], root, path)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert any(_is(value, t) for t in types), f"{path}: {value!r} is not of type {types}"
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"
    if "const" in schema:
        assert value == schema["const"], f"{path}: {value!r} != {schema['const']!r}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{path}: missing required {key!r}"
        props = schema.get("properties", {})
        for key, sub in value.items():
            if key in props:
                validate(sub, props[key], root, f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                raise AssertionError(f"{path}: unexpected property {key!r}")
            elif isinstance(schema.get("additionalProperties"), dict):
                validate(sub, schema["additionalProperties"], root, f"{path}.{key}")
    if isinstance(value, list):
        assert len(value) >= schema.get("minItems", 0), f"{path}: fewer than {schema['minItems']} items"
        assert len(value) <= schema.get("maxItems", len(value)), f"{path}: more than {schema['maxItems']} items"
        if "items" in schema:
            for i, item in enumerate(value):
                validate(item, schema["items"], root, f"{path}[{i}]")
    if _is(value, "number"):
        assert value >= schema.get("minimum", value), f"{path}: {value} < minimum"
        assert value <= schema.get("maximum", value), f"{path}: {value} > maximum"
