"""Each RPM installs where it says (docs/packaging.md): one RPM per target of packaging/rpm/targets/
(today EL9), built here on Debian by packaging/build.sh. Without an EL system, what can be checked is:

- the file name carries the target's dist tag (netmedic-V-1.el9.noarch.rpm), the package is noarch and
  its payload has no compiled code;
- `rpm -qpR`: `python(abi) = <the target's python version>` and no other Python version;
- `rpm -qpl`: the package under the target's site-packages (/usr/lib/python3.9/site-packages), every
  module with byte-code for the target's interpreter (cpython-39 .pyc and .opt-1.pyc) and no other;
- the byte-code is the target interpreter's (its magic number) and valid for the installed sources,
  and every module byte-compiles with a local interpreter of the target's version (pyenv's 3.9);
- `rpm --root SCRATCH --nodeps` installs it into a scratch root of the test's own, running the
  scriptlets there (install, upgrade, erase), and the installed package imports and runs
  (`netmedic --version`) under the target's python version.

The scratch root gets /bin/sh (this machine's dash and its libraries) for the scriptlets, and a fake
/usr/bin/systemctl that records its arguments, because there is no systemd here (PID 1 is not
systemd) and the scriptlets are only guarded calls of systemctl. Nothing outside the scratch root is
touched: `rpm --root` keeps its database there too.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "build", "packages")
CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root"}

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/dpkg"),
                                reason="needs root on a Debian host (packaging-deps installs rpm)")


def _targets():
    """{name: {'dist': '.el9', 'pyver': '3.9', 'sitelib': ...}} from packaging/rpm/targets/*.macros."""
    out = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "packaging", "rpm", "targets", "*.macros"))):
        with open(path) as fh:
            macros = dict(re.findall(r"^%(\w+)\s+(\S+)\s*$", fh.read(), re.M))
        out[os.path.basename(path)[:-len(".macros")]] = {
            "dist": macros["dist"], "pyver": macros["python3_version"], "sitelib": macros["python3_sitelib"]}
    return out


TARGETS = _targets()


def run(argv, check=True, **kw):
    kw.setdefault("env", CLEAN_ENV)
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def local_python(pyver):
    """packaging/build.sh's choice of a local interpreter of the target's version."""
    for c in sorted(glob.glob(f"/root/.pyenv/versions/{pyver}.*/bin/python{pyver}"), reverse=True) + \
            [shutil.which(f"python{pyver}") or ""]:
        if c and run([c, "-c", "pass"], check=False).returncode == 0:
            return c
    raise AssertionError(f"no local python{pyver} (build.sh could not have built this target either)")


@pytest.fixture(scope="module")
def rpms():
    """{target: path of its binary RPM}, built by packaging/build.sh (only when the source changed)."""
    run(["bash", os.path.join(ROOT, "scripts", "packaging-deps.sh"), "rpm"], timeout=600)
    run(["bash", os.path.join(ROOT, "packaging", "build.sh"), "rpm"], timeout=900)
    return {t: os.path.join(OUT, f"netmedic-{_version()}-1{v['dist']}.noarch.rpm") for t, v in TARGETS.items()}


def _version():
    from netmedic import __version__
    return __version__


