"""dispatcher/ is the design card's coalescer: events in, coalesced reconcile requests out (nothing else).

The dispatcher: turns any event (netlink, libvirt, NetworkManager, hook, udev, timer) into a
reconcile request for the affected bridges, coalesced. Events only say *what changed*; the reconcile
they lead to observes the whole relevant state afresh.

A request names bridges and, when the event was about one VM (its tap appeared or changed, its MAC
moved in the fdb), that VM: such a request is narrowed to the VM, so the pass looks at its taps and
MACs only; anything else about the bridge (the bridge itself, an uplink, a timer) widens it to the
whole bridge.

Cheap by design: an fdb event for a MAC that belongs to no VM, or a link event for an interface that
is neither a VM tap nor a VM bridge, is dropped after one dict lookup, so an event storm cannot starve
the reconcile.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, Optional

ALL = None  # a request for every bridge


class Dispatcher:
    def __init__(self, clock: Callable[[], float] = time.monotonic, debounce: float = 0.005,
                 max_delay: float = 0.05):
        self.clock = clock
        self.debounce = debounce  # wait this long after the last event of a burst ...
        self.max_delay = max_delay  # ... but never longer than this after its first
        self.tap_bridge: dict = {}  # VM tap name -> bridge name
        self.tap_domain: dict = {}  # VM tap name -> domain name
        self.vm_bridges: set = set()
        self.mac_bridges: dict = {}  # VM MAC -> {bridge}
        self.mac_domains: dict = {}  # (bridge, VM MAC) -> {domain}
        self.index_name: dict = {}  # ifindex -> name, learned from link events and observations
        self.index_mac: dict = {}  # ifindex -> the interface's MAC, likewise
        self._pending: Optional[set] = set()  # None = everything
        self._narrow: dict = {}  # bridge in _pending -> the domains it is narrowed to (absent: whole bridge)
        self._reasons: list = []
        self._first = self._last = None
        # name -> True when the inventory was refreshed and the maps now know more (the daemon's): asked
        # about an interface that joins a bridge but is no known VM tap (a VM's XML written meanwhile)
        self.refresh_inventory: Optional[Callable[[str], bool]] = None

    def set_inventory(self, nics: Iterable) -> None:
        self.tap_bridge, self.tap_domain, self.vm_bridges, self.mac_bridges = {}, {}, set(), {}
        self.mac_domains = {}
        for nic in nics:
            if not nic.bridge:
                continue
            self.vm_bridges.add(nic.bridge)
            if nic.tap:
                self.tap_bridge[nic.tap] = nic.bridge
                self.tap_domain[nic.tap] = nic.domain
            self.mac_bridges.setdefault(nic.mac, set()).add(nic.bridge)
            self.mac_domains.setdefault((nic.bridge, nic.mac), set()).add(nic.domain)

    def set_links(self, links: dict, complete: bool = True) -> None:
        """ifindex -> name from an observation: all of it (complete) or what a scoped pass saw."""
        if complete:
            self.index_name, self.index_mac = {}, {}
        self.index_name.update({link.index: name for name, link in links.items()})
        self.index_mac.update({link.index: link.mac for link in links.values()})

    def host_macs(self) -> dict:
        """Interface name -> MAC of every link the events and observations told of (all of them once a
        full pass ran, kept current by link events: the caller drains the events first)."""
        return {self.index_name[i]: mac for i, mac in self.index_mac.items()
                if i in self.index_name and mac and mac != "00:00:00:00:00:00"}

    # --- events -----------------------------------------------------------------------------
    def submit(self, bridges: Optional[Iterable[str]], reason: str, domains: Optional[dict] = None) -> None:
        """Ask for a reconcile of these bridges (None: all). `domains` (bridge -> domain names) narrows
        a bridge to those VMs, unless it is (or gets) asked for whole."""
        now = self.clock()
        if bridges is ALL or self._pending is ALL:
            self._pending = ALL
            self._narrow = {}
        else:
            bridges = set(bridges)
            if not bridges:
                return
            for b in bridges:
                if domains and b in domains and (b not in self._pending or b in self._narrow):
                    self._narrow.setdefault(b, set()).update(domains[b])
                else:
                    self._narrow.pop(b, None)
            self._pending.update(bridges)
        if self._first is None:
            self._first = now
        self._last = now
        if len(self._reasons) < 20:
            self._reasons.append(reason)

    def netlink(self, ev) -> None:
        """One nl.Event."""
        if ev.kind == "link":
            old = self.index_name.get(ev.index)
            if ev.action == "del":
                self.index_name.pop(ev.index, None)
                self.index_mac.pop(ev.index, None)
            else:
                if ev.name:
                    self.index_name[ev.index] = ev.name
                if ev.mac:
                    self.index_mac[ev.index] = ev.mac
            names = {n for n in (ev.name, old) if n}
            reason = f"link {ev.action} {'/'.join(sorted(names))}"
            master = self.index_name.get(ev.master) if ev.master else None
            if (master and ev.action == "new" and ev.name and ev.name not in self.tap_bridge
                    and ev.name not in self.vm_bridges and self.refresh_inventory is not None):
                self.refresh_inventory(ev.name)  # a port joined a bridge: perhaps a VM the maps predate
            taps = [n for n in names if n in self.tap_bridge]
            if taps and not any(n in self.vm_bridges for n in names):
                # A VM's tap: that VM on the bridge the XML names (and on the one it is a port of now).
                narrow: dict = {}
                for n in taps:
                    for b in {self.tap_bridge[n], master} - {None}:
                        if b in self.vm_bridges:
                            narrow.setdefault(b, set()).add(self.tap_domain[n])
                self.submit(set(narrow), reason, domains=narrow)
                return
            hit = {n for n in names if n in self.vm_bridges}
            if master in self.vm_bridges:
                hit.add(master)
            if hit:
                self.submit(hit, reason)
        elif ev.kind == "fdb":
            bridges = self.mac_bridges.get(ev.mac)
            if bridges:
                self.submit(bridges, f"fdb {ev.action} {ev.mac}",
                            domains={b: self.mac_domains.get((b, ev.mac), set()) for b in bridges})

    # --- the reconcile request ---------------------------------------------------------------
    def due(self) -> bool:
        if self._first is None:
            return False
        now = self.clock()
        return now - self._last >= self.debounce or now - self._first >= self.max_delay

    def wait_time(self) -> Optional[float]:
        """Seconds until due() turns true, None when nothing is pending."""
        if self._first is None:
            return None
        now = self.clock()
        return max(0.0, min(self._last + self.debounce, self._first + self.max_delay) - now)

    def take(self):
        """(bridges or None for all, reasons) and reset (narrowed bridges are taken whole)."""
        bridges, _domains, reasons = self.take_scoped()
        return bridges, reasons

    def take_scoped(self):
        """(bridges or None for all, {bridge: domains} for the narrowed ones or None, reasons) and reset."""
        pending, narrow, reasons = self._pending, self._narrow, self._reasons
        self._pending, self._narrow, self._reasons, self._first, self._last = set(), {}, [], None, None
        if pending is ALL:
            return None, None, reasons
        return sorted(pending), ({b: sorted(d) for b, d in sorted(narrow.items())} or None), reasons
