"""fdb_ownership: a running VM's MAC, on its bridge, belongs to its own tap — and is held there so that
learning cannot move it to another port (the founding case: a round-robin bond reflects the VM's
broadcasts and the bridge learns the MAC on the uplink).

Two mechanisms hold it (option `remedy`):
- `pin-sticky` (healer fdb_pin): a `static sticky` fdb entry on the tap. Needs a kernel that keeps the
  sticky flag (Linux 5.x+); on older kernels the pin is a plain `static` entry that learning still moves.
- `guard` (healer reflection_guard): netmedic's nf_tables bridge table drops frames with the VM's MAC
  that enter any other port before the bridge learns from them; the entry stays a dynamic one on the tap.
  Any kernel with nf_tables' bridge family (3.18+).
- `pin-and-guard`: both (defense in depth); `auto` (default): the pin where the kernel keeps the sticky
  flag, the guard where it does not. The kernel's answer is read back from netmedic's first pin
  (Snapshot.kernel["fdb_sticky"]); until then `auto` pins.
"""
from __future__ import annotations

from netmedic.model import Subject, Violation
from netmedic.plugin import Invariant
from netmedic.policies.config import Option

REMEDY_CHOICES = ("auto", "pin-sticky", "guard", "pin-and-guard")
DROPS_HINT = ("frames carrying a VM's MAC arrive on another port of the bridge and netmedic's reflection guard "
              "drops them: either the uplink reflects the VM's frames (a round-robin bond or team, balance-rr: "
              "use an LACP/active-backup mode on the host and the switch) or another machine behind the uplink "
              "uses the MAC (`netmedic diagnose DOMAIN --probe` tells them apart; hop 5)")


def _entry_evidence(snapshot, entry) -> dict:
    if entry is None:
        return {"fdb_entry": None}
    return {"fdb_entry": {"port": snapshot.name_of(entry.port_index) or entry.port_index,
                          "static": entry.static, "sticky": entry.sticky, "local": entry.local}}


def mechanism(snapshot, options: dict) -> tuple:
    """(chosen mechanism, why, detected: the kernel's answer settled it)."""
    remedy = options.get("remedy", "auto")
    sticky = (getattr(snapshot, "kernel", None) or {}).get("fdb_sticky")
    if remedy == "auto":
        if sticky is True:
            return "pin-sticky", "the kernel keeps the sticky flag (netmedic's first pin read back static sticky)", True
        if sticky is False:
            return "guard", ("the kernel does not keep the sticky flag (netmedic's first pin read back a plain "
                             "static entry, which learning moves): the reflection guard holds the MACs"), True
        return "pin-sticky", "not known yet whether the kernel keeps the sticky flag: the first pin tells", False
    if sticky is False and remedy in ("pin-sticky", "pin-and-guard"):
        if remedy == "pin-and-guard":
            return "guard", "pin-and-guard set by the policy, but this kernel does not keep the sticky flag: the " \
                            "guard alone", True
        return "pin-sticky", ("pin-sticky set by the policy, but this kernel does not keep the sticky flag: pins do "
                              "not hold here (set remedy: guard or auto)"), True
    return remedy, "set by the policy", False


