"""The daemon's short memory of fdb moves: for each MAC, the last ports the bridges learned it on (a
bounded ring per MAC, a bounded number of MACs), so `netmedic diagnose` can show the founding case
after the fact — a VM MAC that moved between its tap and the uplink hundreds of times a minute.

Fed from the netlink fdb events the daemon already reads; asked through the daemon's socket
({"request": "fdb_moves", "mac": MAC}). Costs a dict lookup per fdb event."""
from __future__ import annotations

import collections
import time
from typing import Optional

PER_MAC = 32  # moves kept per MAC
MACS = 4096  # MACs kept (the least recently moved are forgotten first)


class FdbMoves:
    def __init__(self, per_mac: int = PER_MAC, macs: int = MACS):
        self.per_mac, self.macs = per_mac, macs
        self.last: collections.OrderedDict = collections.OrderedDict()  # mac -> (port ifindex, bridge ifindex)
        self.moves: dict = {}  # mac -> deque of {"ts", "from", "to", "bridge"}
        self.counts: dict = {}  # mac -> moves seen since the daemon started

    def note(self, ev, names: Optional[dict] = None) -> None:
        """One netlink event: an fdb entry (re)learned on a port other than the MAC's previous one is a move."""
        if ev.kind != "fdb" or ev.action != "new" or not ev.mac:
            return
        mac, port = ev.mac, (ev.index, ev.master)
        prev = self.last.get(mac)
        self.last[mac] = port
        self.last.move_to_end(mac)
        if prev is not None and prev[0] != port[0]:
            names = names or {}
            ring = self.moves.get(mac)
            if ring is None:
                ring = self.moves[mac] = collections.deque(maxlen=self.per_mac)
            ring.append({"ts": round(time.time(), 3), "from": names.get(prev[0], prev[0]),
                         "to": names.get(port[0], port[0]), "bridge": names.get(ev.master, ev.master)})
            self.counts[mac] = self.counts.get(mac, 0) + 1
        while len(self.last) > self.macs:
            old, _ = self.last.popitem(last=False)
            self.moves.pop(old, None)
            self.counts.pop(old, None)

    def answer(self, mac: str, limit: int = 20) -> dict:
        mac = str(mac).lower()
        ring = list(self.moves.get(mac, ()))[-limit:]
        now = time.time()
        return {"ok": True, "mac": mac, "moves_total": self.counts.get(mac, 0),
                "moves_last_60s": sum(1 for m in self.moves.get(mac, ()) if now - m["ts"] <= 60),
                "recent": ring, "known": mac in self.last}
