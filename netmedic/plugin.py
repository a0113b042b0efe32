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
import sys
from typing import Optional

# The optional facts an invariant may ask observe() for (Snapshot fields read only when needed).
FACTS = frozenset({"addresses", "port_vlans", "nat_rules", "dnsmasq", "firewall", "counters", "routes", "direct",
                   "bridge_addr", "conntrack", "kernel_events", "evpn_fdb", "stp_ports",
                   "libvirt_firewall", "ipv6_ra", "guard"})
MODES = ("observe", "enforce")
# The hops of `netmedic diagnose` (docs/diagnose.md) a violation can be shown on. A bridged NIC's path:
# nic, tap, port, fdb, duplicates, uplink, l3, ip, probe, dhcp; a macvtap (direct) NIC's: nic, direct
# (the macvtap device and its parent), isolation (host<->guest), l3, ip, probe.
HOP_NAMES = ("nic", "tap", "port", "fdb", "duplicates", "uplink", "l3", "ip", "probe", "dhcp", "direct",
             "isolation")


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
    # Where `netmedic diagnose` shows this invariant's violations (one of HOP_NAMES): HOPS names the hop
    # of some kinds, HOP the hop of every other kind. Diagnose names no invariant: it reads these.
    HOP: str = "nic"
    HOPS: dict = {}  # violation kind -> hop name

    @abc.abstractmethod
    def check(self, snapshot, options: dict) -> list:
        """Every Violation in the snapshot. Pure: reads the snapshot only."""

    def remedy(self, violation, options: dict) -> Optional[str]:
        """The healer name the policy binds to this violation, or None (report only)."""
        remedy = self.REMEDIES.get(violation.kind)
        if isinstance(remedy, dict):
            remedy = remedy.get(options.get("remedy"))
        return remedy

    def hop(self, violation) -> str:
        """The diagnose hop this violation belongs to."""
        return self.HOPS.get(violation.kind, self.HOP)

    def hint(self, violation) -> str:
        return self.HINTS.get(violation.kind) or violation.evidence.get("fix") or "see docs/invariants.md"

    def choice(self, snapshot, options: dict) -> Optional[dict]:
        """What an option that depends on the host (a remedy `auto`) resolves to here, from the snapshot's
        facts (Snapshot.kernel: what the kernel showed): e.g. {"remedy": "auto", "chosen": "guard",
        "why": ...}. Audited once when it changes, shown by `status` and `diagnose`. Default: None."""
        return None

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


def warn(message: str) -> None:
    print(f"netmedic: warning: {message}", file=sys.stderr)


def _validate(obj, base: type, kind: str):
    """Refuse a malformed plugin at registration (a plugin bug, not the admin's)."""
    where = f"{kind} plugin {type(obj).__module__}.{type(obj).__name__}"
    if not isinstance(obj, base):
        raise TypeError(f"{where}: not a netmedic.plugin.{base.__name__}")
    if not obj.NAME or not isinstance(obj.NAME, str):
        raise TypeError(f"{where}: NAME must be a non-empty string")
    return where


def validate_invariant(inv) -> Invariant:
    where = _validate(inv, Invariant, "invariant")
    if inv.DEFAULT_MODE not in MODES:
        raise TypeError(f"{where}: DEFAULT_MODE must be one of {', '.join(MODES)}")
    unknown = set(inv.NEEDS) - FACTS
    if unknown:
        raise TypeError(f"{where}: unknown facts in NEEDS: {', '.join(sorted(unknown))}")
    bad = {h for h in (inv.HOP, *inv.HOPS.values()) if h not in HOP_NAMES}
    if bad:
        raise TypeError(f"{where}: unknown diagnose hop(s) {', '.join(sorted(bad))} (known: {', '.join(HOP_NAMES)})")
    return inv


def validate_healer(healer) -> Healer:
    _validate(healer, Healer, "healer")
    return healer


def register_entry_points(group: str, registry: dict, validate) -> None:
    """Add the plugins of an entry-point group to a registry, after the built-in ones (a name already
    taken is not replaced); a malformed one is skipped with a warning."""
    for obj in entry_points(group):
        try:
            obj = validate(obj)
        except TypeError as exc:
            warn(f"{exc}: skipped")
            continue
        registry.setdefault(obj.NAME, obj)


def entry_points(group: str) -> list:
    """The objects registered under an entry-point group (third-party plugins), loaded. A plugin that
    fails to load is skipped with a one-line warning on stderr (its bug must not stop netmedic)."""
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
        try:
            obj = ep.load()
            out.append(obj() if isinstance(obj, type) else obj)
        except Exception as exc:  # noqa: BLE001 - a third party's bug
            warn(f"plugin {ep.name} ({group}): {exc!r}: skipped")
    return out


_LOADED = False


def load_plugins() -> None:
    """Add the third-party invariants and healers of the entry-point groups to the registries (once)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from netmedic import healers, policies

    policies.load_entry_points()
    healers.load_entry_points()
