"""The DEB and the RPM (packaging/, docs/packaging.md).

- Both packages are built once per test session (`packaging/build.sh`, which also skips a rebuild when
  the source tarball did not change) and checked against ONE expected layout (LAYOUT below): files,
  modes, symlinks, conffiles, maintainer scripts and dependencies.
- The .deb is installed on this machine with apt-get and Debian's own python3 and distro packages, the
  unit's ExecStart is run by hand (no systemd as PID 1 here) in a network namespace of the test's own,
  the installed libvirt hook is fed a domain XML at each phase and must pin the VM MAC sticky on a tap
  of the test's own, then `apt-get remove` must leave only the admin's files and `apt-get purge`
  nothing. The package is purged at the end even when a step fails.
- With the package installed again, a libvirtd of the test's own (tests/integration/test_libvirt.py's harness, under
  its lock on /etc/libvirt/hooks) starts after the install and `virsh start` must pin through the
  installed hook.

The machine is shared: the install test runs only when nothing of netmedic is installed on it (else it
is skipped, naming what is there), and it stops only the processes it started.
"""
from __future__ import annotations

import glob
import io
import json
import os
import re
import shlex
import signal
import subprocess
import tarfile
import time

import pytest

from tests.conftest import is_sticky_pin
from tests.integration.test_libvirt import Libvirt, _foreign_hooks, _serialize, _why_not, domain_xml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "build", "packages")
CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root"}
APT_ENV = dict(CLEAN_ENV, DEBIAN_FRONTEND="noninteractive")

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/dpkg"),
                                reason="needs root on a Debian host")


def _exists(rel):
    return os.path.exists(os.path.join(ROOT, rel))


def _dispatcher_names():
    """The names packaging/install-layout.sh gives the NetworkManager dispatcher script."""
    return ["90-netmedic"] if _exists("netmedic/sources/scripts/netmedic") else []


# The one expected layout of both packages: path -> (kind, mode, symlink target). Paths are the
# merged-/usr ones (the .deb's /lib/systemd/system is /usr/lib/systemd/system on Debian 12).
LAYOUT = {
    "/usr/bin/netmedic": ("exe", 0o755, None),
    "/usr/lib/systemd/system/netmedic.service": ("file", 0o644, None),
    "/usr/lib/udev/rules.d/90-netmedic.rules": ("file", 0o644, None),
    "/etc/netmedic/policy.yaml": ("conffile", 0o644, None),
    "/etc/logrotate.d/netmedic": ("conffile", 0o644, None),
    "/usr/share/man/man8/netmedic.8": ("file", 0o644, None),
    "/usr/share/bash-completion/completions/netmedic": ("file", 0o644, None),
    "/usr/share/netmedic/prometheus/netmedic-alerts.yml": ("file", 0o644, None),
    "/usr/share/netmedic/prometheus/netmedic-alerts.test.yml": ("file", 0o644, None),
    "/usr/share/netmedic/prometheus/netmedic-dashboard.json": ("file", 0o644, None),
    "/var/log/netmedic": ("dir", 0o750, None),
    "/var/lib/netmedic": ("dir", 0o750, None),
}
for _kind, _name in (("qemu", "libvirt-qemu-hook"), ("network", "libvirt-network-hook")):
    if _exists(f"hooks/scripts/{_kind}"):
        LAYOUT[f"/usr/libexec/netmedic/{_name}"] = ("exe", 0o755, None)
        LAYOUT[f"/etc/libvirt/hooks/{_kind}.d/netmedic"] = ("symlink", None, f"/usr/libexec/netmedic/{_name}")


def _udev_program():
    """The udev rule's RUN program (the path the event sources' rule names)."""
    rule = os.path.join(ROOT, "netmedic", "sources", "scripts", "90-netmedic.rules")
    with open(rule) as fh:
        return re.search(r'RUN\+="(/[^" ]+)', fh.read()).group(1)


UDEV_PROGRAM = _udev_program()
LAYOUT[UDEV_PROGRAM] = ("exe", 0o755, None)
for _name in _dispatcher_names():
    LAYOUT[f"/usr/lib/NetworkManager/dispatcher.d/{_name}"] = ("exe", 0o755, None)
PY_MODULES = ("netmedic/__init__.py", "netmedic/cli.py", "netmedic/daemon.py", "netmedic/healers/fdb_pin.py",
              "netmedic/policies/config.py", "netmedic/policies/default.yaml", "netmedic/dispatcher/__init__.py")


