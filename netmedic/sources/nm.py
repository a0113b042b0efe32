"""The daemon's NetworkManager source: dbus-python subscriptions on the system bus, in a thread of its
own that runs a GLib main loop.

What it listens to (sender org.freedesktop.NetworkManager):
  * org.freedesktop.NetworkManager.Device.StateChanged(new, old, reason) on every device: a bridge
    reaching 100 (activated) asks for a reconcile of that bridge — NetworkManager re-activating a
    bridge (con down/up, reload + up) has silently detached every port it does not manage (the VM
    taps), whether or not the bridge kept its ifindex; any state change of a bridge's port asks
    for a reconcile of its bridge;
  * org.freedesktop.DBus.NameOwnerChanged for org.freedesktop.NetworkManager: NetworkManager
    (re)starting asks for a full reconcile (it may have re-activated bridges while nobody watched);
  * org.freedesktop.DBus.Local.Disconnected: the bus went away (dbus-daemon restarted): reconnect.

It never acts: it hands `(bridges, reason)` to the daemon's loop, whose dispatcher runs the same
check -> heal path as for every other trigger. It degrades instead of failing: without python3-dbus /
python3-gi (the GLib loop), without a system bus or without NetworkManager it reports its state to the
daemon (audit `source_state`, `netmedic status`) and retries with a backoff (0.5 s doubling to
`max_backoff`); after any (re)connection it asks for one full reconcile, since events may have been
missed meanwhile.

dbus-python needs python3-gi's GLib main loop: on Debian use /usr/bin/python3 (python3-dbus,
python3-gi). A venv without gi runs the daemon without this source (status says why).
"""
from __future__ import annotations

import collections
import os
import threading
from typing import Optional

NM_NAME = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
DEVICE_IFACE = "org.freedesktop.NetworkManager.Device"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
NM_DEVICE_TYPE_BRIDGE = 13
NM_DEVICE_STATE_ACTIVATED = 100
SYS_NET = "/sys/class/net"


def _master_of(iface: str) -> Optional[str]:
    if not iface or "/" in iface:
        return None
    try:
        return os.path.basename(os.readlink(os.path.join(SYS_NET, iface, "master")))
    except OSError:
        return None


