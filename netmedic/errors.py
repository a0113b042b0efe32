"""Typed errors, by who must act (the admin's input, a missing dependency, the host, or a netmedic bug).

Every error netmedic shows an admin is one line that names the file/line or field at fault.
"""
from __future__ import annotations


class NetmedicError(Exception):
    """Base class. str(err) is the one-line message shown to the admin."""


class InputError(NetmedicError, ValueError):
    """The admin's input is wrong (policy file, domain/network XML, command line): the admin must act."""

    def __init__(self, message: str, source: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.source = source
        self.line = line
        self.field = field
        where = ""
        if source:
            where = source if line is None else f"{source}:{line}"
        parts = [p for p in (where, f"field '{field}'" if field else "") if p]
        super().__init__((": ".join(parts) + ": " if parts else "") + message)


class PolicyError(InputError):
    """The policy file is invalid."""


class InventoryError(InputError):
    """A libvirt domain or network XML file is invalid or hostile."""


class DependencyError(NetmedicError):
    """Something netmedic needs is missing on this host (a command, a kernel feature, a permission)."""


class HostError(NetmedicError):
    """The kernel refused an operation."""


class VerificationFailed(NetmedicError):
    """A heal was applied but the host did not reach the intended state."""
