"""The client side of the daemon's event socket (its server: netmedic.sources.eventsocket), for the NetworkManager dispatcher script and the udev
RUN program (stdlib only at import time: both must start fast and never hang).

Protocol (the same as netmedic.hooks.notify, which the libvirt hooks use): the daemon listens on a
root-only Unix socket, default /run/netmedic/netmedic.sock, overridable with NETMEDIC_SOCKET. One
datagram (SOCK_DGRAM) is one event: a JSON object on one line, for example

    {"source": "nm-dispatcher", "action": "up", "interface": "br0", "bridges": ["br0"]}
    {"source": "udev", "action": "add", "interface": "vnet3"}
    {"source": "nm-dispatcher", "action": "connectivity-change"}

"bridges" lists the bridges to reconcile when the sender knows them; "interface" names the device the
event was about (the daemon maps a VM tap to its bridge); an event with neither asks for everything.
If the socket turns out to be a stream socket, post() sends the same line, newline-terminated, over a
connection instead. post() never raises and gives up after `timeout` seconds.

When no daemon listens, the dispatcher script heals by itself: fallback_heal() runs one scoped
reconcile in this process, bounded in time (SIGALRM), so the fix never depends on the daemon.
"""
from __future__ import annotations

import errno
import json
import socket

from netmedic.settings import (
    DEFAULT_SOCKET,  # noqa: F401  (re-exported)
    from_environ,
)
from netmedic.settings import ENVIRONMENT as SETTINGS

MAX_EVENT_BYTES = 4096


def settings(environ=None) -> dict:
    """The NETMEDIC_* settings (netmedic.settings.ENVIRONMENT) of `environ` (default os.environ)."""
    return from_environ(environ, SETTINGS)


def socket_path(environ=None) -> str:
    return settings(environ)["socket"]


def encode(event: dict) -> bytes:
    return json.dumps(event, separators=(",", ":"), default=str).encode("utf-8")


def post(event: dict, socket_path=None, timeout: float = 0.2) -> bool:
    """Send one event to the daemon. True when its socket took it; False when no daemon listens (no
    socket, nobody bound, busy past `timeout`) or the event is too big."""
    path = socket_path or settings()["socket"]
    data = encode(event)
    if len(data) > MAX_EVENT_BYTES or b"\n" in data:
        return False
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    except OSError:
        return False
    try:
        sock.settimeout(timeout)
        sock.sendto(data, path)
        return True
    except OSError as exc:
        if exc.errno != errno.EPROTOTYPE:  # EPROTOTYPE: the server is a stream socket
            return False  # ENOENT / ECONNREFUSED: no daemon; EAGAIN / timeout: it is stuck
    finally:
        sock.close()
    return _post_stream(data, path, timeout)


def _post_stream(data: bytes, path: str, timeout: float) -> bool:
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:
        return False
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(data + b"\n")
        return True
    except OSError:
        return False
    finally:
        sock.close()


class _Timeout(BaseException):
    pass


def fallback_heal(bridges, trigger: str, environ=None, timeout: float = 5.0) -> int:
    """One reconcile pass of `bridges` (None: all) in this process, as `netmedic heal --bridge BR`
    would do, given up after `timeout` seconds (SIGALRM; main thread only). Returns 0 when it ran,
    1 on a netmedic error, 2 when it timed out. Never raises."""
    import signal

    conf = settings(environ)

    def _alarm(_signum, _frame):
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, max(0.1, float(timeout)))
    audit = None
    try:
        from netmedic.audit import Audit
        from netmedic.settings import build_engine, load_policy

        policy = load_policy(conf["policy"])
        audit = Audit(conf["audit_log"], trigger=trigger)
        engine = build_engine(policy, conf["state_dir"], audit, conf["domain_dir"], conf["network_dir"])
        engine.reconcile(trigger=trigger, bridges=bridges)
        return 0
    except _Timeout:
        return 2
    except Exception:
        return 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if audit is not None:
            try:
                audit.close()
            except Exception:
                pass
