"""The two kinds of plugin, each carrying its whole feature (as os-vif's plugins and fail2ban's actions do).

An **Invariant** (policies/) detects: it declares its name, options, the optional facts of the snapshot
it needs, `check(snapshot, options)` (pure: it never touches the host), the manual hint per violation
kind, which healer each kind binds to, and `admit()` for the VM-start decision of the libvirt hook.

A **Healer** (healers/) remedies: it declares the invariants it handles and the kinds of record it
creates, `plan()` (pure: Steps with their undo, executed by the engine through HostOps), `after()` and
`verify()` for the audit and the verification, and `release(record, snapshot)`: the undo of what it
created once its subject is gone — beside the code that created it.

Both are registered in one explicit list (policies.INVARIANTS, healers.HEALERS) plus the entry-point
groups `netmedic.invariants` and `netmedic.healers`, so a site can ship its own in a separate package.
The engine, the daemon, the hooks and diagnose name no invariant and no healer: they use this interface.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Optional

# The optional facts an invariant may ask observe() for (Snapshot fields read only when needed).
FACTS = frozenset({"addresses", "port_vlans", "nat_rules", "dnsmasq", "firewall",
                   "bridge_addr", "conntrack", "kernel_events", "evpn_fdb", "stp_ports",
                   "libvirt_firewall", "ipv6_ra"})
MODES = ("observe", "enforce")


@dataclasses.dataclass(frozen=True)
class Admission:
    """An invariant's verdict on a VM start (the libvirt hook's `prepare`): None from admit() = no opinion."""

    refuse: bool  # True only when the policy explicitly says so (never for a netmedic bug)
    reason: str
    fields: dict  # for the audit line


@dataclasses.dataclass(frozen=True)
class Release:
    """A healer's answer to "may this record go?": why, and the Steps that remove what it created
    (empty when the host already took it away, e.g. the tap is gone and took its pin with it)."""

    reason: str
    steps: tuple = ()


class Invariant(abc.ABC):
    NAME: str = ""
    DESCRIPTION: str = ""
    DEFAULT_ENABLED: bool = True
    DEFAULT_MODE: str = "observe"
    OPTIONS: dict = {}  # option name -> policies.config.Option
    REMEDIES: dict = {}  # violation kind -> healer name, None (report only), or {remedy option value: healer}
    NEEDS: frozenset = frozenset()  # optional facts (FACTS) this invariant reads from the snapshot
    HINTS: dict = {}  # violation kind -> the manual fix, for kinds netmedic does not heal
    # Kinds only an observation of every host link can judge (a scoped pass neither finds nor clears them).
    HOST_WIDE_KINDS: frozenset = frozenset()

    @abc.abstractmethod
    def check(self, snapshot, options: dict) -> list:
        """Every Violation in the snapshot. Pure: reads the snapshot only."""

    def remedy(self, violation, options: dict) -> Optional[str]:
        """The healer name the policy binds to this violation, or None (report only)."""
        remedy = self.REMEDIES.get(violation.kind)
        if isinstance(remedy, dict):
            remedy = remedy.get(options.get("remedy"))
        return remedy

    def hint(self, violation) -> str:
        return self.HINTS.get(violation.kind) or violation.evidence.get("fix") or "see docs/invariants.md"

    def admit(self, dom, others: dict, host_macs: dict, options: dict, in_scope) -> Optional[Admission]:
        """The VM-start decision for domain `dom` (others: name -> Domain of every running domain;
        host_macs: ifname -> MAC). Default: no opinion."""
        return None


class Healer(abc.ABC):
    NAME: str = ""
    HANDLES: tuple = ()  # invariant names
    RECORDS: tuple = ()  # record kinds this healer creates (and releases); default: (NAME,)
    NEEDS: frozenset = frozenset()  # optional facts (FACTS) release() reads for its records
    # Aspects of its record's port no other remedy may change while the record exists ("port_state").
    HOLDS: tuple = ()

    @abc.abstractmethod
    def plan(self, violation, snapshot, options: dict):
        """(Plan, "") or (None, why not). Pure."""

    def after(self, snapshot, violation) -> dict:
        """What the subject looks like after the fix (the audit's `after`)."""
        return {}

    def verify(self, snapshot, violation) -> Optional[bool]:
        """True/False when this healer judges its own fix; None: fixed when the invariant no longer
        reports the violation."""
        return None

    def release(self, record: dict, snapshot, force: bool = False) -> Optional[Release]:
        """A Release when the record's subject is gone (force: the VM stopped, release whatever it is);
        None to keep it. Default: records are kept."""
        return None

    def record_kinds(self) -> tuple:
        return self.RECORDS or (self.NAME,)


def validate_invariant(inv) -> Invariant:
    """Refuse a malformed plugin at registration (a plugin bug, not the admin's)."""
    where = f"invariant plugin {type(inv).__module__}.{type(inv).__name__}"
    if not isinstance(inv, Invariant):
        raise TypeError(f"{where}: not a netmedic.plugin.Invariant")
    if not inv.NAME or not isinstance(inv.NAME, str):
        raise TypeError(f"{where}: NAME must be a non-empty string")
    if inv.DEFAULT_MODE not in MODES:
        raise TypeError(f"{where}: DEFAULT_MODE must be one of {', '.join(MODES)}")
    unknown = set(inv.NEEDS) - FACTS
    if unknown:
        raise TypeError(f"{where}: unknown facts in NEEDS: {', '.join(sorted(unknown))}")
    return inv


def validate_healer(healer) -> Healer:
    where = f"healer plugin {type(healer).__module__}.{type(healer).__name__}"
    if not isinstance(healer, Healer):
        raise TypeError(f"{where}: not a netmedic.plugin.Healer")
    if not healer.NAME or not isinstance(healer.NAME, str):
        raise TypeError(f"{where}: NAME must be a non-empty string")
    return healer


def entry_points(group: str) -> list:
    """The objects registered under an entry-point group (third-party plugins), loaded."""
    try:
        from importlib.metadata import entry_points as eps
    except ImportError:  # pragma: no cover
        return []
    try:
        found = eps(group=group)  # 3.10+
    except TypeError:  # 3.9
        found = eps().get(group, [])
    out = []
    for ep in found:
        obj = ep.load()
        out.append(obj() if isinstance(obj, type) else obj)
    return out
