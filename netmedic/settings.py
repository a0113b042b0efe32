"""What a netmedic process is configured with, in one place: the default paths, the NETMEDIC_*
environment the hooks, the NetworkManager dispatcher script and the udev program read (libvirt,
nm-dispatcher and udev give their programs no useful environment), and the one function that builds
an Engine from them (`build_engine`, which loads the plugins of the entry-point groups once).

Importing this module touches nothing and imports only the stdlib: the event-socket client and the
hooks' entry paths import it on their fast path.

Two copies of a default cannot import this module and are checked against it by
tests/unit/test_settings.py: policies/config.py's DEFAULT_POLICY_PATH (policies/ imports no netmedic
module beyond the pure ones) and the socket path written into the entry scripts (hooks/scripts/*,
netmedic/sources/scripts/*: they import nothing on their fast path) and into the udev rule.
"""
from __future__ import annotations

import os
from typing import Optional

from netmedic import plugin

DEFAULT_SOCKET = "/run/netmedic/netmedic.sock"  # the daemon's event socket; status.json is beside it
DEFAULT_STATE_DIR = "/var/lib/netmedic"  # netmedic's records and bounds (state.json)
DEFAULT_AUDIT_LOG = "/var/log/netmedic/audit.jsonl"
DEFAULT_POLICY_PATH = "/etc/netmedic/policy.yaml"  # else the shipped policies/default.yaml
DEFAULT_DOMAIN_DIR = "/run/libvirt/qemu"  # libvirt's run-state XML of running domains
DEFAULT_NETWORK_DIR = "/run/libvirt/network"  # ... and of active networks
DEFAULT_LEASES_DIR = "/var/lib/libvirt/dnsmasq"  # libvirt's dnsmasq lease files (*.status)

# key -> (environment variable, default): the same for the CLI's defaults, the libvirt hooks
# (netmedic.hooks.DEFAULTS adds their timeouts), the dispatcher script and the udev program.
ENVIRONMENT = {
    "policy": ("NETMEDIC_POLICY", None),
    "audit_log": ("NETMEDIC_AUDIT_LOG", DEFAULT_AUDIT_LOG),
    "state_dir": ("NETMEDIC_STATE_DIR", DEFAULT_STATE_DIR),
    "domain_dir": ("NETMEDIC_DOMAIN_XML_DIR", DEFAULT_DOMAIN_DIR),
    "network_dir": ("NETMEDIC_NETWORK_XML_DIR", DEFAULT_NETWORK_DIR),
    "socket": ("NETMEDIC_SOCKET", DEFAULT_SOCKET),
}


def from_environ(environ=None, table=None) -> dict:
    """{key: value} of `table` (default ENVIRONMENT): the variable when set and not empty, else the default."""
    env = os.environ if environ is None else environ
    return {key: (env.get(var) or default) for key, (var, default) in (table or ENVIRONMENT).items()}


def load_policy(path: Optional[str] = None, mode: Optional[str] = None):
    """The policy at `path` (None: DEFAULT_POLICY_PATH when it exists, else the shipped defaults), with
    the plugins loaded first so that it may configure a third-party invariant; `mode` overrides every
    invariant's mode (the CLI's --mode)."""
    plugin.load_plugins()
    from netmedic.policies import config

    return config.load(path).with_mode(mode)


def build_engine(policy, state_dir: Optional[str] = None, audit=None, domain_dir: Optional[str] = None,
                 network_dir: Optional[str] = None, dry_run: bool = False, **kwargs):
    """The one place an Engine is built (CLI, daemon, hooks, dispatcher fallback, bench): the state in
    `state_dir` (default DEFAULT_STATE_DIR), the run-state XML directories as given (None: none), the
    plugins of the entry-point groups loaded. `policy` is a loaded Policy or a path (None: the default,
    see load_policy). Other keyword arguments go to Engine (ops, clock, sleep)."""
    plugin.load_plugins()
    from netmedic.engine import Engine
    from netmedic.state import State

    if policy is None or isinstance(policy, str):
        policy = load_policy(policy)
    engine = Engine(policy, State(state_dir or DEFAULT_STATE_DIR), audit, domain_dir, network_dir,
                    dry_run=dry_run, **kwargs)
    if audit is not None:  # a malformed state file moved aside, a state that cannot be written: audited
        engine.state.report = engine._audit
    return engine


LAST_GOOD_POLICY = "policy.last-good.yaml"  # in the state directory


def load_daemon_policy(path: Optional[str], mode: Optional[str], state_dir: Optional[str]):
    """(the daemon's; loads the plugins first, as load_policy does)
    The policy the daemon starts with: the file, else (it cannot be read or is refused: the admin
    must fix it, restarting would not help) the last good policy saved in the state directory, else
    the shipped default. Returns (policy, problem or None)."""
    from netmedic.errors import NetmedicError
    from netmedic.policies import config

    try:
        policy = load_policy(path, mode)
    except (NetmedicError, RecursionError, MemoryError, ValueError) as exc:
        problem = f"{type(exc).__name__}: {exc}" if not isinstance(exc, NetmedicError) else str(exc)
    else:
        save_last_good(policy, state_dir)
        return policy, None
    last = os.path.join(state_dir, LAST_GOOD_POLICY) if state_dir else None
    if last and os.path.isfile(last):
        try:
            return config.load(last).with_mode(mode), problem
        except (NetmedicError, RecursionError, MemoryError, ValueError):
            pass
    return config.load(config.SHIPPED_DEFAULT).with_mode(mode), problem


def save_last_good(policy, state_dir: Optional[str]) -> None:
    """Keep a copy of a policy that loaded, for a start-up when the file has gone bad."""
    from netmedic.policies import config

    src = getattr(policy, "source", None)
    if not state_dir or not src or not os.path.isfile(src) or src == config.SHIPPED_DEFAULT:
        return
    dst = os.path.join(state_dir, LAST_GOOD_POLICY)
    if os.path.abspath(src) == os.path.abspath(dst):
        return
    tmp = f"{dst}.{os.getpid()}.tmp"
    try:
        with open(src, "rb") as fh:
            data = fh.read(1 << 20)
        try:
            with open(dst, "rb") as fh:
                if fh.read(1 << 20) == data:
                    return
        except OSError:
            pass
        os.makedirs(state_dir, mode=0o750, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, dst)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
