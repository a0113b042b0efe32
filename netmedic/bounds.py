"""The bounds on healing: per-subject rate limit, global rate limit, attempt cap with exponential
backoff, and a circuit breaker for subjects whose every fix is undone within seconds (a fight).

Pure logic over a JSON-able dict (persisted in the state file) and an injected clock, so it is
tested deterministically.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

from netmedic.policies.config import Limits

GLOBAL = "__global__"
BREAKER_FIRST_PAUSE = 30.0  # seconds of the first pause of an open breaker (doubling up to the cooldown)


class Guard:
    def __init__(self, store: dict, clock: Callable[[], float] = time.time):
        self.store = store
        self.clock = clock

    def _subject(self, key: str) -> dict:
        return self.store.setdefault(key, {"actions": [], "fixes": [], "failures": 0,
                                           "next_try": 0.0, "open_until": 0.0})

    @staticmethod
    def _recent(times: list, now: float, window: float) -> list:
        return [t for t in times if now - t < window]

    def admit(self, key: str, limits: Limits) -> tuple:
        """(True, '') when an action on this subject may run now, else (False, why).

        Called when the subject is found broken. The circuit breaker tells a fight from a routine: a
        fix undone within `breaker_hold` seconds (another agent reverting netmedic) counts against the
        subject; a fix that held until the next discrete event broke it again (a bridge re-created,
        NetworkManager re-activating it, a VM restarted) does not, however often that happens, and ends
        the streak. Only `breaker_trips` quick undos in a row within `breaker_window` open the breaker. Open, it pauses for a
        while (30 s at first, doubling on each re-open up to `breaker_cooldown`), then allows one trial
        fix: undone quickly again, it re-opens; held, the fight is over and the breaker closes."""
        now = self.clock()
        s = self._subject(key)
        if s["open_until"] > now:
            return False, (f"circuit breaker open: fixed and undone within {limits.breaker_hold:g}s "
                           f"{limits.breaker_trips} times within {limits.breaker_window:g}s (another agent "
                           f"is reverting netmedic), paused until {_iso(s['open_until'])}")
        last = s.pop("last_fix", None)
        undone = last is not None and now - last < limits.breaker_hold
        s["fixes"] = self._recent(s["fixes"], now, limits.breaker_window)  # the streak of quick undos
        if undone:
            s["fixes"].append(now)
        elif last is not None:  # a fix held: whatever came before was no fight (a re-activation
            s["fixes"] = []     # that detaches a tap twice undoes the first fix at once, not the second)
        trial = bool(s.get("trial"))
        if trial and last is not None and not undone:  # the trial fix held: the fight is over
            trial = s["trial"] = False
            s["pauses"] = 0
            s["fixes"] = []
            s["closed"] = True  # the engine may report the close once (took_close)
        if (trial and undone) or len(s["fixes"]) >= limits.breaker_trips:
            pause = min(limits.breaker_cooldown, BREAKER_FIRST_PAUSE * (2 ** s.get("pauses", 0)))
            s["pauses"] = s.get("pauses", 0) + 1
            s["open_until"] = now + pause
            s["fixes"] = []
            s["tripped"] = not trial  # the engine reports the trip once; a failed trial is no news
            s["trial"] = True
            if trial:
                return False, (f"circuit breaker re-opened: the trial fix was undone within "
                               f"{limits.breaker_hold:g}s again; paused for {pause:g}s")
            return False, (f"circuit breaker tripped: each of {limits.breaker_trips} fixes within "
                           f"{limits.breaker_window:g}s was undone within {limits.breaker_hold:g}s (another "
                           f"agent is reverting netmedic); paused for {pause:g}s, then one trial fix")
        if s["failures"] >= limits.max_attempts and s["next_try"] > now:
            return False, (f"gave up after {s['failures']} failed attempts; one more try at "
                           f"{_iso(s['next_try'])}")
        if s["next_try"] > now:
            return False, f"backing off after a failed attempt until {_iso(s['next_try'])}"
        s["actions"] = self._recent(s["actions"], now, limits.rate_window)
        if len(s["actions"]) >= limits.rate_actions:
            return False, f"rate limit: {limits.rate_actions} actions per {limits.rate_window:g}s on this subject"
        g = self._subject(GLOBAL)
        g["actions"] = self._recent(g["actions"], now, limits.global_window)
        if len(g["actions"]) >= limits.global_actions:
            return False, f"global rate limit: {limits.global_actions} actions per {limits.global_window:g}s"
        return True, ""

    def took_trip(self, key: str) -> bool:
        """True once after the breaker tripped for this subject."""
        s = self._subject(key)
        return bool(s.pop("tripped", False))

    def acted(self, key: str, domain: Optional[str] = None) -> None:
        now = self.clock()
        s = self._subject(key)
        s["actions"].append(now)
        if domain:
            s["domain"] = domain  # so that the VM's stop can forget it (forget_domain)
        self._subject(GLOBAL)["actions"].append(now)

    def took_close(self, key: str) -> bool:
        """True once after the breaker of this subject closed (its trial fix held)."""
        s = self._subject(key)
        return bool(s.pop("closed", False))

    def is_open(self, key: str) -> bool:
        s = self.store.get(key)
        return bool(s and (s["open_until"] > self.clock() or s.get("trial")))

    def succeeded(self, key: str) -> None:
        s = self._subject(key)
        s["last_fix"] = self.clock()
        s["failures"] = 0
        s["next_try"] = 0.0

    def failed(self, key: str, limits: Limits) -> None:
        s = self._subject(key)
        s["failures"] += 1
        delay = min(limits.backoff_initial * (2 ** (s["failures"] - 1)), limits.backoff_max)
        if s["failures"] >= limits.max_attempts:  # given up: one more try only after backoff_max
            delay = limits.backoff_max
        s["next_try"] = self.clock() + delay

    def next_retry(self, keys) -> Optional[float]:
        """The earliest end of a backoff or of an open breaker's pause among these subjects (None:
        nothing is waiting), so that a level-triggered loop comes back when a fix may be tried again
        (the breaker's trial fix comes when its pause ends, not at the next resync)."""
        now = self.clock()
        times = [t for k in keys if k in self.store
                 for t in (self.store[k]["next_try"], self.store[k]["open_until"]) if t > now]
        return min(times) if times else None

    def forget(self, key: str) -> None:
        self.store.pop(key, None)

    def forget_domain(self, domain: str) -> list:
        """A VM stopped: what was counted against its subjects (fixes, failures, an open breaker) was
        about taps that are gone. Its next start is a new subject, not a relapse: restarting a VM five
        times in ten minutes must not trip the breaker and leave it unprotected. Returns the keys."""
        keys = [k for k, s in self.store.items() if k != GLOBAL and s.get("domain") == domain]
        for k in keys:
            del self.store[k]
        return keys

    def prune(self, active: set, horizon: float = 86400.0) -> None:
        """Drop subjects with no activity within the horizon that are not active now."""
        now = self.clock()
        for key in list(self.store):
            if key == GLOBAL or key in active:
                continue
            s = self.store[key]
            last = max(s["actions"] + s["fixes"] + [s["open_until"], s["next_try"]], default=0.0)
            if now - last > horizon:
                del self.store[key]


def _iso(ts: Optional[float]) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts or 0))
