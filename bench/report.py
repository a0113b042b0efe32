"""docs/benchmarks.md from the results of one run."""
from __future__ import annotations

from bench.stats import fmt, fmt_summary, percentile, summary


def _ms(s) -> str:
    return fmt_summary(s, " ms", 1, 1000.0)


def _met(ok) -> str:
    return "n/a" if ok is None else ("**yes**" if ok else "**no**")


def rows(r: dict) -> list:
    """(figure, setup, baseline, result, ratio, target, met) per figure measured."""
    out = []
    host = r.get("host") or {}
    rec = r.get("reconcile")
    if rec:
        s = rec["summary"]
        setup = (f"{host.get('vms')} taps on {len(host.get('bridges', []))} bridges, {rec['fdb_entries']:,} fdb "
                 f"entries (`bridge fdb show` count), domain XML for all; no-op pass "
                 f"(violations: {max(rec['violations'])}, changed: {any(rec['changed'])})")
        base = s["baseline"]["median"]
        for name, key in (("full reconcile, in-process (Engine.reconcile)", "engine"),
                          ("full reconcile, `netmedic heal` command", "command")):
            ratio = s[key]["median"] / base
            out.append((name, setup, "`bridge -j fdb show br X` for each bridge: " + _ms(s["baseline"]),
                        _ms(s[key]), f"{ratio:.1f}×", "≤ 2×", _met(ratio <= 2)))
    cons = (r.get("consume") or {}).get("rates")
    if cons:
        for c in cons:
            rate = "flat out" if not c["rate"] else f"{c['rate']:,}/s offered"
            secs = c["consume_seconds"] or 0
            got = c["consumed"] / secs if secs else None
            lost = c["generated"] - c["consumed"]
            ok = None
            if c["rate"] and c["rate"] >= 20000:
                # no ENOBUFS means nothing was dropped by the socket; a few `-force` lines that made no
                # change (hence no notification) show up as "unaccounted"
                ok = c["overflows"] == 0 and c["detected"] == c["injected"] \
                    and c["gen_rate"] >= 20000 * 0.95
            out.append(("fdb events: Listener + Dispatcher (in-process consumer)",
                        f"{rate}; generator reached {c['gen_rate']:,.0f}/s for {c['gen_seconds']:.1f} s "
                        f"({c['generated']:,} moves)", "—",
                        f"{fmt(got, '/s', 0)} consumed, {max(0, lost):,} unaccounted, {c['overflows']} overflow(s), "
                        f"violations seen {c['detected']}/{c['injected']}, consumer CPU {c['consumer_cpu']:.1f} s",
                        "—", "≥ 20,000/s for 10 s, every violation seen", _met(ok)))
    dmn = r.get("daemon") or {}
    for key, label in (("storm", "fdb events: the daemon (sustained)"), ("flood", "fdb events: the daemon, "
                                                                               "beyond socket capacity")):
        st = dmn.get(key)
        if not st:
            continue
        healed_all = st["healed"] == st["injected"]
        if key == "storm":
            ok = healed_all and st["overflows"] == 0 and st["gen_rate"] >= 20000 * 0.95
            target = "≥ 20,000/s for 10 s, no overflow, every violation healed"
        else:
            ok = healed_all and st["overflows"] > 0 and st["overflow_resyncs"] > 0
            target = "overflow detected, resync done, no violation missed"
        t_heal = st["seconds_to_all_healed_after_storm"]
        buf = f"; daemon's netlink buffer {st['rcvbuf'] // 1024} KiB" if st.get("rcvbuf") else ""
        out.append((label, f"{st['gen_rate']:,.0f} moves/s for {st['gen_seconds']:.1f} s ({st['generated']:,}), "
                    f"{st['injected']} VM MACs moved to the uplink among them{buf}", "—",
                    f"overflows {st['overflows']}, overflow resyncs {st['overflow_resyncs']}, poisoned detected "
                    f"{st['detected_poisoned']}/{st['injected']}, re-pinned {st['healed']}/{st['injected']}"
                    f" ({'all ' + fmt(t_heal, ' s', 1) + ' after the storm' if t_heal is not None else 'NOT all'}"
                    f"), daemon CPU {st['daemon_cpu_pct']:.0f} %", "—", target, _met(ok)))
    pr = dmn.get("protect")
    if pr:
        s = summary(pr["samples"])
        p99 = s["p99"]
        out.append(("time to protect (daemon path)", f"new tap + domain XML on a bridge of the {host.get('vms')}-VM "
                    "host; from the tap's link event (enslaved) to the pin's fdb event",
                    "—", f"p99 {fmt(p99 and p99 * 1000, ' ms')}; {_ms(s)}; missed {len(pr['missed'])}", "—",
                    "p99 ≤ 50 ms", _met(p99 is not None and p99 <= 0.05 and not pr["missed"])))
    hl = dmn.get("heal")
    if hl:
        s = summary(hl["samples"])
        p99 = s["p99"]
        out.append(("time to heal a detached tap", f"bridge deleted and re-created ({len(pr['samples']) if pr else '?'}"
                    " taps on it); from the new bridge's link event to each tap's re-pin",
                    "—", f"p99 {fmt(p99 and p99 * 1000, ' ms')}; {_ms(s)}; all taps: {_ms(summary(hl['all_healed']))}"
                    f"; missed {len(hl['missed'])}", "—", "p99 ≤ 200 ms",
                    _met(p99 is not None and p99 <= 0.2 and not hl["missed"])))
    seed = r.get("seed")
    if seed:
        b, n = seed["baseline"], seed["netmedic"]
        out.append(("seed case, prevention", f"reflection on, VM pings its gateway every 10 ms for "
                    f"{n['seconds']:g} s; VM started with the daemon running (pinned "
                    f"{seed['pinned_after_s'] * 1000:.0f} ms after the tap joined)",
                    f"without netmedic: {b['lost']}/{b['sent']} replies lost",
                    f"{n['lost']}/{n['sent']} lost ({n['reflected']:,} frames reflected)", "—", "0 lost",
                    _met(n["lost"] == 0)))
    idle = dmn.get("idle")
    if idle:
        if idle.get("resyncs_in_window"):
            cpu = (f"CPU {idle['cpu_pct_window']:.2f} % over the window, which holds {idle['resyncs_in_window']} "
                   f"periodic resync(s) (a full pass: {', '.join(f'{x:.0f}' for x in idle['resync_ms'])} ms)")
        else:
            cpu = (f"CPU {idle['cpu_pct_window']:.2f} % in the window, {idle['cpu_pct_with_resync']:.2f} % with one "
                   f"resync per 60 s (≤ {idle['resync_cpu_bound_s']:.1f} CPU-s each)")
        out.append(("daemon footprint, idle", f"{host.get('vms')}-VM host, {idle['window_s']} s window, resync 60 s",
                    "—", f"RSS {idle['rss_mb']:.1f} MB; {cpu}", "—", "RSS ≤ 80 MB; idle CPU ≤ 1 %",
                    _met(idle["rss_mb"] <= 80 and idle["cpu_pct_with_resync"] <= 1)))
    st = dmn.get("storm")
    if st:
        out.append(("daemon footprint, under the storm", "as above, during the sustained storm", "—",
                    f"RSS max {st['rss_max_mb']:.1f} MB; CPU {st['daemon_cpu_pct']:.0f} %", "—", "RSS ≤ 80 MB",
                    _met(st["rss_max_mb"] <= 80)))
    hk = r.get("hook")
    if hk and "skipped" not in hk:
        for mode, how in (("daemon", "as installed: the daemon runs (fast path)"),
                          ("no_daemon", "no daemon: the hook does the work itself")):
            m = hk.get(mode)
            if not m:
                continue
            s = m["summary"]
            base = s["baseline"]["median"]
            for op in ("prepare", "start", "started", "stopped", "release"):
                ratio = s[op]["median"] / base
                extra = ""
                if mode == "daemon":
                    ms = summary([x / 1000.0 for x in m.get("daemon_ms", {}).get(op, [])])
                    extra = f"; the daemon's part {_ms(ms)}" if ms.get("median") is not None else ""
                out.append((f"hook cost: `{op}` ({'daemon' if mode == 'daemon' else 'no daemon'})",
                            f"hooks/scripts/qemu (rendered, /usr/bin/python3 {hk['python']}), {hk['vms']} "
                            f"running domains; {how}", "`python3 -c pass`: " + _ms(s["baseline"]),
                            _ms(s[op]) + extra, f"{ratio:.1f}×", "≤ 1.5× (median)",
                            _met(ratio <= 1.5) if mode == "daemon" else "n/a (fallback)"))
    elif hk:
        out.append(("hook cost per invocation", "—", "—", "not measured: " + hk["skipped"], "—", "≤ 1.5×", "n/a"))
    vs = r.get("virsh")
    if vs is not None:
        from bench import virsh

        out.extend(virsh.rows(vs))
    return out


