"""What a lab may build: interface names, MACs, MTUs and file names checked, addresses limited to the
lab networks (RFC 5737: 198.51.100.0/24 and 203.0.113.0/24), and the lookup of the tools it runs.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shutil

#: The only networks a lab may configure (RFC 5737 documentation networks; 192.0.2.0/24, the third
#: one, is the real uplink subnet of the machines this project runs on, so it is refused).
LAB_NETWORKS = (ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("203.0.113.0/24"))

IFNAMSIZ = 16  # kernel limit including the trailing NUL: names are 1..15 characters
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_SHORT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,15}$")
_SYSCTL_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@/-]*$")
_TOOL_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")

# ----------------------------------------------------------------------------------------------------
# Validation


def validate_ifname(name: str, what: str = "interface name") -> str:
    """Return ``name`` if it is a valid Linux interface name, else raise ValueError."""
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a string, not {type(name).__name__}")
    if not 1 <= len(name) <= IFNAMSIZ - 1:
        raise ValueError(f"{what} {name!r} must be 1..{IFNAMSIZ - 1} characters long")
    if name in (".", ".."):
        raise ValueError(f"{what} {name!r} is not allowed")
    if name.startswith("-"):
        raise ValueError(f"{what} {name!r} must not start with '-'")
    for ch in name:
        if ch in "/:" or ch.isspace() or not ch.isprintable():
            raise ValueError(f"{what} {name!r} must not contain '/', ':', whitespace or control characters")
    return name


def validate_mac(mac: str, what: str = "MAC address") -> str:
    """Return ``mac`` normalised to lower case, else raise ValueError."""
    if not isinstance(mac, str) or not _MAC_RE.match(mac.lower()):
        raise ValueError(f"{what} {mac!r} is not of the form aa:bb:cc:dd:ee:ff")
    mac = mac.lower()
    if int(mac[:2], 16) & 1:
        raise ValueError(f"{what} {mac!r} is a multicast address")
    return mac


def tap_mac_for(guest_mac: str) -> str:
    """The MAC libvirt gives a guest's tap: the guest MAC with its first octet replaced by 0xfe."""
    return "fe" + validate_mac(guest_mac)[2:]


def _validate_mtu(mtu: int | None) -> int | None:
    if mtu is None:
        return None
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535:
        raise ValueError(f"MTU {mtu!r} must be an integer in 68..65535")
    return mtu


def _check_lab_address(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, text: str) -> None:
    if not any(addr in net for net in LAB_NETWORKS):
        allowed = ", ".join(str(n) for n in LAB_NETWORKS)
        raise ValueError(f"address {text!r} is outside the lab networks ({allowed})")


def _lab_interface(cidr: str) -> ipaddress.IPv4Interface:
    try:
        iface = ipaddress.ip_interface(cidr)
    except ValueError:
        raise ValueError(f"{cidr!r} is not an address with prefix length, like 203.0.113.10/24") from None
    if "/" not in str(cidr):
        raise ValueError(f"{cidr!r} has no prefix length (like 203.0.113.10/24)")
    _check_lab_address(iface.ip, cidr)
    if iface.network.prefixlen < 24:
        raise ValueError(f"{cidr!r}: prefix shorter than /24 reaches outside the lab networks")
    return iface  # type: ignore[return-value]


def _lab_address(text: str) -> ipaddress.IPv4Address:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None
    _check_lab_address(addr, text)
    return addr  # type: ignore[return-value]


def _validate_file_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not name or len(name) > 200:
        raise ValueError(f"{what} {name!r} must be a non-empty string of at most 200 characters")
    if "/" in name or "\0" in name or name.startswith("."):
        raise ValueError(f"{what} {name!r} must not contain '/' or NUL, nor start with '.'")
    return name


def tool(name: str) -> str:
    """Absolute path of a command (PATH first, then the sbin/bin directories hooks often lack)."""
    found = shutil.which(name)
    if found:
        return found
    for d in _TOOL_DIRS:
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            return path
    raise RuntimeError(f"command {name!r} not found (install iproute2/procps)")


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return " / ".join(lines)[:500] or "(no error output)"
