"""The daemon's event socket: the server side of the protocol netmedic.sources.client (the dispatcher
script, the udev program) and netmedic.hooks.notify (the libvirt hooks) speak.

A root-only Unix datagram socket (default netmedic.settings.DEFAULT_SOCKET): one JSON object per
datagram, `{"source": "...", "bridges": [...]}`, `{"source": "...", "domain": "NAME"}` or
`{"source": "...", "interface": "IFACE"}` becomes a dispatcher.submit() of the affected bridges; a
hook's `{"request": ...}` is answered on the reply socket it names (Daemon.handle_request). An event
source of the daemon like the others (name, fileno(), on_readable(daemon), poll(daemon, now), status(),
close()).
"""
from __future__ import annotations

import json
import os
import socket
import struct
from typing import Optional

from netmedic import inventory


def _remove_stale_replies(directory: str) -> None:
    """Reply sockets (.hook-PID-TOKEN.sock) left by hooks that were killed while waiting."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not (name.startswith(".hook-") and name.endswith(".sock")):
            continue
        try:
            os.kill(int(name.split("-")[1]), 0)
            continue  # that hook still runs
        except (ValueError, IndexError):
            continue
        except ProcessLookupError:
            pass
        except OSError:
            continue
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass


MAX_DATAGRAM = 256 * 1024  # a hook's request carries the domain XML


class EventSocket:
    """The daemon's root-only event socket: SOCK_DGRAM, mode 0600 in a 0750 root directory, and each
    datagram's sender credentials checked (uid 0). One JSON object per datagram."""

    name = "socket"

    def __init__(self, path: str):
        self.path = path
        self.sock = None
        self.ino = None
        self.received = self.rejected = 0
        self.error: Optional[str] = None
        directory = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(directory, mode=0o750, exist_ok=True)
            if os.path.exists(path):
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                try:
                    probe.connect(path)
                    self.error = f"{path} is in use by another daemon: socket source off"
                    return
                except OSError:
                    os.unlink(path)  # stale: its daemon is gone
                finally:
                    probe.close()
            _remove_stale_replies(directory)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            old = os.umask(0o177)
            try:
                sock.bind(path)
            finally:
                os.umask(old)
            os.chmod(path, 0o600)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.setblocking(False)
            self.sock, self.ino = sock, os.stat(path).st_ino
        except OSError as exc:
            self.error = f"{path}: {exc.strerror or exc}"

    def fileno(self):
        return self.sock.fileno() if self.sock is not None else None

    def status(self) -> dict:
        return {"state": "listening" if self.sock is not None else "off", "path": self.path,
                "received": self.received, "rejected": self.rejected, "error": self.error}

    def poll(self, daemon, now):
        return None

    def on_readable(self, daemon) -> None:
        for _ in range(1000):
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(MAX_DATAGRAM, socket.CMSG_SPACE(12))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            uid = None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= 12:
                    _pid, uid, _gid = struct.unpack("iII", payload[:12])
            try:
                event = json.loads(data.decode("utf-8"))
                if uid != 0:
                    raise ValueError(f"sender uid {uid} is not root")
                if not isinstance(event, dict):
                    raise ValueError("not a JSON object")
                self._submit(daemon, event)
                self.received += 1
            except (ValueError, UnicodeDecodeError) as exc:
                self.rejected += 1
                daemon.note_event("socket", f"rejected event: {exc}")

    def _submit(self, daemon, event: dict) -> None:
        if "request" in event:
            return self._answer(daemon, event)
        source = str(event.get("source", "socket"))[:64]
        what = str(event.get("event", ""))[:64]
        domain = event.get("domain")
        bridges = event.get("bridges")
        if bridges is not None and (not isinstance(bridges, list) or
                                    not all(isinstance(b, str) and inventory.valid_ifname(b) for b in bridges)):
            raise ValueError("bridges must be a list of interface names")
        iface = event.get("interface")
        if not bridges and isinstance(domain, str):
            bridges = daemon.bridges_of(domain)  # None (everything) when the daemon does not know it
        elif not bridges and isinstance(iface, str) and inventory.valid_ifname(iface):
            d = daemon.dispatcher  # a VM tap -> its bridge; a VM bridge -> itself; else everything
            known = d.tap_bridge.get(iface) or (iface if iface in d.vm_bridges else None)
            bridges = [known] if known else None
        elif not bridges:
            bridges = None
        label = " ".join(x for x in (source, what, f"domain={domain}" if domain else "",
                                     f"interface={iface}" if isinstance(iface, str) else "") if x)
        daemon.note_event(source, label + (f" bridges={','.join(bridges)}" if bridges else " (all bridges)"))
        daemon.dispatcher.submit(bridges, label)

    def _answer(self, daemon, event: dict) -> None:
        """A hook hands its phase to the daemon. With a "reply" socket (bound by the hook in this
        root-only directory) the hook waits for the answer: JSON (netmedic.hooks.notify.request), or
        with "answer": "line" one text line `ok RESULT` / `error TEXT`, the refusal's reason on the next
        line (the entry script's fast path, which imports no json). Without "reply": done, no answer."""
        reply = event.get("reply")
        if reply is not None and not (
                isinstance(reply, str) and os.path.dirname(reply) == os.path.dirname(os.path.abspath(self.path))
                and os.path.basename(reply).startswith(".hook-")):
            raise ValueError(f"reply path {reply!r} is not in {os.path.dirname(self.path)}")
        try:
            answer = daemon.handle_request(event)
        except Exception as exc:  # noqa: BLE001 - the hook then does the work itself
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            daemon.note_event("socket", f"hook request failed: {exc!r}")
        if reply is None:
            return
        if event.get("answer") == "line":
            if answer.get("ok"):
                data = f"ok {answer.get('result') or 'done'}\n{answer.get('reason') or ''}"
            else:
                data = f"error {answer.get('error') or 'failed'}"
            data = data.encode("utf-8")
        else:
            data = json.dumps(answer, default=str).encode("utf-8")
        try:
            self.sock.sendto(data[:4096], reply)
        except OSError:
            pass  # the hook gave up waiting

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            try:
                if os.stat(self.path).st_ino == self.ino:
                    os.unlink(self.path)
            except OSError:
                pass
