"""The `netmedic` command.

  netmedic check    read-only report of violations, evidence and the fix (exit 0 clean, 1 violations, 2 error)
  netmedic heal     one reconcile pass (--dry-run: print the plan, change nothing)
  netmedic daemon   react to netlink events, resync periodically, until SIGTERM
  netmedic status   the running daemon's sources, last events and last heals (exit 0 running, 2 not)
  netmedic diagnose DOMAIN  walk one VM NIC's path, name the first broken hop (exit 0 ok, 1 broken, 2 error)
  netmedic lab      build a real fault scenario in namespaces of its own and heal it
  netmedic policy check FILE

Every command acts only in the network namespace it runs in and needs no libvirtd.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from netmedic import __version__
from netmedic.errors import NetmedicError
from netmedic.settings import (
    DEFAULT_AUDIT_LOG,
    DEFAULT_DOMAIN_DIR,
    DEFAULT_LEASES_DIR,
    DEFAULT_NETWORK_DIR,
    DEFAULT_POLICY_PATH,
    DEFAULT_SOCKET,
    DEFAULT_STATE_DIR,
)

EXIT_OK, EXIT_VIOLATIONS, EXIT_ERROR = 0, 1, 2


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--domain-xml-dir", default=DEFAULT_DOMAIN_DIR, metavar="DIR",
                   help=f"libvirt run-state domain XML (default {DEFAULT_DOMAIN_DIR})")
    p.add_argument("--network-xml-dir", default=DEFAULT_NETWORK_DIR, metavar="DIR",
                   help=f"libvirt run-state network XML (default {DEFAULT_NETWORK_DIR})")
    p.add_argument("--policy", metavar="FILE", help=f"policy file (default {DEFAULT_POLICY_PATH}, "
                   "else the shipped defaults)")
    p.add_argument("--audit-log", metavar="FILE", default=None,
                   help=f"audit log, JSON lines (default {DEFAULT_AUDIT_LOG}; - for stdout)")
    p.add_argument("--state-dir", metavar="DIR", default=None,
                   help=f"netmedic's records and bounds (default {DEFAULT_STATE_DIR})")
    p.add_argument("--mode", choices=("observe", "enforce"), help="override the mode of every invariant")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="netmedic", description="Self-healing for the bridged networking "
                                     "of KVM/libvirt hypervisors.")
    parser.add_argument("--version", action="version", version=f"netmedic {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("check", help="report violations (read-only)")
    _common(p)
    p.add_argument("--json", action="store_true", help="machine-readable report")

    p = sub.add_parser("heal", help="one reconcile pass: check and heal")
    _common(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--bridge", action="append", metavar="BR", help="only these bridges (repeatable)")

    p = sub.add_parser("daemon", help="watch netlink events and heal until stopped")
    _common(p)
    p.add_argument("--dry-run", action="store_true", help="plan and audit only")
    p.add_argument("--resync", type=float, metavar="SECONDS", help="full resync interval (policy default 60)")
    p.add_argument("--pidfile", metavar="FILE")
    p.add_argument("--netlink-rcvbuf", type=int, metavar="BYTES", default=4 * 1024 * 1024,
                   help="netlink receive buffer (default 4 MiB); on overflow netmedic resyncs")
    p.add_argument("--socket", metavar="PATH", default="auto",
                   help=f"event socket for hooks/dispatcher/udev, status.json beside it; 'none' to disable "
                   f"(default: {DEFAULT_SOCKET} when --domain-xml-dir is libvirt's, else none)")
    p.add_argument("--libvirt-uri", metavar="URI", default="auto",
                   help="libvirt event source; 'none' to disable (default: qemu:///system when "
                   "--domain-xml-dir is libvirt's, else none)")
    p.add_argument("--no-dbus", action="store_true", help="no NetworkManager D-Bus source")
    p.add_argument("--no-netlink", action="store_true",
                   help="no netlink link/fdb source (tests that prove another trigger)")

    p = sub.add_parser("status", help="what the running daemon is connected to, its last events and heals")
    p.add_argument("--socket", metavar="PATH", default=DEFAULT_SOCKET,
                   help=f"the daemon's socket; its status.json is beside it (default {DEFAULT_SOCKET})")
    p.add_argument("--json", action="store_true", help="the raw status")

    p = sub.add_parser("diagnose", help="walk one VM NIC's path hop by hop and name the first broken hop")
    _common(p)
    p.add_argument("domain", help="libvirt domain name")
    p.add_argument("--nic", metavar="MAC|TAP", help="which NIC (default: the domain's first bridged NIC)")
    p.add_argument("--json", action="store_true", help="machine-readable report (docs/diagnose.md)")
    p.add_argument("--probe", action="store_true",
                   help="also send an ARP probe and watch the DHCP exchange on the tap, the uplinks and the bridge")
    p.add_argument("--probe-seconds", type=float, default=1.5, metavar="S", help="ARP capture time (default 1.5)")
    p.add_argument("--dhcp-seconds", type=float, default=12.0, metavar="S",
                   help="DHCP watch with --probe (default 12: at least two DISCOVER retransmissions; ends at the ACK)")
    p.add_argument("--socket", metavar="PATH", default=None,
                   help="the daemon's socket, asked for the MAC's recent fdb moves (default: the daemon's)")
    p.add_argument("--leases-dir", default=DEFAULT_LEASES_DIR, metavar="DIR",
                   help=f"libvirt's dnsmasq lease files, *.status (default {DEFAULT_LEASES_DIR})")

    p = sub.add_parser("lab", help="build a real fault scenario in namespaces of its own and heal it")
    p.add_argument("scenario", nargs="?", default="seed", help="scenario (default: seed); `list` lists them")
    p.add_argument("--keep", action="store_true", help="leave the namespaces for inspection")

    p = sub.add_parser("policy", help="policy file tools")
    psub = p.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    psub.required = True
    pc = psub.add_parser("check", help="validate a policy file")
    pc.add_argument("file")
    return parser


def _policy(args):
    from netmedic.settings import load_policy

    return load_policy(args.policy, args.mode)


def _engine(args, policy, audit, dry_run=False):
    from netmedic.settings import build_engine

    return build_engine(policy, args.state_dir, audit, args.domain_xml_dir, args.network_xml_dir,
                        dry_run=dry_run)


def _require_dirs(args) -> None:
    """`check`/`heal`/`diagnose` judge the host from the run-state XML: a missing or non-directory path
    would make every VM look gone. Refused (exit 2) with one line per path."""
    from netmedic import inventory
    from netmedic.errors import InputError

    problems = inventory.dir_problems(args.domain_xml_dir, args.network_xml_dir)
    if problems:
        raise InputError("run-state XML directory unusable: " + "; ".join(problems))


def _audit(args, trigger):
    from netmedic.audit import DEFAULT_AUDIT_LOG, Audit

    return Audit(args.audit_log or DEFAULT_AUDIT_LOG, trigger=trigger)


def cmd_check(args) -> int:
    from netmedic.report import render_check

    policy = _policy(args)
    _require_dirs(args)
    engine = _engine(args, policy, audit=None, dry_run=True)
    engine.state.read()
    engine.load_inventory()
    snap = engine.observe()
    violations = engine.check(snap)
    planned = [(v,) + engine.plan_for(v, snap)[1:] for v in violations]
    errors = [str(e) for e in engine.inventory.errors]
    if args.json:
        print(json.dumps({"violations": [dict(v.as_dict(), fix=(p.as_dict() if p else None),
                                              mode=policy.invariants[v.invariant].mode_for(v.subject.bridge),
                                              note=why or None)
                                         for v, p, why in planned], "errors": errors}, indent=2))
    else:
        print(render_check(planned, policy, errors))
    for e in errors:
        print(f"netmedic: error: {e}", file=sys.stderr)
    if violations:
        return EXIT_VIOLATIONS
    return EXIT_ERROR if errors else EXIT_OK


def cmd_heal(args) -> int:
    from netmedic.report import render_heal

    policy = _policy(args)
    _require_dirs(args)
    audit = _audit(args, "cli")
    try:
        engine = _engine(args, policy, audit, dry_run=args.dry_run)
        report = engine.reconcile(trigger="cli", bridges=args.bridge)
    finally:
        audit.close()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        print(render_heal(report))
    for e in report.errors:
        print(f"netmedic: error: {e}", file=sys.stderr)
    if report.errors:
        return EXIT_ERROR
    unresolved = [o for o in report.outcomes if o.result not in ("healed",)]
    return EXIT_VIOLATIONS if unresolved else EXIT_OK


def cmd_daemon(args) -> int:
    from netmedic.daemon import Daemon
    from netmedic.nl import Listener
    from netmedic.settings import load_daemon_policy
    from netmedic.sources import NullListener
    from netmedic.sources.nm import NMSource
    from netmedic.state import DEFAULT_STATE_DIR

    audit = _audit(args, "daemon")
    # A policy the admin must fix does not stop the daemon (restarting would not fix it): the last good
    # one (or the shipped default) runs, said in the audit and in `netmedic status`.
    policy, problem = load_daemon_policy(args.policy, args.mode, args.state_dir or DEFAULT_STATE_DIR)
    if problem:
        print(f"netmedic: error: {problem}; running with {policy.source}", file=sys.stderr)
        audit.event("policy_rejected", error=problem[:2000], running=policy.source, level="alert",
                    reason="the policy file cannot be used: running with the last good policy "
                           "(or the shipped default) until it is fixed")
    engine = _engine(args, policy, audit, dry_run=args.dry_run)
    daemon = Daemon(engine, policy_path=args.policy, mode=args.mode, resync=args.resync,
                    listener_factory=(NullListener if args.no_netlink
                                      else lambda: Listener(rcvbuf=args.netlink_rcvbuf)),
                    socket_path=_auto(args.socket, args, DEFAULT_SOCKET),
                    libvirt_uri=_auto(args.libvirt_uri, args, "qemu:///system"))
    daemon.policy_problem = f"{problem[:300]} (running: {policy.source})" if problem else None
    if not args.no_dbus:
        daemon.add_source(NMSource())
    if args.pidfile:
        with open(args.pidfile, "w") as fh:
            fh.write(f"{os.getpid()}\n")
    try:
        return daemon.run()
    finally:
        audit.close()


def _auto(value, args, default):
    """'auto': the host's real source only when netmedic looks at libvirt's real run-state directory
    (a daemon run on XML files of its own, e.g. in a test, stays off the host's libvirtd and socket)."""
    if value == "auto":
        return default if os.path.abspath(args.domain_xml_dir) == DEFAULT_DOMAIN_DIR else None
    return None if value in ("none", "") else value


def cmd_status(args) -> int:
    from netmedic.status import render_status

    path = os.path.join(os.path.dirname(os.path.abspath(args.socket)), "status.json")
    try:
        with open(path, encoding="utf-8") as fh:
            status = json.load(fh)
    except (OSError, ValueError, RecursionError) as exc:
        if isinstance(exc, OSError):
            print(f"netmedic: no daemon status at {path} ({getattr(exc, 'strerror', None) or exc}): "
                  "is `netmedic daemon` running?", file=sys.stderr)
            return EXIT_ERROR
        return _status_malformed(path, f"not JSON: {exc}")
    if not isinstance(status, dict):
        return _status_malformed(path, f"not a JSON object but {type(status).__name__}")
    running = not status.get("stopped")
    try:
        os.kill(int(status.get("pid", 0)), 0)
    except (OSError, ValueError, TypeError, OverflowError):
        running = False
    status["running"] = running
    try:
        text = json.dumps(status, indent=2) if args.json else render_status(status, path)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return _status_malformed(path, f"unexpected content ({type(exc).__name__}: {exc})")
    print(text)
    return EXIT_OK if running else EXIT_ERROR


def _status_malformed(path: str, why: str) -> int:
    """A status file netmedic cannot read: moved aside (the daemon writes a new one within a second),
    one line, exit 2 — never a traceback."""
    aside = path + ".malformed"
    try:
        os.replace(path, aside)
        moved = f"moved to {aside}"
    except OSError as exc:
        moved = f"not moved: {exc.strerror or exc}"
    print(f"netmedic: error: {path}: malformed daemon status ({why}); {moved}", file=sys.stderr)
    return EXIT_ERROR


def cmd_lab(args) -> int:
    from netmedic import lab

    return lab.main(args.scenario, keep=args.keep)


def cmd_policy(args) -> int:
    from netmedic.settings import load_policy

    policy = load_policy(args.file)
    modes = ", ".join(f"{n}={'off' if not p.enabled else p.mode}" for n, p in policy.invariants.items())
    print(f"{args.file}: OK ({modes})")
    return EXIT_OK


COMMANDS = {"check": cmd_check, "heal": cmd_heal, "daemon": cmd_daemon, "lab": cmd_lab, "policy": cmd_policy,
            "status": cmd_status}


def cmd_diagnose(args) -> int:
    from netmedic import diagnose

    return diagnose.main(args)


COMMANDS["diagnose"] = cmd_diagnose


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from netmedic import plugin

        plugin.load_plugins()  # third-party invariants and healers (entry points), before any policy is read
        return COMMANDS[args.command](args)
    except NetmedicError as exc:
        print(f"netmedic: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except PermissionError as exc:
        print(f"netmedic: error: {exc.filename or ''}: {exc.strerror} (netmedic needs root)", file=sys.stderr)
        return EXIT_ERROR
