"""Nothing in the package depends on the CPU architecture: the .deb (Architecture: all) and the RPM
(noarch) must work unchanged on aarch64 -- the founding report's host -- as on x86_64, and
docs/install.md says so because of these tests. They need no root and run under Python 3.7 too
(`make test-py37`).

What could tie pure Python to an architecture, and what is checked:
- compiled or foreign code: no extension module or C source in the package; ctypes only in
  netmedic/sources/xmlwatch.py, where it calls libc's inotify_init1/inotify_add_watch with C ints and a
  byte string (no ctypes structures, pointers or sizes, whose layout is the platform's);
- binary layouts: every struct format in the package names its byte order and thus standard sizes
  without alignment padding ('=' for the kernel's host-order structures -- netlink, inotify -- and '!'
  for wire formats); a native-mode format is accepted only when its fields are 1-, 2- or 4-byte
  integers laid out with no padding, the same on every Linux ABI (x86_64 and aarch64 are both LP64 and
  little-endian, but a native 'l' or 'P' would already differ on a 32-bit one);
- the kernel's structure sizes and the constants netmedic defines itself instead of taking them from
  the socket/os modules: checked against the uapi headers of this machine (asm-generic for the socket
  options: arm64 has no asm/socket.h of its own, the kernel's arch/arm64/include/uapi/asm/ has none,
  so it uses asm-generic's, as x86's asm/socket.h does by including it);
- paths: no multiarch or lib64 path in the installed files (the lab's fake libvirt status XML names an
  x86_64 machine: that is test data the daemon reads only for the NICs).
"""
from __future__ import annotations

import ast
import os
import re
import struct

import pytest

from netmedic import nl
from netmedic.sources import xmlwatch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STRUCT_CALLS = {"pack", "unpack", "unpack_from", "pack_into", "calcsize", "iter_unpack", "Struct"}
# Native-mode codes whose size and alignment are the same on every Linux ABI (ILP32 and LP64).
PORTABLE_NATIVE = set("xbBhHiI?")


def _package_files():
    """(path relative to ROOT, text) of every Python file installed: the netmedic package (following
    its healers/policies/dispatcher/hooks links) and the scripts installed as executables."""
    out = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, "netmedic"), followlinks=True):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for f in filenames:
            if f.endswith(".py"):
                out.append(os.path.join(dirpath, f))
    for d in ("hooks/scripts", "dispatcher/scripts", "packaging/udev"):
        for f in sorted(os.listdir(os.path.join(ROOT, d))) if os.path.isdir(os.path.join(ROOT, d)) else ():
            path = os.path.join(ROOT, d, f)
            if os.path.isfile(path) and not f.endswith((".pyc", ".md", ".txt", ".rules")):
                with open(path, "rb") as fh:
                    first = fh.readline()
                if first.startswith(b"#!") and b"python" in first:
                    out.append(path)
    result = []
    for path in sorted(set(out)):
        with open(path, encoding="utf-8") as fh:
            result.append((os.path.relpath(path, ROOT), fh.read()))
    return result


FILES = _package_files()


def _struct_formats():
    """(file, line, format) of every struct call in the package with a literal format; a format that is
    not a literal (or a literal % something) is reported as None."""
    found = []
    for rel, text in FILES:
        for node in ast.walk(ast.parse(text, rel)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in STRUCT_CALLS and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "struct" and node.args):
                continue
            fmt = node.args[0]
            if isinstance(fmt, ast.BinOp) and isinstance(fmt.op, ast.Mod):
                fmt = fmt.left  # "!%dH" % n: the byte order is in the literal part
            try:
                value = ast.literal_eval(fmt)  # (ast.Str on Python 3.7, ast.Constant later)
            except ValueError:
                value = None
            value = value if isinstance(value, str) else None
            found.append((rel, node.lineno, value))
    return found


