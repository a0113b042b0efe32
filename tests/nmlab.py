"""A confined NetworkManager / system D-Bus / systemd-udevd for tests and labs (the event-source tests
use it; production never imports it).

Everything runs inside a network namespace of a :class:`netmedic.lab.Topology` AND in a private
mount view: each process is started as ``ip netns exec NS unshare -m --propagation private sh -c
'mount --rbind DIR/run /run; mount --bind ... ; exec CMD'``, so that

  * ``/run`` (``/run/dbus``, ``/run/NetworkManager``, ``/run/udev``) is this lab's own directory: the
    lab's ``dbus-daemon --system`` listens on *its* ``/run/dbus/system_bus_socket``, and nothing
    else on the host (another bus, another test) sees or is seen by it — the host's ``/run/dbus`` is
    never touched, so there is nothing stale to clean up there;
  * ``/etc/NetworkManager`` (config, keyfile connections, ``dispatcher.d``),
    ``/usr/lib/NetworkManager/dispatcher.d`` and ``/var/lib/NetworkManager`` are the lab's: a
    dispatcher script "installed" for a test exists only in that view (nm-dispatcher is D-Bus
    activated, so it inherits the lab bus's view);
  * ``/etc/udev/rules.d`` and ``/usr/lib/udev/rules.d`` are the lab's, so the lab's systemd-udevd runs
    only the rules the test installs.

Every process is started with Topology.spawn() and ended by PID (its process group) by the lab or at
Topology.close().
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time

NM_CONF = """\
[main]
plugins=keyfile
no-auto-default=*
dns=none
rc-manager=unmanaged
hostname-mode=none
auth-polkit=false

[keyfile]
path=/etc/NetworkManager/system-connections
unmanaged-devices={unmanaged}