def _source_modules():
    """Every module of the netmedic package in the tree (following netmedic/healers -> ../healers etc.)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, "netmedic"), followlinks=True):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        if "__init__.py" not in filenames:
            dirnames[:] = []
            continue
        rel = os.path.relpath(dirpath, ROOT)
        out += [os.path.join(rel, f) for f in filenames if f.endswith(".py")]
    return sorted(out)


RPM_ONLY = {"/usr/lib/systemd/system-preset/90-netmedic.preset"}  # Debian enables units in postinst
# Runtime dependencies: (Debian name, EL9 name), and the weak ones.
DEPENDS = [("python3-pyroute2", "python3-pyroute2"), ("python3-structlog", "python3-structlog"),
           ("python3-yaml", "python3-pyyaml"), ("iproute2", "iproute")]
RECOMMENDS = [("python3-libvirt", "python3-libvirt"), ("python3-dbus", "python3-dbus"),
              ("python3-prometheus-client", "python3-prometheus_client")]
SITELIB = re.compile(r"^/usr/lib/python3[.0-9]*/(dist|site)-packages/")


def normalize(path):
    """A package path in LAYOUT's terms, or None for docs, licenses and Python byte-code."""
    path = "/" + path.lstrip("./").rstrip("/") if path not in ("/", "./") else "/"
    path = re.sub(r"^/lib/(systemd|udev)/", r"/usr/lib/\1/", path)
    if re.match(r"^/usr/share/(doc|licenses)/netmedic", path) or re.search(r"/__pycache__(/|$)", path):
        return None
    path = re.sub(r"^(/usr/share/man/.*)\.(gz|bz2|xz|zst)$", r"\1", path)
    if SITELIB.match(path):
        rest = SITELIB.sub("", path)
        if re.match(r"netmedic-[^/]+\.dist-info/(RECORD|INSTALLER|REQUESTED|direct_url.json)$", rest):
            return None
        return "{sitelib}/" + re.sub(r"^netmedic-[^/]+\.dist-info", "netmedic.dist-info", rest)
    return path


def run(argv, check=True, **kw):
    kw.setdefault("env", CLEAN_ENV)
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


# --- building ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def packages():
    """{'deb': path, 'rpm': path}, built once per session (and only when the source changed)."""
    deps = run(["bash", os.path.join(ROOT, "scripts", "packaging-deps.sh")], check=False, timeout=600)
    if deps.returncode != 0:
        pytest.skip(f"packaging build dependencies missing: {deps.stderr.strip()}")
    out = {}
    for kind in ("deb", "rpm"):
        run(["bash", os.path.join(ROOT, "packaging", "build.sh"), kind], timeout=600)
    [out["deb"]] = glob.glob(os.path.join(OUT, "netmedic_*_all.deb"))
    [out["rpm"]] = glob.glob(os.path.join(OUT, "netmedic-*.el9.noarch.rpm"))  # one per target: tests/test_rpm_targets.py
    return out


def deb_entries(deb):
    """{normalized path: (kind, mode, link target)} from the .deb's data tarball."""
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], capture_output=True, check=True).stdout
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            path = normalize(m.name)
            if path is None or path == "/":
                continue
            kind = "dir" if m.isdir() else "symlink" if m.issym() else (
                "exe" if m.mode & 0o111 else "file")
            out[path] = (kind, m.mode & 0o7777, m.linkname or None, m.uname)
    conffiles = run(["dpkg-deb", "--info", deb, "conffiles"]).stdout.split()
    for c in conffiles:
        kind, mode, link, owner = out[normalize(c)]
        out[normalize(c)] = ("conffile", mode, link, owner)
    return out


def rpm_entries(rpm):
    qf = "[%{FILENAMES}\t%{FILEMODES}\t%{FILEUSERNAME}\t%{FILELINKTOS}\t%{FILEFLAGS:fflags}\n]"
    out = {}
    for line in run(["rpm", "-qp", "--qf", qf, rpm]).stdout.splitlines():
        name, mode, user, link, flags = line.split("\t")
        path = normalize(name)
        if path is None:
            continue
        mode = int(mode) & 0xFFFF
        kind = ("dir" if mode & 0o170000 == 0o040000 else "symlink" if mode & 0o170000 == 0o120000
                else "conffile" if "c" in flags else "exe" if mode & 0o111 else "file")
        out[path] = (kind, mode & 0o7777, link or None, user)
    return out


