"""libvirt hooks: `qemu` (installed as /etc/libvirt/hooks/qemu.d/netmedic) and `network` (installed as
/etc/libvirt/hooks/network.d/netmedic). docs/event-sources.md describes each phase.

The entry scripts (hooks/scripts/*) are tiny: they import netmedic.hooks.qemu / .network lazily, so
the phases that need nothing (most of them) cost one interpreter start.

Configuration. libvirt runs hooks with only LC_ALL, PATH and HOME in the environment, so the hook
reads its paths from these variables and otherwise uses the defaults below (the same as the CLI's):

  NETMEDIC_POLICY            policy file   (default /etc/netmedic/policy.yaml, else the shipped defaults)
  NETMEDIC_AUDIT_LOG         audit log     (default /var/log/netmedic/audit.jsonl)
  NETMEDIC_STATE_DIR         records       (default /var/lib/netmedic)
  NETMEDIC_DOMAIN_XML_DIR    running domains' status XML   (default /run/libvirt/qemu)
  NETMEDIC_NETWORK_XML_DIR   running networks' status XML  (default /run/libvirt/network)
  NETMEDIC_SOCKET            the daemon's event socket     (default /run/netmedic/netmedic.sock)
  NETMEDIC_HOOK_TIMEOUT      seconds before the hook gives up and allows (default 15)
  NETMEDIC_HOOK_DAEMON_TIMEOUT  seconds to wait for the daemon's answer before doing the work in the
                             hook itself (default 5)

A production install sets none of them. A test (or an admin who wants other paths) installs a copy
of the entry script made by render_script(), which puts the settings (and, for a checkout, a
sys.path entry) in the script itself: nothing on the host outside the installed file changes.
"""
from __future__ import annotations

import os

from netmedic.settings import ENVIRONMENT, from_environ

# The same variables and defaults as the dispatcher and udev programs, plus the hook's own timeouts.
DEFAULTS = {
    **ENVIRONMENT,
    "timeout": ("NETMEDIC_HOOK_TIMEOUT", "15"),
    "daemon_timeout": ("NETMEDIC_HOOK_DAEMON_TIMEOUT", "5"),
}
SCRIPTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts")
INSTALL_PATHS = {"qemu": "/etc/libvirt/hooks/qemu.d/netmedic",
                 "network": "/etc/libvirt/hooks/network.d/netmedic"}


def settings(environ=None) -> dict:
    return from_environ(environ, DEFAULTS)


def render_script(kind: str, python: str, env=None, pythonpath=None) -> str:
    """The entry script for `kind` ('qemu' or 'network') with an absolute interpreter, environment
    overrides (NETMEDIC_* names) and an optional import path (a checkout) written into it."""
    from netmedic.sources import render_entry

    if kind not in INSTALL_PATHS:
        raise ValueError(f"unknown hook {kind!r}")
    return render_entry(os.path.join(SCRIPTS_DIR, kind), python, env, pythonpath)