def test_the_scan_sees_the_package():
    names = {rel for rel, _ in FILES}
    assert "netmedic/nl/__init__.py" in names and "netmedic/daemon.py" in names and "netmedic/healers/fdb_pin.py" in names
    formats = _struct_formats()
    assert any(rel.startswith("netmedic/nl/") for rel, _, _ in formats)
    assert any(rel == "netmedic/sources/xmlwatch.py" for rel, _, _ in formats)


def test_no_compiled_code_in_the_package():
    compiled = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, "netmedic"), followlinks=True):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        compiled += [os.path.join(dirpath, f) for f in filenames
                     if f.endswith((".so", ".c", ".h", ".pyx", ".pxd", ".a", ".o"))]
    assert compiled == []
    with open(os.path.join(ROOT, "setup.cfg")) as fh:
        cfg = fh.read()
    assert "ext_modules" not in cfg and "cffi_modules" not in cfg


def test_ctypes_only_with_c_ints_and_bytes():
    users = {}
    for rel, text in FILES:
        tree = ast.parse(text, rel)
        imported = any(isinstance(n, ast.Import) and any(a.name.split(".")[0] in ("ctypes", "cffi") for a in n.names)
                       or isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] in ("ctypes", "cffi")
                       for n in ast.walk(tree))
        if imported:
            users[rel] = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                          and isinstance(n.value, ast.Name) and n.value.id == "ctypes"}
    assert set(users) <= {"netmedic/sources/xmlwatch.py"}, users
    # libc by the process's own symbols and errno: no ctypes types, structures, pointers or sizes
    assert users.get("netmedic/sources/xmlwatch.py", set()) <= {"CDLL", "get_errno"}, users
    # the flags are the os module's (IN_NONBLOCK/IN_CLOEXEC are O_NONBLOCK/O_CLOEXEC on every arch)
    assert xmlwatch._IN_NONBLOCK == os.O_NONBLOCK and xmlwatch._IN_CLOEXEC == os.O_CLOEXEC
    assert not [rel for rel, text in FILES if re.search(r"\bioctl\s*\(", text)]


def test_struct_formats_name_their_byte_order():
    bad = []
    for rel, line, fmt in _struct_formats():
        if fmt is None:
            bad.append(f"{rel}:{line}: format is not a literal")
        elif fmt[:1] in "=<>!":
            continue
        else:
            body = fmt.lstrip("@")
            codes = set(re.sub(r"\d", "", body))
            if not codes <= PORTABLE_NATIVE or struct.calcsize(body) != struct.calcsize("=" + body):
                bad.append(f"{rel}:{line}: native format {fmt!r} (platform sizes or padding)")
    assert bad == []
    # netlink structures are the kernel's, in host order; nothing in nl/ uses network order or native mode
    nl_formats = [fmt for rel, _, fmt in _struct_formats() if rel.startswith("netmedic/nl/")]
    assert nl_formats and all(f.startswith("=") for f in nl_formats), nl_formats


def _header(path, name):
    with open(path) as fh:
        m = re.search(rf"^#define\s+{name}\s+(0x[0-9a-fA-F]+|\d+)\b", fh.read(), re.M)
    assert m, f"{name} not in {path}"
    return int(m.group(1), 0)