def check_layout(entries, what):
    for path, (kind, mode, link) in LAYOUT.items():
        assert path in entries, f"{what}: {path} missing"
        got_kind, got_mode, got_link, owner = entries[path]
        assert owner == "root", f"{what}: {path} owned by {owner}"
        assert got_kind == kind, f"{what}: {path} is a {got_kind}, expected a {kind}"
        if link:
            assert got_link == link, f"{what}: {path} -> {got_link}, expected -> {link}"
        if mode is not None and kind != "dir":  # dh_fixperms ships dirs 0755; postinst makes them 0750
            assert got_mode == mode, f"{what}: {path} mode {oct(got_mode)}, expected {oct(mode)}"
    for mod in PY_MODULES:
        assert "{sitelib}/" + mod in entries, f"{what}: Python module {mod} missing"
    missing = [m for m in _source_modules() if "{sitelib}/" + m not in entries]
    assert missing == [], f"{what}: modules of the tree not packaged (setup.cfg packages?): {missing}"
    assert "{sitelib}/netmedic.dist-info/entry_points.txt" in entries
    # no other file or link (directories: only those leading to these)
    extra = [p for p, e in entries.items() if e[0] != "dir" and p not in LAYOUT
             and not p.startswith("{sitelib}/") and p not in RPM_ONLY]
    assert extra == [], f"{what}: unexpected files {extra}"


def test_deb_layout_and_metadata(packages):
    deb = packages["deb"]
    entries = deb_entries(deb)
    check_layout(entries, "deb")
    depends = run(["dpkg-deb", "-f", deb, "Depends"]).stdout
    recommends = run(["dpkg-deb", "-f", deb, "Recommends"]).stdout
    for debname, _ in DEPENDS:
        assert re.search(rf"(^|[ ,]){re.escape(debname)}\b", depends), (debname, depends)
    for debname, _ in RECOMMENDS:
        assert debname in recommends
    assert "python3-pip" not in depends and "pip" not in recommends
    with open(os.path.join(OUT, "lintian.txt")) as fh:
        tags = re.findall(r"^([EW]): netmedic: (\S+)", fh.read(), re.M)
    # every remaining lintian warning is explained in docs/packaging.md; no error at all
    assert [t for t in tags if t[0] == "E"] == []
    with open(os.path.join(ROOT, "docs", "packaging.md")) as fh:
        doc = fh.read()
    assert [t for _, t in tags if t not in doc] == []


def test_deb_maintainer_scripts(packages, tmp_path):
    run(["dpkg-deb", "-e", packages["deb"], str(tmp_path / "ctl")])
    s = {n: (tmp_path / "ctl" / n).read_text() for n in ("postinst", "prerm", "postrm")}
    assert "deb-systemd-helper enable 'netmedic.service'" in s["postinst"]  # enable (presets: was-enabled)
    assert "deb-systemd-invoke $_dh_action 'netmedic.service'" in s["postinst"]  # start / restart on upgrade
    assert "restart libvirtd" in s["postinst"] and '[ -z "$2" ]' in s["postinst"]  # once, first install
    assert "deb-systemd-invoke stop 'netmedic.service'" in s["prerm"] and '"$1" = remove' in s["prerm"]
    purge = s["postrm"].split("purge)")[1].split(";;")[0]
    assert "/var/log/netmedic" in purge and "/var/lib/netmedic" in purge
    remove = s["postrm"].split("remove)")[1].split(";;")[0]
    assert "/var/log" not in remove and "/var/lib" not in remove and "/etc/netmedic" not in remove