def table(r: dict) -> str:
    lines = ["| figure | setup | baseline (same run) | result | ratio | target | met? |",
             "|---|---|---|---|---|---|---|"]
    for row in rows(r):
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines) + "\n"


def render(r: dict) -> str:
    m = r["machine"]
    parts = [
        "# Benchmarks\n",
        "Written by `make bench` (`.venv/bin/python -m bench`" + (" --quick" if r.get("quick") else "") +
        f"); this run took {r.get('seconds', 0):.0f} s. Regenerate it rather than editing it by hand; "
        "the analysis below the table is kept in `bench/report.py`.\n",
        f"- machine: {m['nproc']} CPUs, kernel {m['kernel']}, Python {m['python']} (.venv), pyroute2 "
        f"{m['pyroute2']}, structlog {m['structlog']}; load average {m['loadavg_start']} at the start, "
        f"{m.get('loadavg_end')} at the end",
        f"- date: {m['date']}",
        "- **the machine is shared with other engineers' test runs**: absolute timings are noisy. That is why "
        "every figure with a baseline is given as a ratio against that baseline, measured interleaved with it "
        "in the same run (round by round), and why each is the median of repeated rounds with min–max.",
        "- everything runs as root in network namespaces the run creates and deletes (labnet.Topology), "
        "addresses only in 198.51.100.0/24 and 203.0.113.0/24; the root namespace's interfaces are never "
        "touched. The daemon and the benchmark's policy are the shipped defaults except the healing rate "
        "limits and breaker, lifted because the benchmark heals the same subjects many times a minute on "
        "purpose.\n",
        "## Results\n",
        table(r),
        ANALYSIS,
    ]
    return "\n".join(parts)


