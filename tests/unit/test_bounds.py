"""The bounds on healing (netmedic.bounds.Guard), driven by a fake clock: deterministic, instant."""
from __future__ import annotations

import json

import pytest

from netmedic.bounds import GLOBAL, Guard
from netmedic.policies.config import Limits

# Loose defaults so that each test exercises one bound.
LOOSE = dict(rate_actions=1000, rate_window=60.0, global_actions=1000, global_window=60.0, max_attempts=1000,
             backoff_initial=2.0, backoff_max=300.0, breaker_trips=1000, breaker_window=600.0,
             breaker_cooldown=1800.0)


def limits(**kw) -> Limits:
    return Limits(**{**LOOSE, **kw})


class Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def guard(clock):
    return Guard({}, clock)


def act(guard, key, lim) -> bool:
    ok, _ = guard.admit(key, lim)
    if ok:
        guard.acted(key)
    return ok


def test_fresh_subject_is_admitted(guard):
    assert guard.admit("a", limits()) == (True, "")


def test_per_subject_rate_limit(guard, clock):
    lim = limits(rate_actions=3, rate_window=60.0)
    assert [act(guard, "a", lim) for _ in range(3)] == [True, True, True]
    ok, why = guard.admit("a", lim)
    assert not ok and why == "rate limit: 3 actions per 60s on this subject"
    assert guard.admit("b", lim)[0]  # per subject: another one is not limited
    clock.advance(59.9)
    assert not guard.admit("a", lim)[0]
    clock.advance(0.2)  # the window slides past the first three actions
    assert guard.admit("a", lim)[0]


def test_rate_window_slides_action_by_action(guard, clock):
    lim = limits(rate_actions=2, rate_window=10.0)
    assert act(guard, "a", lim)
    clock.advance(6)
    assert act(guard, "a", lim)
    assert not guard.admit("a", lim)[0]
    clock.advance(4.5)  # the first action (10.5 s ago) has left the window, the second has not
    assert act(guard, "a", lim)
    assert not guard.admit("a", lim)[0]


def test_global_rate_limit_across_subjects(guard, clock):
    lim = limits(global_actions=4, global_window=30.0)
    assert [act(guard, f"s{i}", lim) for i in range(4)] == [True] * 4
    ok, why = guard.admit("s9", lim)
    assert not ok and why == "global rate limit: 4 actions per 30s"
    clock.advance(30)
    assert guard.admit("s9", lim)[0]


def test_backoff_doubles_and_caps(guard, clock):
    lim = limits(backoff_initial=2.0, backoff_max=10.0)
    delays = []
    for _ in range(5):
        t0 = clock.now
        guard.failed("a", lim)
        delays.append(guard.store["a"]["next_try"] - t0)
    assert delays == [2.0, 4.0, 8.0, 10.0, 10.0]


def test_backoff_refuses_until_it_expires(guard, clock):
    lim = limits(backoff_initial=2.0, backoff_max=300.0)
    guard.failed("a", lim)
    ok, why = guard.admit("a", lim)
    assert not ok and why.startswith("backing off after a failed attempt until ")
    clock.advance(1.9)
    assert not guard.admit("a", lim)[0]
    clock.advance(0.1)
    assert guard.admit("a", lim)[0]
    guard.failed("a", lim)  # second failure: 4 s
    clock.advance(3.9)
    assert not guard.admit("a", lim)[0]
    clock.advance(0.1)
    assert guard.admit("a", lim)[0]
    assert guard.admit("b", lim)[0]  # the backoff is per subject


def test_success_resets_failures_and_backoff(guard, clock):
    lim = limits(backoff_initial=5.0)
    guard.failed("a", lim)
    guard.failed("a", lim)
    guard.succeeded("a")
    assert guard.admit("a", lim)[0]
    guard.failed("a", lim)  # counting starts again: the first delay
    assert guard.store["a"]["next_try"] - clock.now == 5.0


def test_attempt_cap(guard, clock):
    """After max_attempts failures netmedic gives up on the subject for backoff_max, then tries once
    more (never a permanent lock-out: the host may have changed); a success resets the count."""
    lim = limits(max_attempts=3, backoff_initial=1.0, backoff_max=300.0)
    for i in range(3):
        assert guard.admit("a", lim)[0], i
        guard.acted("a")
        guard.failed("a", lim)
        clock.advance(4.0)  # past the doubling backoffs 1 s and 2 s
    ok, why = guard.admit("a", lim)
    assert not ok and why.startswith("gave up after 3 failed attempts; one more try at ")
    clock.advance(250.0)
    assert not guard.admit("a", lim)[0]
    clock.advance(50.0)
    assert guard.admit("a", lim)[0]  # one more try
    guard.acted("a")
    guard.failed("a", lim)
    assert not guard.admit("a", lim)[0]  # failed again: given up for another backoff_max
    clock.advance(300.0)
    assert guard.admit("a", lim)[0]
    guard.succeeded("a")
    guard.forget("a")  # the subject changed (e.g. the VM restarted)
    assert guard.admit("a", lim)[0]


def test_breaker_trips_after_n_fixes_and_reports_once(guard, clock):
    lim = limits(breaker_trips=3, breaker_window=600.0, breaker_cooldown=1800.0)
    for _ in range(3):
        assert act(guard, "flappy", lim)
        guard.succeeded("flappy")
        clock.advance(60)  # broken again a minute after each fix
    assert not guard.took_trip("flappy")  # nothing tripped yet
    ok, why = guard.admit("flappy", lim)
    assert not ok and why.startswith("circuit breaker tripped: broken again after each of 3 fixes within 600s")
    assert guard.took_trip("flappy") is True
    assert guard.took_trip("flappy") is False  # exactly once
    ok, why = guard.admit("flappy", lim)
    assert not ok and why.startswith("circuit breaker open: ")
    assert guard.took_trip("flappy") is False  # staying open is not a new trip
    assert guard.admit("other", lim)[0]  # per subject