def test_rpm_matches_the_same_layout(packages):
    rpm = packages["rpm"]
    listed = {normalize(p) for p in run(["rpm", "-qp", "--list", rpm]).stdout.split()} - {None}
    entries = rpm_entries(rpm)
    assert set(entries) == listed
    check_layout(entries, "rpm")
    # the same Python modules as the .deb
    deb_py = {p for p in deb_entries(packages["deb"]) if p.startswith("{sitelib}/")}
    rpm_py = {p for p in entries if p.startswith("{sitelib}/")}
    assert deb_py - {"{sitelib}/netmedic.dist-info/top_level.txt"} == \
        rpm_py - {"{sitelib}/netmedic.dist-info/top_level.txt"}
    assert entries["/etc/netmedic/policy.yaml"][0] == "conffile"
    flags = run(["rpm", "-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]", rpm]).stdout
    assert re.search(r"^/etc/netmedic/policy.yaml c.*n", flags, re.M), flags  # %config(noreplace)

    requires = run(["rpm", "-qp", "--requires", rpm]).stdout.split("\n")
    req_names = {r.split()[0] for r in requires if r}
    for _, elname in DEPENDS:
        assert elname in req_names, (elname, requires)
    assert not [r for r in req_names if "dist(" in r or "pip" in r], req_names
    recommends = run(["rpm", "-qp", "--recommends", rpm]).stdout
    for _, elname in RECOMMENDS:
        assert elname in recommends

    scripts = run(["rpm", "-qp", "--scripts", rpm]).stdout
    post = scripts.split("postinstall scriptlet")[1].split("scriptlet")[0]
    preun = scripts.split("preuninstall scriptlet")[1].split("scriptlet")[0]
    postun = scripts.split("postuninstall scriptlet")[1]
    assert re.search(r"systemctl .*preset netmedic.service", post)  # enable by presets
    assert "systemctl start netmedic.service" in post and "restart libvirtd" in post
    assert "$1 -eq 1" in post  # first install only
    assert re.search(r"\$1 -eq 0 .*disable --now netmedic.service", preun)  # stop on erase only
    assert re.search(r"\$1 -ge 1 .*try-restart netmedic.service", postun)  # restart on upgrade
    assert "/var/lib/netmedic" not in scripts and "/etc/netmedic" not in scripts  # kept on erase
    if os.path.exists(os.path.join(OUT, "rpmlint.txt")):
        with open(os.path.join(OUT, "rpmlint.txt")) as fh:
            tags = set(re.findall(r": [EW]: (\S+)", fh.read()))
        with open(os.path.join(ROOT, "docs", "packaging.md")) as fh:
            doc = fh.read()
        assert sorted(t for t in tags if t not in doc) == []


# --- installing the .deb on this machine ------------------------------------------------------

LEFT_AFTER_REMOVE = {"/etc/netmedic", "/etc/netmedic/policy.yaml", "/etc/logrotate.d/netmedic",
                     "/var/log/netmedic", "/var/lib/netmedic"}
RUNTIME_PATHS = ["/etc/netmedic", "/var/log/netmedic", "/var/lib/netmedic", "/run/netmedic", "/usr/libexec/netmedic",
                 "/usr/lib/python3/dist-packages/netmedic", "/usr/share/doc/netmedic", "/lib/systemd/system/netmedic.service"]
SYSTEMD_STATE_GLOBS = ["/etc/systemd/system/netmedic.service", "/etc/systemd/system/*/netmedic.service",
                       "/var/lib/systemd/deb-systemd-helper-*/netmedic.service*",
                       "/var/lib/systemd/deb-systemd-helper-*/*/netmedic.service"]


def netmedic_paths(package_files=()):
    """What exists of netmedic's own paths: the package's files (dpkg -L, not the directories it shares
    with others), its runtime directories and the systemd enable state. Other files whose names contain
    "netmedic" (another test's hook copies, say) are not ours and not looked at."""
    found = {p for p in list(package_files) + list(LAYOUT) + RUNTIME_PATHS if os.path.lexists(p)}
    for pattern in SYSTEMD_STATE_GLOBS:
        found.update(glob.glob(pattern))
    for top in ("/var/log/netmedic", "/var/lib/netmedic", "/etc/netmedic"):
        for dirpath, dirnames, filenames in os.walk(top):
            found.update(os.path.join(dirpath, n) for n in dirnames + filenames)
    return found


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return None


def installed_packages():
    return set(run(["dpkg-query", "-W", "-f", "${Package} ${Status}\n"]).stdout.replace(
        " install ok installed", "").split("\n"))


@pytest.fixture
def libvirt_turn():
    """The libvirt tests' lock (tests/integration/test_libvirt.py: an flock on /etc/libvirt/hooks), held while the
    package is installed: its hook and a libvirtd of ours never meet another run's libvirt tests."""
    fd = _serialize() if os.path.isdir("/etc/libvirt/hooks") else None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