class FdbOwnership(Invariant):
    NAME = "fdb_ownership"
    DESCRIPTION = "a VM's MAC is in its bridge's fdb on its own tap, held there by a sticky pin or the reflection guard"
    DEFAULT_ENABLED = True
    DEFAULT_MODE = "enforce"
    OPTIONS = {
        "require_pin": Option(True, "report a VM MAC that is not held on its tap (pinned static sticky, or guarded) "
                              "as a risk: learning can move it — off: only report a MAC already learned elsewhere",
                              type=bool),
        "remedy": Option("auto", "how to hold a VM MAC on its tap: pin-sticky (a static sticky fdb entry), guard "
                         "(netmedic's nf_tables bridge table drops the MAC's frames entering other ports), "
                         "pin-and-guard (both), auto (pin-sticky where the kernel keeps the sticky flag, guard "
                         "where it does not)", choices=REMEDY_CHOICES),
    }
    HOP = "fdb"  # netmedic diagnose shows its violations on this hop ...
    HOPS = {"guard_drops": "uplink"}  # ... the guard's drops on the uplink's: something behind it sends them
    # poisoned: by the mechanism chosen (the check puts it in the evidence: `auto` resolves per host).
    REMEDIES = {"poisoned": {"pin-sticky": "fdb_pin", "guard": "reflection_guard", "pin-and-guard": "fdb_pin"},
                "unpinned": "fdb_pin", "unguarded": "reflection_guard", "guard_drops": None}
    NEEDS = frozenset({"guard"})
    HINTS = {"guard_drops": DROPS_HINT}

    def remedy(self, violation, options):
        remedy = self.REMEDIES.get(violation.kind)
        if isinstance(remedy, dict):
            return remedy.get(violation.evidence.get("mechanism") or mechanism(None, options)[0])
        return remedy

    def choice(self, snapshot, options) -> dict:
        chosen, why, detected = mechanism(snapshot, options)
        return {"remedy": options.get("remedy", "auto"), "chosen": chosen, "why": why, "detected": detected}

    def check(self, snapshot, options) -> list:
        chosen = mechanism(snapshot, options)[0]
        pin, guard = chosen in ("pin-sticky", "pin-and-guard"), chosen in ("guard", "pin-and-guard")
        table = getattr(snapshot, "guard", None)
        # The MAC's owner on its bridge, among every NIC that uses it (a clone's narrowed pass included):
        # a MAC two VM NICs share is judged for the older NIC only, never for the duplicate.
        owners = {}
        for nic in snapshot.nics():
            owner = snapshot.mac_owner(nic.bridge, nic.mac)
            if owner is not None:
                owners[(nic.bridge, nic.mac)] = owner
        out = []
        for (bridge, mac), nic in sorted(owners.items()):
            br, tap = snapshot.bridge(bridge), snapshot.link(nic.tap)
            if br is None or tap is None or tap.master != br.index:
                continue  # detached or missing tap: port_forwarding's business
            entry = snapshot.fdb.get((bridge, mac))
            guarded = table is not None and table.guards(bridge, mac, nic.tap)
            poisoned = entry is not None and entry.port_index != tap.index
            unpinned = not poisoned and pin and options.get("require_pin", True) and (
                entry is None or not (entry.sticky and entry.static))
            unguarded = guard and options.get("require_pin", True) and not guarded
            if not (poisoned or unpinned or unguarded):
                continue  # held: the common case, no evidence to build
            subject = Subject(bridge=bridge, port=nic.tap, domain=nic.domain, mac=mac)
            evidence = {"expected_port": nic.tap, **_entry_evidence(snapshot, entry), "mechanism": chosen}
            if table is not None and (guard or table.present):
                evidence["guard"] = {"guarded": guarded, "drops": table.drops(bridge)}
            if poisoned:
                where = snapshot.name_of(entry.port_index) or f"ifindex {entry.port_index}"
                out.append(Violation(self.NAME, "poisoned", subject,
                                     f"{bridge} has learned VM {nic.domain}'s MAC {mac} on {where}, not on its "
                                     f"tap {nic.tap}: frames for the VM are sent out {where}", evidence))
                if chosen == "guard":
                    continue  # the guard's heal of the poisoning guards the MAC too
            elif unpinned:
                state = "absent" if entry is None else "learned but not pinned"
                out.append(Violation(self.NAME, "unpinned", subject,
                                     f"VM {nic.domain}'s MAC {mac} is {state} on {nic.tap}: learning can move "
                                     f"it to another port of {bridge}", evidence, severity="risk"))
            if unguarded:
                why = (f"netmedic's guard table could not be read ({table.error})" if table is not None and table.error
                       else "no frame with it entering another port is dropped")
                out.append(Violation(self.NAME, "unguarded", subject,
                                     f"VM {nic.domain}'s MAC {mac} is not guarded on {bridge}: {why}, so a "
                                     f"reflected frame can teach the bridge another port", evidence, severity="risk"))
        if table is not None:
            for bridge in sorted({b for b, _m in owners}):
                drops = table.drops(bridge)
                if drops and snapshot.observed(bridge):
                    out.append(Violation(
                        self.NAME, "guard_drops", Subject(bridge=bridge),
                        f"netmedic's reflection guard on {bridge} has dropped {drops} frame(s) carrying a VM's MAC "
                        "that entered another port: a reflecting uplink or a remote duplicate",
                        {"drops": drops, "bytes": table.bridges[bridge].drop_bytes, "fix": DROPS_HINT},
                        severity="risk"))
        return out


PLUGIN = FdbOwnership()