def test_there_is_an_el9_target():
    assert TARGETS["el9"] == {"dist": ".el9", "pyver": "3.9", "sitelib": "/usr/lib/python3.9/site-packages"}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_file_name_dist_tag_and_noarch(rpms, target):
    rpm = rpms[target]
    assert os.path.exists(rpm), sorted(os.listdir(OUT))
    assert os.path.exists(rpm.replace(".noarch.rpm", ".src.rpm"))
    arch, release = run(["rpm", "-qp", "--qf", "%{ARCH} %{RELEASE}", rpm]).stdout.split()
    assert arch == "noarch" and release == "1" + TARGETS[target]["dist"]
    classes = run(["rpm", "-qp", "--qf", "[%{FILECLASS}\n]", rpm]).stdout
    assert "ELF" not in classes  # no compiled code: nothing tied to x86_64


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_requires_name_the_targets_python(rpms, target):
    requires = run(["rpm", "-qpR", rpms[target]]).stdout.splitlines()
    pyver = TARGETS[target]["pyver"]
    abi = [r.strip() for r in requires if r.startswith("python(abi)")]
    assert abi == [f"python(abi) = {pyver}"], requires
    other = [r for r in requires if re.search(r"python3\.\d+", r) and pyver not in r]
    assert other == [], other
    assert not [r for r in requires if "dist(" in r]  # explicit EL names, no generated python3Xdist()


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_files_are_under_the_targets_site_packages_with_its_bytecode(rpms, target):
    files = run(["rpm", "-qpl", rpms[target]]).stdout.splitlines()
    t = TARGETS[target]
    tag = "cpython-" + t["pyver"].replace(".", "")
    sitelib = t["sitelib"] + "/"
    python_files = [f for f in files if re.search(r"/python3[.\d]*/|\.py[co]?$", f)]
    assert python_files and all(f.startswith(sitelib) for f in python_files), \
        [f for f in python_files if not f.startswith(sitelib)]
    sources = [f for f in files if f.startswith(sitelib + "netmedic/") and f.endswith(".py")]
    assert len(sources) > 40 and sitelib + "netmedic/nl/netlink.py" in sources
    missing = []
    for src in sources:
        d, name = os.path.split(src)
        for suffix in (".pyc", ".opt-1.pyc"):
            if f"{d}/__pycache__/{name[:-3]}.{tag}{suffix}" not in files:
                missing.append(f"{d}/__pycache__/{name[:-3]}.{tag}{suffix}")
    assert missing == []
    foreign = [f for f in files if f.endswith(".pyc") and f".{tag}." not in f]
    assert foreign == []


CHECK_PYC = r"""
import importlib.util, os, py_compile, struct, sys, tempfile
site = sys.argv[1]
bad = []
n = 0
with tempfile.TemporaryDirectory() as tmp:
    for dirpath, dirnames, filenames in os.walk(os.path.join(site, "netmedic")):
        for f in filenames:
            if not f.endswith(".py"):
                continue
            src = os.path.join(dirpath, f)
            n += 1
            # every module byte-compiles with this interpreter
            try:
                py_compile.compile(src, cfile=os.path.join(tmp, "x.pyc"), doraise=True)
            except py_compile.PyCompileError as exc:
                bad.append(f"{src}: {exc.msg}")
            # the shipped byte-code is this interpreter's and valid for the installed source
            for opt in ("", 1):
                pyc = importlib.util.cache_from_source(src, optimization=opt)
                with open(pyc, "rb") as fh:
                    head = fh.read(16)
                if head[:4] != importlib.util.MAGIC_NUMBER:
                    bad.append(f"{pyc}: magic {head[:4]!r}")
                flags, mtime, size = struct.unpack("<III", head[4:16])
                st = os.stat(src)
                if flags != 0 or mtime != int(st.st_mtime) & 0xFFFFFFFF or size != st.st_size & 0xFFFFFFFF:
                    bad.append(f"{pyc}: stale or not timestamp-based (flags {flags})")
print(n)
print("\n".join(bad))
"""


@pytest.fixture(scope="module")
def scratch_roots(rpms, tmp_path_factory):
    """{target: scratch root with the RPM installed by `rpm --root --nodeps`, and rpm's output}."""
    out = {}
    for target, rpm in rpms.items():
        root = str(tmp_path_factory.mktemp(f"rpmroot-{target}"))
        _prepare_root(root)
        run(["rpm", "--root", root, "--initdb"])
        proc = run(["rpm", "--root", root, "-i", "--nodeps", rpm], timeout=120)
        out[target] = {"root": root, "install": proc.stdout + proc.stderr}
    return out