class NMSource:
    """A daemon event source (the interface of netmedic.daemon: name, fileno(), on_readable(daemon),
    poll(daemon, now), status(), close()). The D-Bus work happens in a thread; what it finds is queued
    and handed to the daemon's loop through a self-pipe, so the dispatcher is only touched there."""

    name = "networkmanager"

    def __init__(self, bus_address: Optional[str] = None, max_backoff: float = 5.0, call_timeout: float = 1.0):
        self.bus_address = bus_address  # None: the system bus (DBUS_SYSTEM_BUS_ADDRESS or /run/dbus)
        self.max_backoff = max_backoff
        self.call_timeout = call_timeout
        self.connected = False  # to the bus
        self.nm_running = False
        self.error: Optional[str] = None
        self.last_event: Optional[str] = None
        self.events = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._loop = None
        self._glib = None
        self._bus = None
        self._devices: dict = {}  # object path -> (iface, device type)
        self._masters: dict = {}  # port object path -> last bridge seen
        self._queue: collections.deque = collections.deque()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)

    # --- the daemon's side (its loop thread) ----------------------------------------------------
    def fileno(self):
        return self._rfd if self._rfd is not None else None

    def poll(self, daemon, now):
        if self._thread is None:
            self.start()
        return None  # event-driven from here on

    def on_readable(self, daemon) -> None:
        try:
            while os.read(self._rfd, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while self._queue:
            item = self._queue.popleft()
            if item[0] == "submit":
                _kind, bridges, reason = item
                daemon.note_event(self.name, reason)
                daemon.dispatcher.submit(bridges, reason)
            else:
                _kind, state, fields = item
                daemon.note_source(self.name, state, **fields)

    def status(self) -> dict:
        state = ("connected" if self.nm_running else "waiting for NetworkManager") if self.connected \
            else ("starting" if self.error is None else "retrying")
        return {"state": state, "bus": self.bus_address or "system", "events": self.events,
                "last_event": self.last_event, "error": self.error}

    def close(self) -> None:
        self.stop()
        for fd in (self._rfd, self._wfd):
            try:
                os.close(fd)
            except (OSError, TypeError):
                pass
        self._rfd = self._wfd = None

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="netmedic-nm", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        loop, glib = self._loop, self._glib
        if loop is not None and glib is not None:
            glib.idle_add(loop.quit)
        if self._thread is not None:
            self._thread.join(timeout)

    def _post(self, item) -> None:
        """Hand an item to the daemon's loop (source thread)."""
        self._queue.append(item)
        try:
            os.write(self._wfd, b"!")
        except (BlockingIOError, OSError, TypeError):
            pass  # the pipe is full (the loop will drain it) or closed (stopping)

    def submit(self, bridges, reason: str) -> None:
        self.events += 1
        self.last_event = reason
        self._post(("submit", bridges, reason))

    def log(self, state: str, **fields) -> None:
        self._post(("state", state, fields))

    # --- the source thread ----------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.5
        reported = None
        while not self._stop.is_set():
            try:
                import dbus
                import dbus.mainloop.glib
                from gi.repository import GLib
            except Exception as exc:  # ImportError, or gi failing to load its typelibs
                self._down(f"python3-dbus / python3-gi unavailable: {exc}", reported)
                reported = self.error
            else:
                self._glib = GLib
                try:
                    self._session(dbus, dbus.mainloop.glib.DBusGMainLoop(), GLib)
                    backoff = 0.5  # we were connected: start the backoff over
                except Exception as exc:
                    self._down(f"D-Bus: {exc}", reported)
                    reported = self.error
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, self.max_backoff)

    def _down(self, error: str, reported: Optional[str]) -> None:
        was = self.connected
        self.connected = self.nm_running = False
        self.error = error
        if was or error != reported:  # log a change, not every retry
            self.log("disconnected", error=error, reason="retrying with backoff")

    def _session(self, dbus, mainloop, GLib) -> None:
        if self.bus_address:
            bus = dbus.bus.BusConnection(self.bus_address, mainloop=mainloop)
        else:
            bus = dbus.bus.BusConnection(dbus.bus.BUS_SYSTEM, mainloop=mainloop)
        self._bus = bus
        loop = GLib.MainLoop()
        try:
            bus.set_exit_on_disconnect(False)
            bus.add_signal_receiver(lambda *a: loop.quit(), signal_name="Disconnected",
                                    dbus_interface="org.freedesktop.DBus.Local",
                                    path="/org/freedesktop/DBus/Local")
            bus.add_signal_receiver(self._on_owner, signal_name="NameOwnerChanged",
                                    dbus_interface="org.freedesktop.DBus", bus_name="org.freedesktop.DBus",
                                    arg0=NM_NAME)
            bus.add_signal_receiver(self._on_state, signal_name="StateChanged", dbus_interface=DEVICE_IFACE,
                                    bus_name=NM_NAME, path_keyword="path")
            self._devices.clear()
            self.nm_running = bool(bus.name_has_owner(NM_NAME))
            self.connected, self.error = True, None
            self.log("connected", nm_running=self.nm_running)
            # Whatever happened while nobody listened (a restart of the bus or of NM) is unknown.
            self.submit(None, "NetworkManager source connected")
            self._loop = loop
            if self._stop.is_set():
                return
            loop.run()  # until Disconnected (or stop())
            if not self._stop.is_set():
                raise RuntimeError("disconnected from the system bus")
        finally:
            self._loop = None
            self.connected = False
            try:
                bus.close()
            except Exception:
                pass
            self._bus = None

    # --- signal handlers (source thread) --------------------------------------------------------
    def _on_owner(self, name, old, new) -> None:
        if new and not old:
            self.nm_running = True
            self._devices.clear()
            self.log("connected", nm_running=True, reason="NetworkManager appeared")
            self.submit(None, "NetworkManager started")
        elif old and not new:
            self.nm_running = False
            self._devices.clear()
            self.log("waiting", error="NetworkManager left the bus", reason="waiting for it to come back")

    def _device(self, path: str):
        dev = self._devices.get(path)
        if dev is None:
            try:
                obj = self._bus.get_object(NM_NAME, path, introspect=False)
                props = obj.GetAll(DEVICE_IFACE, dbus_interface=PROPS_IFACE, timeout=self.call_timeout)
                dev = (str(props.get("Interface", "")), int(props.get("DeviceType", 0)))
            except Exception:
                return None
            self._devices[path] = dev
        return dev

    def _on_state(self, new, old, reason=0, path=None) -> None:
        try:
            new, old = int(new), int(old)
            dev = self._device(str(path)) if path else None
            if dev is None:
                return
            iface, dtype = dev
            if dtype == NM_DEVICE_TYPE_BRIDGE:
                if new == NM_DEVICE_STATE_ACTIVATED:
                    self.submit([iface], f"nm: bridge {iface} activated")
                return
            master = _master_of(iface)
            if master:
                self._masters[path] = master
            else:
                master = self._masters.get(path)
            if master:
                self.submit([master], f"nm: port {iface} of {master} state {old}->{new}")
        except Exception as exc:  # never let a handler kill the loop
            self.error = f"handler: {exc}"

