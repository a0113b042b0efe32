#!/usr/bin/env python3
"""Generates netmedic(8) (roff) and the bash completion from the CLI's own argparse parser, at package
build time, so neither can drift from `netmedic --help`:

    python3 packaging/gen-docs.py SRCDIR --man OUT.8 --completion OUT.bash

Only netmedic/cli.py's build_parser() is imported (the CLI imports everything else lazily), so this
needs no runtime dependency (pyroute2, structlog, PyYAML) on the build machine. Python >= 3.9.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

PROSE_DESCRIPTION = """\
netmedic checks the bridged networking of a KVM/libvirt hypervisor against invariants and repairs what
breaks with bounded, audited actions: a VM MAC learned on the wrong bridge port (fdb poisoning) is
pinned static sticky on the VM's tap, a detached or stuck tap is re-attached and brought to
forwarding, IPv4 forwarding under a libvirt NAT network is restored, duplicate MACs and bridge
netfilter blackholes are reported (and fixed where the policy enforces it).
.PP
Every command acts only in the network namespace it runs in and needs no libvirtd: the domains and
networks are read from libvirt's run-state XML (\\fI/run/libvirt/qemu\\fR, \\fI/run/libvirt/network\\fR).
Every detection and every action is one JSON line in the audit log.
.PP
Installed from the package, netmedic runs as the systemd service \\fBnetmedic.service\\fR
(\\fBnetmedic daemon\\fR) and is also called by the libvirt qemu and network hooks, the NetworkManager
dispatcher script and a udev rule. libvirtd reads its hooks only when it starts: restart libvirtd once
after installing the package."""

FILES = [
    ("/etc/netmedic/policy.yaml", "The policy: invariants, modes (observe|enforce), scope and bounds. "
     "Kept on upgrade and on removal; removed on purge. Check it with \\fBnetmedic policy check\\fR."),
    ("/etc/netmedic/kill-switch", "While this file exists netmedic changes nothing (it keeps observing and "
     "auditing); the path is set by \\fBkill_switch_file\\fR in the policy."),
    ("/var/log/netmedic/audit.jsonl", "The audit log, one JSON object per line; rotated by logrotate "
     "(/etc/logrotate.d/netmedic)."),
    ("/var/lib/netmedic/state.json", "What netmedic created on the host (fdb pins, quarantined ports, "
     "firewall rules) and the bounds' counters. Kept on upgrade, so a new version still removes exactly "
     "the pins the old one made."),
    ("/run/netmedic/", "Runtime directory of the service (exists while it runs)."),
    ("/etc/libvirt/hooks/qemu.d/netmedic, /etc/libvirt/hooks/network.d/netmedic",
     "The libvirt hooks (links to /usr/libexec/netmedic/)."),
    ("/usr/lib/NetworkManager/dispatcher.d/90-netmedic", "The NetworkManager dispatcher script."),
    ("/usr/lib/udev/rules.d/90-netmedic.rules", "Hands network interface add/remove events to the daemon."),
]

EXIT_STATUS = [("0", "success; for \\fBcheck\\fR: no violation"),
               ("1", "\\fBcheck\\fR: violations found; \\fBheal\\fR: some violation was not healed"),
               ("2", "error (bad policy, missing permission, host error)")]


def _roff(text: str) -> str:
    """Escape free text for roff: backslashes, and a leading dot or quote."""
    text = (text or "").replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line[:1] in ".'" else line for line in text.splitlines())


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:  # argparse has no public API for this
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def _options(parser: argparse.ArgumentParser):
    out = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            flags = ", ".join(action.option_strings)
            arg = "" if action.nargs == 0 else " " + (action.metavar or action.dest.upper())
            if action.choices and action.nargs != 0 and not action.metavar:
                arg = " " + "|".join(str(c) for c in action.choices)
            out.append((flags + arg, action.help or ""))
        else:
            out.append((action.metavar or action.dest, action.help or ""))
    return out


def _commands(parser, prefix=""):
    """(full command name, help, parser) for every leaf and intermediate subcommand, depth first."""
    for name, helptext, sub in _subparsers(parser):
        full = (prefix + " " + name).strip()
        yield full, helptext, sub
        yield from _commands(sub, full)


def man_page(parser: argparse.ArgumentParser, version: str, date: str) -> str:
    lines = [
        f'.TH NETMEDIC 8 "{date}" "netmedic {version}" "System Administration"',
        ".SH NAME",
        "netmedic \\- self\\-healing for the bridged networking of KVM/libvirt hypervisors",
        ".SH SYNOPSIS",
        ".B netmedic",
        "[\\fB\\-\\-version\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
    ]
    for full, _h, sub in _commands(parser):
        if any(True for _ in _subparsers(sub)):
            continue
        lines += [".br", f".B netmedic {_roff(full)}", "[\\fIOPTIONS\\fR]"]
    lines += [".SH DESCRIPTION", PROSE_DESCRIPTION, ".SH COMMANDS"]
    for full, helptext, _sub in _commands(parser):
        lines += [".TP", f".B {_roff(full)}", _roff(helptext or "")]
    lines += [".SH OPTIONS", ".TP", ".B \\-\\-version", "print the version and exit"]
    for full, _h, sub in _commands(parser):
        opts = _options(sub)
        if not opts:
            continue
        lines += [".SS " + _roff(full)]
        for flags, helptext in opts:
            lines += [".TP", f".B {_roff(flags)}", _roff(helptext)]
    lines += [".SH EXIT STATUS"]
    for code, meaning in EXIT_STATUS:
        lines += [".TP", f".B {code}", meaning]
    lines += [".SH FILES"]
    for path, meaning in FILES:
        lines += [".TP", f".I {_roff(path)}", meaning]
    lines += [".SH EXAMPLES", ".nf",
              "netmedic check                 # read\\-only: violations, evidence, the fix it would apply",
              "netmedic heal \\-\\-dry\\-run        # the plan, nothing changed",
              "netmedic policy check /etc/netmedic/policy.yaml",
              "systemctl reload netmedic      # re\\-read the policy (SIGHUP)",
              ".fi",
              ".SH SEE ALSO",
              "\\fBsystemctl\\fR(1), \\fBvirsh\\fR(1), \\fBbridge\\fR(8), \\fBNetworkManager\\fR(8), \\fBudev\\fR(7)",
              ".PP",
              "/usr/share/doc/netmedic/ (README, install and policy documentation)"]
    return "\n".join(lines) + "\n"


def completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion: subcommands (nested), then each subcommand's options; files elsewhere."""
    cases = []
    top = [name for name, _h, _s in _subparsers(parser)]
    for full, _h, sub in _commands(parser):
        subs = [n for n, _hh, _ss in _subparsers(sub)]
        flags = [f for a in sub._actions for f in a.option_strings]
        words = " ".join(subs + flags)
        cases.append(f'        "{full}") words="{words}" ;;')
    top_flags = " ".join(f for a in parser._actions for f in a.option_strings)
    return f"""# bash completion for netmedic(8) -- generated from its argparse parser by packaging/gen-docs.py
_netmedic()
{{
    local cur prev words cmd i w
    COMPREPLY=()
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    case "$prev" in
        --policy|--audit-log|--pidfile) COMPREPLY=($(compgen -f -- "$cur")); return 0 ;;
        --domain-xml-dir|--network-xml-dir|--state-dir) COMPREPLY=($(compgen -d -- "$cur")); return 0 ;;
        --mode) COMPREPLY=($(compgen -W "observe enforce" -- "$cur")); return 0 ;;
    esac
    # the command path typed so far: words that are not options, up to the cursor
    cmd=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${{COMP_WORDS[i]}}"
        case "$w" in -*) continue ;; esac
        case "${{COMP_WORDS[i-1]}}" in --policy|--audit-log|--pidfile|--domain-xml-dir|--network-xml-dir|--state-dir|--mode|--resync|--bridge) continue ;; esac
        case " $(_netmedic_words "$cmd") " in *" $w "*) cmd="${{cmd:+$cmd }}$w" ;; esac
    done
    COMPREPLY=($(compgen -W "$(_netmedic_words "$cmd")" -- "$cur"))
    [ ${{#COMPREPLY[@]}} -eq 0 ] && [ -n "$cmd" ] && COMPREPLY=($(compgen -f -- "$cur"))
    return 0
}}
_netmedic_words()
{{
    local words=""
    case "$1" in
        "") words="{' '.join(top)} {top_flags}" ;;
{chr(10).join(cases)}
    esac
    echo "$words"
}}
complete -F _netmedic netmedic
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("srcdir", help="the netmedic source tree")
    ap.add_argument("--man", help="write netmedic.8 here")
    ap.add_argument("--completion", help="write the bash completion here")
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.abspath(args.srcdir))
    from netmedic import __version__
    from netmedic.cli import build_parser

    parser = build_parser()
    # SOURCE_DATE_EPOCH (set by dpkg-buildpackage and rpmbuild) keeps the build reproducible.
    stamp = int(os.environ.get("SOURCE_DATE_EPOCH") or 0) or None
    when = (datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc) if stamp
            else datetime.datetime.now(datetime.timezone.utc))
    if args.man:
        with open(args.man, "w", encoding="utf-8") as fh:
            fh.write(man_page(parser, __version__, when.strftime("%Y-%m-%d")))
    if args.completion:
        with open(args.completion, "w", encoding="utf-8") as fh:
            fh.write(completion(parser))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