def _prepare_root(root):
    """/bin/sh (dash and its libraries) and /dev/null for the scriptlets, and a fake systemctl that records its
    arguments in /var/tmp/systemctl.log and answers is-enabled with "enabled"."""
    sh = os.path.realpath("/bin/sh")
    # its libraries and the dynamic loader, at the paths ldd names (/lib64/ld-linux-x86-64.so.2 ...)
    libs = re.findall(r"(/\S+\.so[.\d]*)", run(["ldd", sh]).stdout)
    for path in [sh] + libs:
        dest = root + path
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy2(path, dest)
        for alias in ("/bin/sh", "/usr/bin/sh") if path == sh else ():
            os.makedirs(os.path.dirname(root + alias), exist_ok=True)
            if not os.path.lexists(root + alias):
                os.symlink(sh, root + alias)
    os.makedirs(root + "/dev", exist_ok=True)  # the scriptlets send systemctl's output to /dev/null
    os.mknod(root + "/dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(root + "/dev/null", 0o666)
    os.makedirs(root + "/usr/bin", exist_ok=True)
    os.makedirs(root + "/var/tmp", exist_ok=True)
    os.makedirs(root + "/run/systemd/system", exist_ok=True)  # "systemd is running" for the %post test
    with open(root + "/usr/bin/systemctl", "w") as fh:
        fh.write('#!/bin/sh\necho "$*" >> /var/tmp/systemctl.log\n'
                 'case " $* " in *" is-enabled "*) echo enabled ;; esac\nexit 0\n')
    os.chmod(root + "/usr/bin/systemctl", 0o755)


def _systemctl_log(root):
    path = root + "/var/tmp/systemctl.log"
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        lines = fh.read().splitlines()
    os.unlink(path)
    return lines


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_bytecode_is_the_targets_and_every_module_compiles(scratch_roots, target):
    t = TARGETS[target]
    site = scratch_roots[target]["root"] + t["sitelib"]
    proc = run([local_python(t["pyver"]), "-I", "-c", CHECK_PYC, site])
    n, *bad = proc.stdout.split("\n")
    assert int(n) > 40
    assert [b for b in bad if b] == []


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_rpm_root_install_upgrade_erase_runs_the_scriptlets(rpms, scratch_roots, target):
    t = TARGETS[target]
    root, rpm = scratch_roots[target]["root"], rpms[target]
    # --- install: %post presets the unit (first install), starts it, prints the libvirtd note once
    assert "restart libvirtd" in scratch_roots[target]["install"]
    log = _systemctl_log(root)
    assert "--no-reload preset netmedic.service" in log, log
    assert "start netmedic.service" in log, log
    for path in (t["sitelib"] + "/netmedic/__init__.py", "/usr/bin/netmedic", "/etc/netmedic/policy.yaml",
                 "/usr/lib/systemd/system/netmedic.service", "/usr/share/man/man8/netmedic.8.gz"):
        assert os.path.exists(root + path), path
    assert os.stat(root + "/var/lib/netmedic").st_mode & 0o777 == 0o750
    assert os.readlink(root + "/etc/libvirt/hooks/qemu.d/netmedic") == "/usr/libexec/netmedic/libvirt-qemu-hook"
    with open(root + "/usr/bin/netmedic") as fh:
        assert fh.readline().strip() == "#!/usr/bin/python3"  # EL9's python3 is the target's 3.9
    # the installed package imports and runs under the target's python version (no runtime deps needed
    # for --version: the CLI imports the rest lazily)
    py = local_python(t["pyver"])
    site = root + t["sitelib"]
    proc = run([py, "-I", "-c", "import runpy, sys; sys.path.insert(0, sys.argv[1]); script = sys.argv[2]; "
                "sys.argv = ['netmedic', '--version']; runpy.run_path(script, run_name='__main__')",
                site, root + "/usr/bin/netmedic"], check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == f"netmedic {_version()}", proc.stderr

    # --- upgrade (the same package again): %postun of the old one try-restarts, %post presets nothing
    proc = run(["rpm", "--root", root, "-U", "--replacepkgs", "--nodeps", rpm], timeout=120)
    log = _systemctl_log(root)
    assert "try-restart netmedic.service" in log, log
    assert not [c for c in log if "preset" in c], log
    assert "restart libvirtd" not in proc.stdout

    # --- erase: %preun disables and stops; the audit log and state stay when not empty
    with open(root + "/var/lib/netmedic/state.json", "w") as fh:
        fh.write("{}\n")
    run(["rpm", "--root", root, "-e", "netmedic"], timeout=120)
    log = _systemctl_log(root)
    assert "--no-reload disable --now netmedic.service" in log, log
    assert not os.path.exists(root + t["sitelib"] + "/netmedic")
    assert not os.path.exists(root + "/usr/bin/netmedic")
    assert os.path.exists(root + "/var/lib/netmedic/state.json")
    assert run(["rpm", "--root", root, "-q", "netmedic"], check=False).returncode != 0