def trip(guard, key, lim) -> None:
    for _ in range(lim.breaker_trips):
        assert act(guard, key, lim)
        guard.succeeded(key)
    assert not guard.admit(key, lim)[0]
    assert guard.took_trip(key)


def test_breaker_stays_open_for_the_cooldown_then_admits(guard, clock):
    lim = limits(breaker_trips=2, breaker_window=100.0, breaker_cooldown=1000.0)
    trip(guard, "a", lim)
    tripped_at = clock.now
    clock.now = tripped_at + 999.0
    ok, why = guard.admit("a", lim)
    assert not ok and why.startswith("circuit breaker open: ")
    clock.now = tripped_at + 1000.0
    assert guard.admit("a", lim) == (True, "")


def test_after_the_cooldown_one_fix_is_allowed_and_a_relapse_reopens_at_once(guard, clock):
    # docs/policy.md: "how long the breaker stays open; then one attempt is allowed again"
    lim = limits(breaker_trips=3, breaker_window=100.0, breaker_cooldown=1000.0)
    trip(guard, "a", lim)
    clock.advance(1000)
    assert act(guard, "a", lim)  # the trial fix
    guard.succeeded("a")
    clock.advance(10)  # broken again straight away: still flapping
    ok, why = guard.admit("a", lim)
    assert not ok and why.startswith("circuit breaker tripped again: ")
    assert guard.took_trip("a") is True and guard.took_trip("a") is False  # a new trip, reported once
    clock.advance(999)
    assert not guard.admit("a", lim)[0]  # a full cooldown again
    clock.advance(1)
    assert guard.admit("a", lim)[0]


def test_a_trial_fix_that_holds_for_a_window_closes_the_breaker(guard, clock):
    lim = limits(breaker_trips=3, breaker_window=100.0, breaker_cooldown=1000.0)
    trip(guard, "a", lim)
    clock.advance(1000)
    assert act(guard, "a", lim)
    guard.succeeded("a")
    clock.advance(100)  # the fix held for a whole window: back to normal, N fixes before a trip
    for _ in range(3):
        assert act(guard, "a", lim)
        guard.succeeded("a")
        clock.advance(1)
    assert not guard.admit("a", lim)[0]
    assert guard.took_trip("a")


def test_a_failed_trial_is_backoff_not_a_trip(guard, clock):
    lim = limits(breaker_trips=2, breaker_window=100.0, breaker_cooldown=1000.0, backoff_initial=5.0)
    trip(guard, "a", lim)
    clock.advance(1000)
    assert act(guard, "a", lim)
    guard.failed("a", lim)
    ok, why = guard.admit("a", lim)
    assert not ok and why.startswith("backing off")
    assert not guard.took_trip("a")
    clock.advance(5)
    assert guard.admit("a", lim)[0]


def test_fixes_spread_wider_than_the_window_do_not_trip(guard, clock):
    lim = limits(breaker_trips=3, breaker_window=100.0)
    for _ in range(10):
        assert act(guard, "a", lim)
        guard.succeeded("a")
        clock.advance(51)  # at most two fixes within any 100 s
    assert not guard.took_trip("a")


def test_prune_drops_only_idle_inactive_subjects(guard, clock):
    lim = limits()
    start = clock.now
    act(guard, "old", lim)
    act(guard, "active", lim)
    guard.failed("backing-off", limits(backoff_initial=1000.0, backoff_max=1000.0))  # again at start + 1000
    clock.now = start + 2000
    act(guard, "recent", lim)
    clock.now = start + 86400 + 500
    guard.prune(active={"active"})
    # old: idle for more than a day; active: still violated now; recent, backing-off: within the day
    assert set(guard.store) == {GLOBAL, "active", "recent", "backing-off"}
    clock.now = start + 86400 + 1001
    guard.prune(active=set())
    assert set(guard.store) == {GLOBAL, "recent"}
    guard.prune(active=set(), horizon=60)
    assert set(guard.store) == {GLOBAL}  # the global counters are never pruned


def test_prune_keeps_an_open_breaker(guard, clock):
    lim = limits(breaker_trips=1, breaker_cooldown=7 * 86400.0)
    act(guard, "a", lim)
    guard.succeeded("a")
    assert not guard.admit("a", lim)[0]  # open for a week
    clock.advance(2 * 86400)
    guard.prune(active=set())
    assert not guard.admit("a", lim)[0]  # still remembered, still open


def test_store_is_json_round_trippable(guard, clock):
    lim = limits(breaker_trips=2)
    act(guard, "a", lim)
    guard.failed("a", lim)
    store = json.loads(json.dumps(guard.store))
    again = Guard(store, clock)
    assert not again.admit("a", lim)[0]  # the backoff survived the state file
    clock.advance(2.0)
    assert again.admit("a", lim)[0]


def test_next_retry_is_the_earliest_backoff_end_among_the_keys(guard, clock):
    lim = limits(backoff_initial=10.0)
    assert guard.next_retry(["a", "b"]) is None  # nothing waiting
    guard.failed("a", lim)  # a: now + 10
    clock.advance(3)
    guard.failed("b", lim)  # b: now + 10 = start + 13
    guard.failed("c", limits(backoff_initial=1.0))  # c: earlier, but not asked about
    assert guard.next_retry(["a", "b", "unknown"]) == clock.now + 7
    assert guard.next_retry({"b"}) == clock.now + 10
    clock.advance(7)  # a's backoff is over: it may be tried now, nothing to wait for
    assert guard.next_retry(["a"]) is None
    assert guard.next_retry(["a", "b"]) == clock.now + 3