def test_kernel_sizes_and_constants_match_the_uapi_headers():
    # struct nlmsghdr, ifinfomsg, ndmsg, rtattr, inotify_event: fixed-size fields only
    assert (nl.uapi._NLMSGHDR.size, nl.uapi._IFINFOMSG.size, nl.uapi._NDMSG.size, nl.uapi._RTATTR.size) == (16, 16, 12, 4)
    assert xmlwatch._EVENT.size == 16
    inc = "/usr/include"
    assert os.path.exists(f"{inc}/asm-generic/socket.h"), "uapi headers missing (linux-libc-dev)"
    assert nl.uapi._SO_RCVBUFFORCE == _header(f"{inc}/asm-generic/socket.h", "SO_RCVBUFFORCE")
    assert nl.uapi._NETLINK_GET_STRICT_CHK == _header(f"{inc}/linux/netlink.h", "NETLINK_GET_STRICT_CHK")
    assert nl.uapi._RTMGRP_NEIGH == _header(f"{inc}/linux/rtnetlink.h", "RTMGRP_NEIGH")
    assert nl.uapi._NLM_F_DUMP == 0x300 and nl.uapi._NLM_F_REQUEST == _header(f"{inc}/linux/netlink.h", "NLM_F_REQUEST")
    for name in ("IN_IGNORED", "IN_Q_OVERFLOW"):
        assert getattr(xmlwatch, "_" + name) == _header(f"{inc}/linux/inotify.h", name)
    # SOL_NETLINK is glibc's (bits/socket.h), the same number on every architecture
    bits = [os.path.join(dp, "socket.h") for dp, _, fs in os.walk(inc) if dp.endswith("/bits") and "socket.h" in fs]
    assert bits and nl.uapi._SOL_NETLINK == _header(bits[0], "SOL_NETLINK")
    # this machine's asm/socket.h is asm-generic's, as arm64's is
    arch_socket = [os.path.join(dp, "socket.h") for dp, _, fs in os.walk(inc)
                   if dp.endswith("/asm") and "socket.h" in fs and "asm-generic" not in dp]
    for path in arch_socket:
        with open(path) as fh:
            assert "#include <asm-generic/socket.h>" in fh.read(), path


def test_a_little_endian_netlink_message_is_parsed():
    """An fdb notification laid out field by field in little-endian order (what an aarch64 or x86_64
    kernel sends), parsed by the lean reader: the same event as pyroute2 would report."""
    lladdr = bytes.fromhex("525400a1b2c3")
    attrs = (struct.pack("<HH", 4 + 6, nl.uapi._NDA_LLADDR) + lladdr + b"\0\0"
             + struct.pack("<HHI", 8, nl.uapi._NDA_MASTER, 7))
    body = struct.pack("<BBHiHBB", nl.uapi._AF_BRIDGE, 0, 0, 42, 0x80, 0x2, 0) + attrs
    msg = struct.pack("<IHHII", 16 + len(body), nl.uapi._RTM_NEWNEIGH, 0, 0, 0) + body
    link_attrs = struct.pack("<HH", 4 + 6, nl.uapi._IFLA_IFNAME) + b"vnet0\0" + b"\0\0"
    link_body = struct.pack("<BBHiII", 0, 0, 1, 42, 0x1, 0) + link_attrs
    link = struct.pack("<IHHII", 16 + len(link_body), nl.uapi._RTM_NEWLINK, 0, 0, 0) + link_body
    events = nl.listener._parse_events(bytearray(msg + link))
    assert events == [nl.Event("fdb", "new", 42, None, 7, "52:54:00:a1:b2:c3"),
                      nl.Event("link", "new", 42, "vnet0", None, None)]


@pytest.mark.parametrize("raw, text", [(b"\x52\x54\x00\xa1\xb2\xc3", "52:54:00:a1:b2:c3"),
                                       (bytearray(b"\xfe\x54\x00\x0a\xb2\xc3"), "fe:54:00:0a:b2:c3"),
                                       (memoryview(b"\x00\x01\x02\x03")[1:], "01:02:03")])
def test_hexmac(raw, text):
    assert nl.hexmac(raw) == text


def test_no_architecture_specific_paths():
    pattern = re.compile(r"lib64|x86_64|x86-64|aarch64|amd64|arm64|i[3-6]86|-linux-gnu")
    allowed = {"netmedic/lab/libvirt_xml.py"}  # the lab's fake libvirt status XML (arch, emulator): test data
    hits = [f"{rel}:{text[:m.start()].count(chr(10)) + 1}: {m.group(0)}"
            for rel, text in FILES if rel not in allowed for m in pattern.finditer(text)]
    for rel in ("packaging/systemd/netmedic.service", "packaging/install-layout.sh", "packaging/rpm/netmedic.spec",
                "packaging/logrotate/netmedic", "packaging/debian/rules"):
        with open(os.path.join(ROOT, rel)) as fh:
            hits += [f"{rel}: {m.group(0)}" for m in pattern.finditer(fh.read())]
    assert hits == []
