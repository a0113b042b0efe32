"""Figure "hook cost added to `virsh start`" (issue #5): a real libvirtd, a TCG VM with 4 NICs.

Baseline: the same `virsh start` with no netmedic hook installed, measured in the same run. Modes
alternate round by round (ABBA order); hooks are read only at libvirtd start, so each mode change
restarts libvirtd (in a network namespace of our own, as tests/integration/test_libvirt.py does):

  nohook   no netmedic hook file under /etc/libvirt/hooks, no daemon
  hook     netmedic's qemu and network hooks installed (as the tests render them) and its daemon running
           (as the installed package runs it): the hook's fast path

Per round and mode: one untimed warm-up start (in hook mode it proves the hook fired: the daemon audited
the phases and the VM's MACs are pinned static sticky on their taps), then K timed starts (wall clock of
the `virsh start` process), each followed by an untimed `virsh destroy` and a wait until the domain is
fully stopped (and, in hook mode, until the daemon audited `release end`).

Uses the harness of tests/integration/test_libvirt.py (Libvirt, the checks, the flock on /etc/libvirt/hooks that
makes test runs and this figure take turns). Refuses (returns {"skipped": reason}) when libvirt is not
installed, when a libvirtd already runs, when other hooks are installed or when the lock stays held.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

from bench.stats import fmt_summary, summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURE = "hook cost added to `virsh start`"
TARGET = "≤ 100 ms added (median)"
TARGET_S = 0.100
NICS = 4
PHASES = ("prepare begin", "start begin", "started begin", "stopped end", "release end")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _version(argv) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.splitlines()[0] if out else "?"


def fig_virsh(sc: dict, workdir: str) -> dict:
    try:
        from tests.integration import test_libvirt as tl
    except Exception as exc:  # noqa: BLE001 - pytest or the harness missing: not measurable here
        return {"skipped": f"tests/integration/test_libvirt.py is not importable: {exc!r}"}
    if os.geteuid() != 0:
        return {"skipped": "needs root"}
    for tool in ("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64"):
        if shutil.which(tool, path=tl.CLEAN_ENV["PATH"]) is None:
            return {"skipped": f"{tool} is not installed (scripts/libvirt-test-env.sh)"}
    # a libvirtd running now may be a test run's (it holds the lock while it runs): wait for the lock
    # first, then refuse if a libvirtd still runs (the host's own, which must not be restarted)
    lock = None
    if os.path.isdir("/etc/libvirt/hooks"):
        wait = float(sc.get("virsh_lock_wait", 600))
        lock = tl.hooks_lock(wait, on_wait=lambda: log(f"virsh: another run holds /etc/libvirt/hooks; "
                                                      f"waiting up to {wait:.0f} s"))
        if lock is None:
            return {"skipped": f"another run kept libvirt busy (/etc/libvirt/hooks locked for {wait:.0f} s)"}
    try:
        why = tl._why_not()  # again, under the lock
        if why:
            return {"skipped": why}
        others = tl._foreign_hooks()
        others += [p for p in ("/etc/libvirt/hooks/qemu", "/etc/libvirt/hooks/network") if os.path.exists(p)]
        if others:  # they would run in both modes (and the baseline would not be "no hook")
            return {"skipped": f"other libvirt hooks are installed: {', '.join(others)}"}
        return _run(tl, sc, workdir)
    finally:
        if lock is not None:
            os.close(lock)


class _Run:
    def __init__(self, tl, lv, domain, nics):
        self.tl, self.lv, self.domain, self.nics = tl, lv, domain, nics
        self.daemon = None

    # --- modes -----------------------------------------------------------------------------------
    def enter(self, mode: str) -> float:
        """Switch to `mode` (restart libvirtd with or without the hooks); seconds the restart took."""
        lv = self.lv
        self.stop_daemon()
        lv.stop("libvirtd")
        self.uninstall()
        if mode == "hook":
            lv.install_hooks()  # before libvirtd starts: it reads hooks at start only
        t0 = time.monotonic()
        lv.start_libvirtd()
        took = time.monotonic() - t0
        if mode == "hook":
            self.start_daemon()
        return took

    def uninstall(self):
        for path in list(self.lv.installed):
            os.unlink(path)
            self.lv.installed.remove(path)

    def start_daemon(self):
        tl, lv = self.tl, self.lv
        n0 = len([r for r in lv.audit("reconciled") if r.get("trigger") == "startup"])
        self.daemon = lv.daemon("/run/libvirt/qemu")
        ok = tl.wait_for(lambda: self.daemon.poll() is not None or (
            len([r for r in lv.audit("reconciled") if r.get("trigger") == "startup"]) > n0
            and tl._connected(lv)()), 60, 0.1)
        if not ok or self.daemon.poll() is not None:
            raise RuntimeError(f"netmedic daemon did not start and connect to libvirt: see {lv.tmp}/daemon.log")

    def stop_daemon(self):
        if self.daemon is not None:
            errors: list = []
            self.lv.topo._stop_process(self.daemon, errors)
            self.daemon = None
            if errors:
                raise RuntimeError("; ".join(errors))

    # --- one start -------------------------------------------------------------------------------
    def hook_lines(self):
        return self.lv.hook_lines(self.domain)

    def pinned(self) -> int:
        return sum(1 for mac, tap in self.nics if self.tl.is_sticky_pin(self.lv.pin(mac), tap))

    def start(self) -> float:
        t0 = time.monotonic()
        proc = self.lv.virsh("start", self.domain, check=False)
        took = time.monotonic() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"virsh start {self.domain}: {proc.stderr.strip()}")
        return took

    def stop(self, mode: str) -> None:
        """`virsh destroy`, then wait until the domain is fully stopped: shut off, its qemu gone, its taps
        gone, and in hook mode the daemon has audited `release end` and the pins are gone."""
        tl, lv = self.tl, self.lv
        released0 = sum(1 for r in self.hook_lines() if r.get("phase") == "release end")
        lv.virsh("destroy", self.domain)

        def stopped():
            if lv.virsh("domstate", self.domain, check=False).stdout.strip() != "shut off":
                return False
            if os.path.exists(f"/run/libvirt/qemu/{self.domain}.pid"):
                return False
            if any(lv.topo.link(lv.ns, tap) is not None for _mac, tap in self.nics):
                return False
            if mode == "hook":
                released = sum(1 for r in self.hook_lines() if r.get("phase") == "release end")
                if released <= released0 or self.pinned():
                    return False
            return True

        if not tl.wait_for(stopped, 30, 0.05):
            raise RuntimeError(f"{self.domain} did not stop cleanly within 30 s ({mode})")
        time.sleep(0.3)  # let the daemon's follow-up pass on the bridge finish (both modes alike)


def _run(tl, sc: dict, workdir: str) -> dict:
    rounds = int(sc.get("virsh_repeat", 10))
    per_round = int(sc.get("virsh_per_round", 3))
    wd = pathlib.Path(workdir) / "virsh"
    wd.mkdir(parents=True, exist_ok=True)
    domain = f"{tl.TAG}-bench"
    nics = [(f"52:54:00:{os.getpid() % 256:02x}:b0:{i:02x}", f"{tl.TAG}v{i}") for i in range(NICS)]
    out: dict = {"nohook": [], "hook": [], "nics": NICS, "rounds": rounds, "per_round": per_round,
                 "hook_verified": False, "libvirtd": _version(["libvirtd", "--version"]),
                 "qemu": _version(["qemu-system-x86_64", "--version"]), "daemon_hook_lines": 0,
                 "order": [], "restart_s": {"nohook": [], "hook": []}}
    lv = tl.Libvirt(wd)
    # the test policy (scope: the test bridge) with the healing rate limits and breaker lifted, as in the
    # other figures: the same VM is started (its MACs pinned, released) many times a minute on purpose,
    # and the default breaker (4 trips in 600 s) would stop pinning it from the 5th start on
    tl.write_policy(lv.policy, {
        "kill_switch_file": str(wd / "kill-switch"), "scope": {"bridges": [tl.BRIDGE]},
        "invariants": {"unique_mac": {"on_start": "allow"}, "ip_forwarding": {"enabled": False},
                       "bridge_netfilter": {"enabled": False}},
        "limits": {"rate": {"actions": 10000, "window": 60}, "global_rate": {"actions": 100000, "window": 60},
                   "breaker": {"trips": 1000, "window": 600, "cooldown": 1}}})
    run = _Run(tl, lv, domain, nics)
    defined = False
    verified: list = []
    pinned_after_start: list = []
    nohook_stray = 0
    try:
        log(f"virsh: {rounds} rounds × {per_round} starts per mode of a {NICS}-NIC TCG VM ({out['libvirtd']})")
        t0 = time.monotonic()
        lv.start_libvirtd()  # the first start probes qemu's capabilities (~8 s): not measured
        out["first_libvirtd_start_s"] = time.monotonic() - t0
        xml = wd / f"{domain}.xml"
        xml.write_text(tl.domain_xml(domain, nics))
        lv.virsh("define", str(xml))
        defined = True
        lv.domains.add(domain)  # Libvirt.close() destroys it should we fail half-way
        for rnd in range(rounds):
            modes = ("nohook", "hook") if rnd % 2 == 0 else ("hook", "nohook")
            for mode in modes:
                out["order"].append(mode)
                out["restart_s"][mode].append(run.enter(mode))
                lines0 = len(lv.audit("hook"))
                # warm-up (untimed); in hook mode it proves the hook fired and the daemon did the work
                run.start()
                if mode == "hook":
                    new = lv.audit("hook")[lines0:]
                    mine = [r for r in new if r.get("domain") == domain and r.get("handled_by") == "daemon"]
                    phases = {r.get("phase") for r in mine}
                    ok = {"prepare begin", "start begin"} <= phases and run.pinned() == NICS
                    verified.append(ok)
                    if not ok:
                        log(f"virsh: round {rnd}: hook NOT verified (phases {sorted(phases)}, "
                            f"pinned {run.pinned()}/{NICS})")
                run.stop(mode)
                for _ in range(per_round):
                    out[mode].append(run.start())
                    pins = run.pinned()  # after virsh returned: outside the timing
                    if mode == "hook":
                        pinned_after_start.append(pins)
                    else:
                        nohook_stray += pins
                    run.stop(mode)
                if mode == "nohook":
                    nohook_stray += len(lv.audit("hook")) - lines0  # no hook may have written anything
            log(f"virsh: round {rnd + 1}/{rounds}: nohook median "
                f"{statistics.median(out['nohook']) * 1000:.0f} ms, hook median "
                f"{statistics.median(out['hook']) * 1000:.0f} ms")
        lines = [r for r in lv.hook_lines(domain) if r.get("handled_by") == "daemon"]
        out["daemon_hook_lines"] = len(lines)
        out["slow_path_hook_lines"] = len([r for r in lv.hook_lines(domain) if r.get("handled_by") != "daemon"])
        out["daemon_ms"] = {ph: [r.get("duration_ms") for r in lines if r.get("phase") == ph] for ph in PHASES}
        out["pinned_after_start"] = pinned_after_start
        out["nohook_stray"] = nohook_stray  # pins or hook lines seen in nohook mode: must be 0
        out["hook_verified"] = (len(verified) == rounds and all(verified)
                                and all(p == NICS for p in pinned_after_start) and nohook_stray == 0)
        out["summary"] = {m: summary(out[m]) for m in ("nohook", "hook")}
        if out["nohook"] and out["hook"]:
            out["added_s"] = statistics.median(out["hook"]) - statistics.median(out["nohook"])
    except Exception as exc:  # noqa: BLE001 - reported in the row, the other figures carry on
        out["error"] = f"{type(exc).__name__}: {exc}"
        log(f"virsh: failed: {out['error']}")
    finally:
        out["cleanup_errors"] = _cleanup(run, lv, domain, defined)
    return out


def _cleanup(run: _Run, lv, domain: str, defined: bool) -> list:
    """Everything this figure made, each step attempted: the domain (destroyed, undefined), the daemon,
    libvirtd and virtlogd it started (by PID), its hook files, its namespace, the domain's log."""
    errors: list = []
    try:
        run.stop_daemon()
    except Exception as exc:  # noqa: BLE001
        errors.append(f"daemon: {exc}")
    libvirtd = lv.procs.get("libvirtd")
    if defined and libvirtd is not None and libvirtd.poll() is None:
        lv.virsh("destroy", domain, check=False)
        proc = lv.virsh("undefine", domain, check=False)
        if proc.returncode != 0:
            errors.append(f"virsh undefine {domain}: {proc.stderr.strip()}")
    try:
        lv.close()  # destroys, stops libvirtd/virtlogd by PID, removes the hook files, deletes the namespace
    except Exception as exc:  # noqa: BLE001
        errors.append(f"close: {exc}")
    # libvirtd gone before the undefine: its config file is ours (named after our domain)
    for path in (f"/etc/libvirt/qemu/{domain}.xml", f"/var/log/libvirt/qemu/{domain}.log"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            errors.append(str(exc))
    return errors


# --- docs/benchmarks.md -------------------------------------------------------------------------------

def _ms(s) -> str:
    return fmt_summary(s, " ms", 1, 1000.0)


def rows(result: dict) -> list:
    """The report row for docs/benchmarks.md: (figure, setup, baseline, result, ratio, target, met)."""
    r = result or {}
    version = (r.get("libvirtd") or "?").split()[-1]
    if "skipped" in r or "error" in r or not r.get("nohook") or not r.get("hook"):
        why = r.get("skipped") or (f"failed: {r['error']}" if r.get("error") else "no samples")
        setup = f"real libvirtd {version}, a VM with {r.get('nics', NICS)} NICs" if "skipped" not in r \
            else "real libvirtd, a VM with 4 NICs"
        return [(FIGURE, setup, "—", "not measured: " + why, "—", TARGET, "n/a")]
    base, hook = summary(r["nohook"]), summary(r["hook"])
    added = hook["median"] - base["median"]
    setup = (f"real libvirtd {version}, a TCG VM with {r['nics']} NICs on a bridge, netmedic's qemu hook "
             f"installed and its daemon running; {r['rounds']} rounds × {r.get('per_round', '?')} starts per "
             "mode, interleaved (libvirtd restarted at each mode change); healing rate limits and breaker "
             "lifted")
    daemon_ms = r.get("daemon_ms") or {}
    parts = [f"{ph.split()[0]} {statistics.median(v):.0f}" for ph, v in daemon_ms.items() if v]
    result_txt = f"{_ms(hook)}; added {added * 1000:+.0f} ms"
    if parts:
        result_txt += f"; the daemon's part per phase (median ms): {', '.join(parts)}"
    if not r.get("hook_verified"):
        result_txt += "; hook NOT verified to have fired and pinned every time"
    ok = bool(r.get("hook_verified")) and added <= TARGET_S
    return [(FIGURE, setup, f"same `virsh start`, no hook installed: {_ms(base)}", result_txt,
             f"{added * 1000:+.0f} ms", TARGET, "**yes**" if ok else "**no**")]