@pytest.fixture
def installed_deb(packages, libvirt_turn):
    st = run(["dpkg-query", "-W", "-f", "${Status}", "netmedic"], check=False)
    if st.returncode == 0 and "not-installed" not in st.stdout:
        pytest.skip(f"netmedic is already known to dpkg here ({st.stdout.strip()}): not touching it")
    present = netmedic_paths() | {p for p in LAYOUT if os.path.lexists(p)}
    if present:
        pytest.skip(f"netmedic files already on this machine, not ours to touch: {sorted(present)}")
    libvirtds = [pid for pid in os.listdir("/proc") if pid.isdigit() and _comm(pid) == "libvirtd"]
    if libvirtds:
        pytest.skip(f"a libvirtd runs here (pid {', '.join(libvirtds)}): it would call the installed hook "
                    "on VMs that are not this test's")
    before = installed_packages()
    try:
        proc = run(["apt-get", "install", "-y", "-q", "--no-install-recommends", packages["deb"]],
                   env=APT_ENV, timeout=300)
        files = [f for f in run(["dpkg", "-L", "netmedic"]).stdout.splitlines()
                 if f and not os.path.isdir(f) or f in RUNTIME_PATHS]
        yield {"install_output": proc.stdout, "pulled": installed_packages() - before - {"netmedic"},
               "files": files}
    finally:
        run(["apt-get", "purge", "-y", "-q", "netmedic"], env=APT_ENV, check=False, timeout=300)
        if run(["dpkg-query", "-W", "-f", "${Status}", "netmedic"], check=False).returncode == 0:
            run(["dpkg", "--purge", "netmedic"], check=False)
        pulled = sorted(installed_packages() - before)
        if pulled:  # only what this install brought in (normally nothing: packaging-deps has them)
            run(["apt-get", "purge", "-y", "-q", *pulled], env=APT_ENV, check=False, timeout=300)


class Netns:
    """A network namespace of the test's own with a bridge and a tap."""

    def __init__(self):
        self.name = f"nmpkg{os.getpid()}"
        self.procs = []
        run(["ip", "netns", "add", self.name])

    def ip(self, *argv, check=True):
        return run(["ip", "-n", self.name, *argv], check=check)

    def exec(self, *argv, **kw):
        return run(["ip", "netns", "exec", self.name, *argv], **kw)

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        run(["ip", "netns", "delete", self.name], check=False)


def _domain_xml(name, mac, bridge, tap):
    return (f"<domain type='qemu'><name>{name}</name><uuid>6c7a1f3e-0000-4000-8000-0000000000aa</uuid>"
            f"<devices><interface type='bridge'><mac address='{mac}'/><source bridge='{bridge}'/>"
            f"<target dev='{tap}'/><model type='virtio'/></interface></devices></domain>")


def _pin(ns, bridge, mac):
    entries = json.loads(ns.exec("bridge", "-j", "fdb", "show", "br", bridge).stdout or "[]")
    for e in entries:
        if e.get("mac", "").lower() == mac and "self" not in (e.get("flags") or []):
            return e
    return None


def _audit_events():
    try:
        with open("/var/log/netmedic/audit.jsonl") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        return []