[logging]
level=INFO
"""

UDEVD = next((p for p in ("/usr/lib/systemd/systemd-udevd", "/lib/systemd/systemd-udevd")
              if os.path.exists(p)), "/lib/systemd/systemd-udevd")


def available() -> str:
    """'' when NetworkManager, nmcli, dbus-daemon and unshare are installed, else what is missing."""
    missing = [p for p in ("/usr/sbin/NetworkManager", "/usr/bin/nmcli", "/usr/bin/dbus-daemon",
                           "/usr/bin/unshare") if not os.path.exists(p)]
    return ", ".join(missing)


class NMLab:
    def __init__(self, topo, ns: str, workdir: str, unmanaged: str = "interface-name:vnet*"):
        self.topo, self.ns = topo, ns
        self.dir = os.path.abspath(workdir)
        self.run_dir = os.path.join(self.dir, "run")
        self.etc_nm = os.path.join(self.dir, "etc-nm")
        self.var_lib = os.path.join(self.dir, "var-lib")
        self.lib_dispatcher = os.path.join(self.dir, "lib-nm-dispatcher.d")
        self.udev_rules = os.path.join(self.dir, "udev-rules.d")
        self.empty = os.path.join(self.dir, "empty")
        for d in (os.path.join(self.run_dir, "dbus"), os.path.join(self.run_dir, "NetworkManager"),
                  os.path.join(self.run_dir, "udev"), os.path.join(self.etc_nm, "conf.d"),
                  os.path.join(self.etc_nm, "system-connections"), self.dispatcher_dir,
                  os.path.join(self.var_lib, "NetworkManager"), os.path.join(self.var_lib, "dbus"),
                  self.lib_dispatcher, self.udev_rules, self.empty):
            os.makedirs(d, exist_ok=True)
        # dbus-daemon drops to the messagebus user: it must be able to reach its files.
        for d in (self.dir, self.run_dir, os.path.join(self.run_dir, "dbus")):
            os.chmod(d, 0o755)
        if os.path.exists("/etc/machine-id"):
            shutil.copy("/etc/machine-id", os.path.join(self.var_lib, "dbus", "machine-id"))
        with open(os.path.join(self.etc_nm, "NetworkManager.conf"), "w") as fh:
            fh.write(NM_CONF.format(unmanaged=unmanaged))
        self.bus = None
        self.nm = None
        self.udevd = None
        self._logs = []
        topo.add_cleanup(self._close_logs)

    @property
    def dispatcher_dir(self) -> str:
        return os.path.join(self.etc_nm, "dispatcher.d")

    @property
    def bus_socket(self) -> str:
        """The bus socket's path as seen from the host (inside the lab it is /run/dbus/system_bus_socket)."""
        return os.path.join(self.run_dir, "dbus", "system_bus_socket")

    # -- the private view ------------------------------------------------------------------------
    def wrap(self, *argv: str, ro_sys: bool = False, pidns: bool = False) -> list:
        """argv run in the lab's private mount view. `pidns`: also in a PID namespace of its own whose
        init is argv (what it spawns dies with it). Not for the bus: NetworkManager authorises callers
        by the PID the bus reports, which is 0 across PID namespaces ("unknown connection")."""
        mounts = [("--rbind", self.run_dir, "/run"),
                  ("--bind", self.etc_nm, "/etc/NetworkManager"),
                  ("--bind", self.lib_dispatcher, "/usr/lib/NetworkManager/dispatcher.d"),
                  ("--bind", self.var_lib, "/var/lib"),
                  ("--bind", self.udev_rules, "/etc/udev/rules.d"),
                  ("--bind", self.empty, "/usr/lib/udev/rules.d")]
        script = " && ".join(f"mount {opt} {shlex.quote(src)} {dst}" for opt, src, dst in mounts
                             if os.path.isdir(dst))
        if ro_sys:
            script += " && mount -o remount,bind,ro /sys"
        script += ' && exec "$@"'
        pid = ["--pid", "--fork", "--kill-child", "--mount-proc"] if pidns else []
        return ["/usr/bin/unshare", "--mount", "--propagation", "private", *pid, "/bin/sh", "-c", script,
                "sh", *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 30, env=None):
        return self.topo.run(self.ns, *self.wrap(*argv), check=check, timeout=timeout, env=env)

    def spawn(self, *argv: str, env=None, log: str = None, ro_sys: bool = False, pidns: bool = False):
        out = None
        if log:
            out = open(os.path.join(self.dir, log), "a")
            self._logs.append(out)
        return self.topo.spawn(self.ns, *self.wrap(*argv, ro_sys=ro_sys, pidns=pidns), env=env, stdout=out,
                               stderr=subprocess.STDOUT if out else None)

    def _close_logs(self):
        for fh in self._logs:
            fh.close()
        self._logs = []

    def log(self, name: str) -> str:
        try:
            with open(os.path.join(self.dir, name)) as fh:
                return fh.read()
        except OSError:
            return ""

    # -- D-Bus -----------------------------------------------------------------------------------
    def start_bus(self, timeout: float = 10.0):
        # The pid file and socket under the lab's /run/dbus are this lab's own (a previous bus of this
        # lab that was killed leaves them): dbus-daemon refuses to start while the pid file exists.
        for name in ("pid", "system_bus_socket"):
            try:
                os.unlink(os.path.join(self.run_dir, "dbus", name))
            except FileNotFoundError:
                pass
        self.bus = self.spawn("/usr/bin/dbus-daemon", "--system", "--nofork", "--nopidfile",
                              log="dbus.log", env=_clean_env())
        _wait(lambda: os.path.exists(self.bus_socket), timeout, "the lab's dbus-daemon", self.bus)
        return self.bus

    def kill_bus(self):
        _kill(self.bus)
        self.bus = None

    # -- NetworkManager --------------------------------------------------------------------------
    def start_nm(self, timeout: float = 20.0):
        self.nm = self.spawn("/usr/sbin/NetworkManager", "--no-daemon", "--debug",
                             "--config=/etc/NetworkManager/NetworkManager.conf",
                             "--config-dir=/etc/NetworkManager/conf.d",
                             "--system-config-dir=/etc/NetworkManager/conf.d",
                             "--state-file=/var/lib/NetworkManager/NetworkManager.state",
                             log="nm.log", ro_sys=True, env=_clean_env())

        def running():
            res = self.run("/usr/bin/nmcli", "-t", "-f", "RUNNING", "general", "status", check=False,
                           timeout=10)
            return res.returncode == 0 and "running" in res.stdout

        _wait(running, timeout, "NetworkManager", self.nm)
        return self.nm

    def kill_nm(self):
        _kill(self.nm)
        self.nm = None

    def nmcli(self, *args: str, check: bool = True, timeout: float = 30):
        return self.run("/usr/bin/nmcli", *args, check=check, timeout=timeout)

    def add_connection(self, name: str, text: str) -> str:
        """Write a keyfile connection (mode 0600, as NM requires); `nmcli con reload` picks it up."""
        path = os.path.join(self.etc_nm, "system-connections", f"{name}.nmconnection")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return path

    def install_dispatcher_script(self, name: str, text: str) -> str:
        path = os.path.join(self.dispatcher_dir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(path, 0o755)  # root-owned (we are root), not group/other writable: nm-dispatcher checks
        return path

    # -- udev ------------------------------------------------------------------------------------
    def install_udev_rule(self, name: str, text: str) -> str:
        path = os.path.join(self.udev_rules, name)
        with open(path, "w") as fh:
            fh.write(text)
        return path

    def start_udevd(self, timeout: float = 10.0):
        # --daemon would fork away from the PID we track: run it in the foreground under spawn().
        self.udevd = self.spawn(UDEVD, "--debug", log="udevd.log", env=_clean_env())
        _wait(lambda: os.path.exists(os.path.join(self.run_dir, "udev", "control")), timeout,
              "systemd-udevd", self.udevd)
        return self.udevd

    def kill_udevd(self):
        _kill(self.udevd)
        self.udevd = None


def _clean_env() -> dict:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}


def _wait(cond, timeout, what, proc=None):
    t0 = time.monotonic()
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting")
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{what} did not come up within {timeout:g} s")
        time.sleep(0.05)


def _kill(proc, sig=signal.SIGKILL):
    """Kill one process this lab started (its process group: it was started in a session of its own)."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(10)
