"""Event sources, one module per source; each only says *what changed* (a reconcile request of the
affected bridges, through the daemon's dispatcher) and never heals by itself.

In the daemon, each is an object with the source interface (netmedic.daemon: name, fileno() (or None),
on_readable(daemon), poll(daemon, now) -> next wanted poll time or None, status() -> dict, close(),
optionally extra_domains()):

  eventsocket.py   EventSocket: the daemon's root-only event socket (hooks, dispatcher script, udev)
  libvirt_api.py   LibvirtSource: libvirt's event API (lifecycle, DEVICE_ADDED/REMOVED)
  nm.py            NMSource: NetworkManager over D-Bus
  xmlwatch.py      XmlWatch: inotify on libvirt's run-state XML directories

The kernel's link/fdb notifications are read by netmedic.nl.Listener, which the daemon drains itself
(its hot path). Outside the daemon, programs that post to the event socket:

  client.py        the event-socket client (post(); fallback_heal() when no daemon listens)
  nm_dispatcher.py the NetworkManager dispatcher script's logic
  udev.py          the udev RUN program's logic
  scripts/         their entry scripts and the udev rule, installed by packaging/install-layout.sh:
                   netmedic (-> /usr/lib/NetworkManager/dispatcher.d/90-netmedic), netmedic-udev,
                   90-netmedic.rules

The libvirt hooks (hooks/, their entry scripts in hooks/scripts/) post to the same socket.
"""
from __future__ import annotations

import os
from typing import Optional

from netmedic.settings import DEFAULT_SOCKET

SCRIPTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts")
UDEV_DIR = SCRIPTS_DIR  # the udev rule is beside its RUN program
INSTALL_PATHS = {"netmedic": "/usr/lib/NetworkManager/dispatcher.d/90-netmedic",
                 "netmedic-udev": "/usr/lib/netmedic/netmedic-udev",
                 "90-netmedic.rules": "/usr/lib/udev/rules.d/90-netmedic.rules"}
PREAMBLE_MARK = "# --- settings (render_script puts environment overrides here) ---"


def render_entry(path: str, python: str, env=None, pythonpath=None) -> str:
    """The entry script at `path` with an absolute interpreter, NETMEDIC_* settings and an optional
    import path (a checkout) written into it. libvirt, the NetworkManager dispatcher and udev give
    their programs no useful environment, so a test (or an admin wanting other paths) installs such a
    copy. Shared by the libvirt hooks (netmedic.hooks.render_script) and the scripts here."""
    if not os.path.isabs(python):
        raise ValueError("the interpreter must be an absolute path (no useful PATH is given)")
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines(True)
    flags = lines[0].split()[1:] if lines[0].startswith("#!") else ["-I"]  # keep the script's own flags
    lines[0] = f"#!{' '.join([python] + flags)}\n"
    extra = []
    for var, value in sorted((env or {}).items()):
        if not var.startswith("NETMEDIC_"):
            raise ValueError(f"not a netmedic setting: {var}")
        extra.append(f"os.environ[{var!r}] = {str(value)!r}\n")
    if pythonpath:
        extra.append(f"sys.path.insert(0, {str(pythonpath)!r})\n")
    text = "".join(lines)
    if PREAMBLE_MARK not in text:
        raise ValueError(f"{os.path.basename(path)} has no settings mark")
    return text.replace(PREAMBLE_MARK + "\n", PREAMBLE_MARK + "\n" + "".join(extra), 1)


def render_script(name: str, python: str, env=None, pythonpath=None) -> str:
    """netmedic/sources/scripts/NAME rendered by render_entry()."""
    if name not in ("netmedic", "netmedic-udev"):
        raise ValueError(f"unknown script {name!r}")
    return render_entry(os.path.join(SCRIPTS_DIR, name), python, env, pythonpath)


def render_udev_rule(program: str, socket: Optional[str] = None) -> str:
    """netmedic/sources/scripts/90-netmedic.rules with RUN+= pointing at `program` (an absolute path) and, with
    `socket`, the TEST for the daemon's socket pointing there."""
    for path in (program, socket):
        if path is not None and (not os.path.isabs(path) or '"' in path):
            raise ValueError("the RUN program and the socket must be absolute paths without quotes")
    with open(os.path.join(UDEV_DIR, "90-netmedic.rules"), encoding="utf-8") as fh:
        text = fh.read()
    text = text.replace(INSTALL_PATHS["netmedic-udev"], program)
    if socket is not None:
        text = text.replace(f'TEST=="{DEFAULT_SOCKET}"', f'TEST=="{socket}"')
    return text


class NullListener:
    """Stands in for nl.Listener when the daemon runs with --no-netlink (tests that prove another
    trigger): never readable, reads nothing."""

    def __init__(self):
        self._r, self._w = os.pipe()

    def fileno(self) -> int:
        return self._r

    def read(self) -> list:
        return []

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
