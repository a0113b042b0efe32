"""Post one event to the running daemon's Unix socket (stdlib only: hooks, dispatcher scripts and udev
RUN programs import this and nothing else).

The socket is a SOCK_DGRAM socket, root-only (mode 0600 in a root-owned directory). One datagram is
one JSON object, e.g. `{"source": "libvirt-hook", "event": "start", "bridges": ["br0"]}` or
`{"source": "libvirt-hook", "event": "stopped", "domain": "vm1"}`; the daemon turns it into a
reconcile of those bridges (of that domain's bridges; everything when it does not know them).
post() never blocks for long and never raises: it returns False when no daemon listens.
"""
from __future__ import annotations

import json
import os
import socket

# One client for the event socket: the dispatcher script's and udev's (stdlib only as well).
from netmedic.sources.client import DEFAULT_SOCKET, MAX_EVENT_BYTES, post, socket_path  # noqa: F401


def request(event: dict, path=None, timeout: float = 5.0):
    """Send `event` and wait for the daemon's one-datagram answer (a dict), or None when no daemon
    answers in time (the caller then does the work itself). The answer comes back to a socket bound
    in the daemon's (root-only) run directory, which the request names as "reply"."""
    import secrets

    path = path or socket_path()
    reply_path = os.path.join(os.path.dirname(os.path.abspath(path)),
                              f".hook-{os.getpid()}-{secrets.token_hex(4)}.sock")
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    except OSError:
        return None
    try:
        try:
            sock.bind(reply_path)
        except OSError:  # no run directory: no daemon
            return None
        data = json.dumps(dict(event, reply=reply_path), separators=(",", ":"), default=str).encode("utf-8")
        if len(data) > MAX_EVENT_BYTES:
            return None
        sock.settimeout(0.2)
        try:
            sock.sendto(data, path)
        except OSError:
            return None
        sock.settimeout(timeout)
        try:
            answer = json.loads(sock.recv(MAX_EVENT_BYTES).decode("utf-8"))
        except (OSError, ValueError):
            return None
        return answer if isinstance(answer, dict) else None
    finally:
        sock.close()
        try:
            os.unlink(reply_path)
        except OSError:
            pass
