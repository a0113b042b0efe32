"""The dispatcher: turns any event (netlink, libvirt, NetworkManager, hook, udev, timer) into a
reconcile request for the affected bridges, coalesced. Events only say *what changed*; the reconcile
they lead to observes the whole relevant state afresh.

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
        self.vm_bridges: set = set()
        self.mac_bridges: dict = {}  # VM MAC -> {bridge}
        self.index_name: dict = {}  # ifindex -> name, learned from link events and observations
        self._pending: Optional[set] = set()  # None = everything
        self._reasons: list = []
        self._first = self._last = None

    def set_inventory(self, nics: Iterable) -> None:
        self.tap_bridge, self.vm_bridges, self.mac_bridges = {}, set(), {}
        for nic in nics:
            if not nic.bridge:
                continue
            self.vm_bridges.add(nic.bridge)
            if nic.tap:
                self.tap_bridge[nic.tap] = nic.bridge
            self.mac_bridges.setdefault(nic.mac, set()).add(nic.bridge)

    def set_links(self, links: dict) -> None:
        self.index_name = {link.index: name for name, link in links.items()}

    # --- events -----------------------------------------------------------------------------
    def submit(self, bridges: Optional[Iterable[str]], reason: str) -> None:
        """Ask for a reconcile of these bridges (None: all)."""
        now = self.clock()
        if bridges is ALL or self._pending is ALL:
            self._pending = ALL
        else:
            self._pending.update(bridges)
            if not bridges:
                return
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
            elif ev.name:
                self.index_name[ev.index] = ev.name
            names = {n for n in (ev.name, old) if n}
            hit = {self.tap_bridge[n] for n in names if n in self.tap_bridge}
            hit |= {n for n in names if n in self.vm_bridges}
            master = self.index_name.get(ev.master) if ev.master else None
            if master in self.vm_bridges:
                hit.add(master)
            if hit:
                self.submit(hit, f"link {ev.action} {'/'.join(sorted(names))}")
        elif ev.kind == "fdb":
            bridges = self.mac_bridges.get(ev.mac)
            if bridges:
                self.submit(bridges, f"fdb {ev.action} {ev.mac}")

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
        """(bridges or None for all, reasons) and reset."""
        pending, reasons = self._pending, self._reasons
        self._pending, self._reasons, self._first, self._last = set(), [], None, None
        return (None if pending is ALL else sorted(pending)), reasons