ANALYSIS = """
## How each figure is measured

- **Full reconcile**: the host is built with `ip -batch`/`bridge -batch` files in one namespace: each
  "tap" is a veth whose peer stays in the namespace (no dummy driver in this kernel), each bridge also
  has an uplink carrying static LAN entries, the VM MACs are already pinned `static sticky` (a host
  netmedic protects), so a pass finds nothing and changes nothing. Inside the namespace, round by
  round: the baseline (`bridge -j fdb show br X` for every bridge, output read in full), one
  `Engine.reconcile()` in a warm process, one `python -m netmedic heal` command (interpreter start-up,
  imports and state/audit files included).
- **fdb events, in-process consumer**: nl.Listener + Dispatcher in a loop like the daemon's `_drain`
  (no reconcile), while `bench/pace.py` feeds `bridge -force -batch -` at a fixed rate with `fdb
  replace` lines that move LAN MACs between two ports (one notification each); every 1000th line moves a
  VM MAC to the uplink instead (a violation: "seen" means the dispatcher asked for a reconcile of its
  bridge). "Consumed" counts fdb notifications read; "lost" = lines sent − notifications read.
- **fdb events, the daemon**: the same generator against the real `netmedic daemon` on the big host,
  with ~20 VM MACs moved to the uplink during the storm; "re-pinned" is judged from `bridge fdb show`
  after the storm, "detected" from the audit log's `detected` (kind poisoned) records. The flood runs
  the generator flat out.
- **Time to protect / heal**: a listener of the benchmark's own in the namespace timestamps the events:
  the new tap's link event (enslaved to its bridge) and the first fdb event of the VM MAC (the pin); for
  the heal, the re-created bridge's link event and each tap's re-pin. The domain XML is written just
  before the tap appears (libvirt writes its status XML around `start`).
- **Seed case**: labnet's seed topology (tc mirred reflection on the switch port); baseline: the same
  topology without netmedic. With netmedic: the daemon runs, then the "VM starts" (domain XML written,
  tap enslaved), the pin is awaited, then the VM pings its gateway every 10 ms.
- **Footprint**: /proc/PID/status VmRSS and utime+stime of the daemon process. Idle CPU over the window
  misses the resync every 60 s, so the table also adds one resync per 60 s, bounded by the CPU the daemon
  used from exec to the end of its startup reconcile.
- **Hook**: the qemu entry script rendered as the tests install it (`render_script`, /usr/bin/python3,
  the Debian interpreter with pyroute2 0.7.2), run per operation with the domain XML on stdin and only
  LC_ALL/PATH/HOME in the environment, in a namespace with that many running domains (taps, pins, XML);
  no daemon socket, so `started` reconciles itself. Baseline: `/usr/bin/python3 -c pass`, interleaved.
- **`virsh start`**: not measured. Only one libvirtd can own /run/libvirt on a host, and another
  engineer's real-libvirtd test harness (scripts/libvirt-test-env.sh, tests/test_libvirt*) was being
  built and run on this machine at the same time: starting or restarting a libvirtd here (hooks are read
  only at daemon start) would disturb their tests. To do once that harness is idle: start a VM with 4
  NICs 10 times with and without /etc/libvirt/hooks/qemu.d/netmedic and compare the medians.

## What limits the figures (profiled with pyinstrument; `scripts/bench-deps.sh` installs it)

- **Reconcile at 1,000 VMs is dominated by pyroute2 parsing, not by netmedic's logic.** Profile of a
  no-op `netmedic heal` on this host: `Netlink.links()` (one RTM_GETLINK dump of ~2,000 links) takes
  ~1.8–2.8 s, almost all of it in pyroute2's `ifinfmsg` decoding (~1 ms per link: every IFLA_* attribute,
  stats, AF_SPEC); the 1,000 per-MAC `fdb_get()` lookups ~0.6 s (~0.6 ms each, mostly pyroute2's request
  machinery and parsing); reading and parsing the 1,000 domain XML files ~0.3 s; importing pyroute2
  ~0.2 s. `bridge -j fdb show` of the same 50k entries takes ~0.5 s for the four bridges. The check
  itself is a few ms. So the ≤ 2× target cannot be reached with pyroute2 on the observation path; it
  needs a lean RTM_GETLINK dump parser and a lean per-MAC RTM_GETNEIGH in `netmedic/nl.py` (as the
  Listener already has for events), tested against pyroute2 on the same messages — not done here:
  nl.py was outside this change's remit; it is the next step.
- **The daemon pays the same price per event-triggered reconcile.** A scoped reconcile still dumps all
  links (and `Daemon.reconcile()` dumps them once more for the dispatcher's ifindex map), so one VM
  start or one poisoned MAC costs seconds of CPU on a 1,000-VM host: time to protect and time to heal
  are bounded by that, and while it runs the listener is not read, so a 20k/s storm fills the 4 MiB
  socket buffer and overflows; netmedic then resyncs (a full reconcile) and still heals every
  violation, which is the correctness half of the figure.
- **Listener + Dispatcher alone** (the raw parser) consume far more than 20k/s; the generator
  (`bridge -batch` fed by a Python pacer, on the same 2 shared CPUs) is the limit of the "flat out" row.
- **Hook**: every operation starts an interpreter (the baseline), and the phases that reconcile
  (`start`, `started` without a daemon) import pyroute2 (~0.2 s) and observe the host; `prepare` parses
  every running domain's XML. Interpreter start-up alone is the 1× of the target, so only phases that
  import little can be within 1.5×.
- **Idle CPU**: the 1 s poll of the XML directories and the policy file is cheap; the resync every
  60 s is a full reconcile, i.e. the pyroute2 cost above, amortised over 60 s.
"""


__all__ = ["render", "rows", "table", "percentile"]