def test_deb_install_run_remove_purge(installed_deb):
    # --- installed, with Debian's python3 and distro packages -----------------------------------
    assert installed_deb["pulled"] == set(), f"apt pulled in {installed_deb['pulled']}"
    assert "restart libvirtd" in installed_deb["install_output"] or "hooks/scripts/qemu" not in str(LAYOUT)
    for path, (kind, mode, link) in LAYOUT.items():
        if path.startswith("/usr/share/man/"):
            path += ".gz"  # dh_installman compresses
        st = os.lstat(path)
        assert st.st_uid == 0 and st.st_gid == 0, path
        if kind == "symlink":
            assert os.readlink(path) == link
            st = os.stat(path)
        if mode is not None:
            assert st.st_mode & 0o7777 == mode, (path, oct(st.st_mode))
        assert not st.st_mode & 0o022, f"{path} is group/other writable"
    assert os.path.exists("/lib/systemd/system/netmedic.service")
    where = run(["/usr/bin/python3", "-c", "import netmedic, pyroute2, structlog; print(netmedic.__file__,"
                 " pyroute2.__file__)"], cwd="/").stdout
    assert where.startswith("/usr/lib/python3/dist-packages/netmedic/"), where
    assert "/usr/lib/python3/dist-packages/pyroute2" in where  # the distro's, not a venv's
    with open("/usr/bin/netmedic") as fh:
        assert fh.readline().strip() == "#!/usr/bin/python3"

    version = run(["/usr/bin/netmedic", "--version"], cwd="/").stdout.strip()
    from netmedic import __version__
    assert version == f"netmedic {__version__}"
    proc = run(["/usr/bin/netmedic", "policy", "check", "/etc/netmedic/policy.yaml"], cwd="/")
    assert "/etc/netmedic/policy.yaml: OK" in proc.stdout
    man = run(["man", "-l", "/usr/share/man/man8/netmedic.8.gz"], check=False, env=dict(CLEAN_ENV, MANWIDTH="80"))
    if man.returncode == 0:
        assert "netmedic daemon" in man.stdout
    comp = run(["bash", "-c", "source /usr/share/bash-completion/completions/netmedic; COMP_WORDS=(netmedic po);"
                " COMP_CWORD=1; _netmedic; echo ${COMPREPLY[*]}"]).stdout.strip()
    assert comp == "policy"

    # hooks, dispatcher and udev programs: executables with an absolute python3, valid Python
    for path, (kind, _m, _l) in LAYOUT.items():
        if kind == "exe" and path != "/usr/bin/netmedic":
            real = os.path.realpath(path)
            with open(real) as fh:
                assert fh.readline().startswith("#!/usr/bin/python3"), real
            run(["/usr/bin/python3", "-c", "import sys; compile(open(sys.argv[1], 'rb').read(), sys.argv[1], "
                 "'exec', dont_inherit=True)", real])  # what py_compile checks, writing no byte-code
            assert os.access(path, os.X_OK)
    with open("/usr/lib/udev/rules.d/90-netmedic.rules") as fh:
        rule = fh.read()
    assert f'RUN+="{UDEV_PROGRAM}"' in rule
    run([UDEV_PROGRAM], env=dict(CLEAN_ENV, ACTION="add", INTERFACE="nmpkgx0"),
        timeout=5)  # no daemon listening: returns at once, exit 0

    ns = Netns()
    try:
        # --- the service, by hand: the unit's ExecStart in a namespace of the test's own -------
        with open("/lib/systemd/system/netmedic.service") as fh:
            unit = fh.read()
        [execstart] = re.findall(r"^ExecStart=(.+)$", unit, re.M)
        assert execstart == "/usr/bin/netmedic daemon"
        assert re.search(r"^ExecReload=/bin/kill -HUP \$MAINPID$", unit, re.M)
        daemon = subprocess.Popen(["ip", "netns", "exec", ns.name, *shlex.split(execstart)], cwd="/",
                                  env=CLEAN_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        ns.procs.append(daemon)
        deadline = time.monotonic() + 20
        while not any(e["event"] == "daemon_started" and e.get("pid") for e in _audit_events()):
            assert daemon.poll() is None, daemon.stdout.read().decode()
            assert time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.1)
        dpid = next(e["pid"] for e in _audit_events() if e["event"] == "daemon_started")
        os.kill(dpid, signal.SIGHUP)  # ExecReload
        time.sleep(0.5)
        assert daemon.poll() is None, "SIGHUP (reload) stopped the daemon"
        os.kill(dpid, signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0, daemon.stdout.read().decode()
        assert any(e["event"] == "daemon_stopped" for e in _audit_events())

        # --- the installed libvirt qemu hook pins a VM MAC on its tap ---------------------------
        hook = "/etc/libvirt/hooks/qemu.d/netmedic"
        if os.path.exists(hook):
            mac, bridge, tap = "52:54:00:5a:c0:01", "brpkg0", "nmpkt0"
            ns.ip("link", "add", bridge, "type", "bridge")
            ns.ip("tuntap", "add", "dev", tap, "mode", "tap")
            ns.ip("link", "set", tap, "address", "fe:54:00:5a:c0:01")
            ns.ip("link", "set", tap, "master", bridge)
            ns.ip("link", "set", bridge, "up")
            ns.ip("link", "set", tap, "up")
            xml = _domain_xml("nmpkg-vm", mac, bridge, tap)
            libvirt_env = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
            for op, sub in (("prepare", "begin"), ("start", "begin"), ("started", "begin")):
                proc = ns.exec(hook, "nmpkg-vm", op, sub, "-", input=xml, env=libvirt_env, check=False,
                               cwd="/", timeout=30)
                assert proc.returncode == 0, (op, proc.stderr)
            entry = _pin(ns, bridge, mac)
            assert entry and entry.get("ifname") == tap and "sticky" in (entry.get("flags") or []) \
                and entry.get("state") == "static", entry
            proc = ns.exec(hook, "nmpkg-vm", "stopped", "end", "-", input=xml, env=libvirt_env, check=False,
                           cwd="/", timeout=30)
            assert proc.returncode == 0, proc.stderr
            assert _pin(ns, bridge, mac) is None
    finally:
        ns.close()

    # --- remove: only the admin's configuration, the audit log and the state stay ---------------
    proc = run(["apt-get", "remove", "-y", "-q", "netmedic"], env=APT_ENV, timeout=300)
    left = netmedic_paths(installed_deb["files"])
    unexpected = {p for p in left if p not in LEFT_AFTER_REMOVE
                  and not p.startswith(("/var/log/netmedic/", "/var/lib/netmedic/"))
                  # deb-systemd-helper keeps the admin's enable/disable choice until purge
                  and not p.startswith(("/etc/systemd/system/", "/var/lib/systemd/deb-systemd-helper"))}
    assert unexpected == set(), sorted(unexpected)
    assert os.path.exists("/etc/netmedic/policy.yaml")
    assert os.path.exists("/var/log/netmedic/audit.jsonl")
    assert not os.path.exists("/usr/bin/netmedic") and not os.path.exists("/usr/lib/python3/dist-packages/netmedic")
    assert not os.path.lexists("/etc/libvirt/hooks/qemu.d/netmedic")

    # --- purge: nothing ---------------------------------------------------------------------------
    run(["apt-get", "purge", "-y", "-q", "netmedic"], env=APT_ENV, timeout=300)
    assert netmedic_paths(installed_deb["files"]) == set()
    assert run(["dpkg-query", "-W", "netmedic"], check=False).returncode != 0 or \
        "not-installed" in run(["dpkg-query", "-W", "-f", "${Status}", "netmedic"], check=False).stdout


def test_deb_hook_pins_on_virsh_start(installed_deb, tmp_path):
    """The packaged hook (/usr/bin/python3, the distro's pyroute2, default paths) is in place before
    a libvirtd of the test's own starts (tests/integration/test_libvirt.py's harness: its own network namespace and
    bridge, libvirt's real /run/libvirt): `virsh start` of a diskless qemu VM returns with the VM MAC
    pinned static sticky on its tap, `virsh destroy` releases it. Then the package is purged."""
    why = _why_not()
    if why:
        pytest.skip(why)
    hook = "/etc/libvirt/hooks/qemu.d/netmedic"
    assert os.path.realpath(hook) == "/usr/libexec/netmedic/libvirt-qemu-hook"
    others = [p for p in _foreign_hooks() if p not in LAYOUT]
    others += [p for p in ("/etc/libvirt/hooks/qemu", "/etc/libvirt/hooks/network") if os.path.exists(p)]
    if others:  # libvirtd would run them too
        pytest.skip(f"other libvirt hooks are installed: {', '.join(others)}")
    name, mac, tap = f"nmpkg{os.getpid() % 100000}", "52:54:00:5a:c0:02", f"nmpkt{os.getpid() % 100000}"
    persistent = f"/etc/libvirt/qemu/{name}.xml"
    assert not os.path.exists(persistent)
    lv = Libvirt(tmp_path)
    try:
        lv.start_libvirtd()  # after the install: libvirtd reads hooks at start only
        (tmp_path / f"{name}.xml").write_text(domain_xml(name, [(mac, tap)]))
        lv.virsh("define", str(tmp_path / f"{name}.xml"))
        lv.domains.add(name)
        lv.virsh("start", name)
        entry = lv.pin(mac)  # read right after `virsh start` returned: no waiting
        assert is_sticky_pin(entry, tap), entry
        phases = [e.get("phase") for e in _audit_events() if e["event"] == "hook" and e.get("domain") == name]
        assert phases[:3] == ["prepare begin", "start begin", "started begin"], phases
        lv.virsh("destroy", name)
        assert lv.pin(mac) is None
        assert "stopped end" in [e.get("phase") for e in _audit_events() if e.get("domain") == name]
    finally:
        try:
            if "libvirtd" in lv.procs:
                lv.virsh("destroy", name, check=False)
                lv.virsh("undefine", name, check=False)
        finally:
            lv.close()
            if os.path.exists(persistent):  # libvirtd died before the undefine: the file is the test's
                os.unlink(persistent)

    run(["apt-get", "purge", "-y", "-q", "netmedic"], env=APT_ENV, timeout=300)
    assert netmedic_paths(installed_deb["files"]) == set()
