"""The parts of the benchmark that run INSIDE the benchmark host's network namespace
(`ip netns exec NS python -m bench.worker FIGURE JSON`): the measured command and its baseline are
then started the same way (no `ip netns exec` on either side). Prints one JSON object on stdout.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _timed(argv, env=None, stdin=None) -> tuple:
    """(wall seconds, CompletedProcess): the child's stdout is read in full, as a consumer would."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, env=env, input=stdin, timeout=600)
    return time.perf_counter() - t0, proc


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


# --- figure 1: full reconcile ------------------------------------------------------------------------
def reconcile(cfg: dict) -> dict:
    from netmedic.audit import Audit
    from netmedic.settings import build_engine, load_policy

    bridges = cfg["bridges"]
    entries = 0
    for br in bridges:
        out = subprocess.run(["bridge", "-j", "fdb", "show", "br", br], capture_output=True, check=True).stdout
        entries += len(json.loads(out or b"[]"))
    policy = load_policy(cfg["policy"])
    audit = Audit(cfg["audit_log"], trigger="bench")
    engine = build_engine(policy, cfg["state_dir"], audit, cfg["domain_dir"], cfg["network_dir"])
    cmd = [sys.executable, "-m", "netmedic", "heal", "--domain-xml-dir", cfg["domain_dir"],
           "--network-xml-dir", cfg["network_dir"], "--policy", cfg["policy"], "--audit-log",
           cfg["audit_log"], "--state-dir", cfg["state_dir"]]
    rows = {"baseline": [], "baseline_cpu": [], "engine": [], "engine_cpu": [], "command": [],
            "command_cpu": []}
    violations, changed, cmd_rc = [], [], []
    report = engine.reconcile(trigger="bench warm-up")  # imports and first-time costs out of the way
    for _ in range(cfg["repeat"]):
        c0, t0 = _children_cpu(), time.perf_counter()
        for br in bridges:
            proc = subprocess.run(["bridge", "-j", "fdb", "show", "br", br], capture_output=True)
            assert proc.returncode == 0, proc.stderr
        rows["baseline"].append(time.perf_counter() - t0)
        rows["baseline_cpu"].append(_children_cpu() - c0)
        p0, t0 = time.process_time(), time.perf_counter()
        report = engine.reconcile(trigger="bench")
        rows["engine"].append(time.perf_counter() - t0)
        rows["engine_cpu"].append(time.process_time() - p0)
        violations.append(len(report.violations))
        changed.append(report.changed)
        c0 = _children_cpu()
        wall, proc = _timed(cmd, env=_env())
        rows["command"].append(wall)
        rows["command_cpu"].append(_children_cpu() - c0)
        cmd_rc.append(proc.returncode)
    engine.ops.close()
    audit.close()
    return {"fdb_entries": entries, "vm_nics": len(engine.inventory.nics), "links": len(
        os.listdir("/sys/class/net")), "violations": violations, "changed": changed, "command_rc": cmd_rc,
        "errors": report.errors, **rows}


# --- figure 2: Listener + Dispatcher throughput --------------------------------------------------------
def _lines_file(cfg: dict, path: str, inject_every: int) -> tuple:
    """fdb replace lines moving LAN MACs between the uplink and the LAN port of each bridge; every
    `inject_every`-th line moves a VM MAC (a distinct one each time) to its bridge's uplink instead: a
    violation. Returns (path, [(vm mac, line number)])."""
    lines, injected = [], []
    vms = list(cfg["vms"])
    bridges = cfg["bridges"]
    lan = cfg["lan_macs"]
    per = min(len(lan[b]) for b in bridges)
    total = 2 * per * len(bridges)
    for k in range(total):
        if inject_every and k % inject_every == inject_every - 1 and vms:
            mac, br, _tap = vms.pop(0)
            injected.append((mac, k))
            lines.append(f"fdb replace {mac} dev {cfg['uplinks'][br]} master dynamic\n")  # as if learned
            continue
        b = bridges[k % len(bridges)]
        idx = (k // len(bridges)) % per
        port = cfg["lans"][b] if (k // (len(bridges) * per)) % 2 == 0 else cfg["uplinks"][b]
        lines.append(f"fdb replace {lan[b][idx]} dev {port} master static\n")
    with open(path, "w") as fh:
        fh.write("".join(lines))
    return path, injected


def consume(cfg: dict) -> dict:
    from netmedic import nl
    from netmedic.dispatcher import Dispatcher
    from netmedic.inventory import VmNic

    nics = [VmNic(domain=f"d{i}", uuid="", mac=mac, type="bridge", bridge=br, tap=tap)
            for i, (mac, br, tap) in enumerate(cfg["all_vms"])]
    results = []
    for rate in cfg["rates"]:
        duration = cfg["duration_for"].get(str(rate), cfg["duration"])
        path, injected = _lines_file(cfg, os.path.join(cfg["workdir"], f"storm-{rate}.lines"),
                                     cfg["inject_every"])
        dispatcher = Dispatcher()
        dispatcher.set_inventory(nics)
        seen_macs: set = set()
        submit = dispatcher.submit

        def counting_submit(bridges, reason, domains=None, _submit=submit, _seen=seen_macs):
            if reason.startswith("fdb "):
                _seen.add(reason.rsplit(" ", 1)[-1])
            _submit(bridges, reason, domains=domains)

        dispatcher.submit = counting_submit
        listener = nl.Listener(rcvbuf=cfg["rcvbuf"])
        consumed = overflows = 0
        first = last = None
        cpu0 = time.process_time()
        pacer = subprocess.Popen([sys.executable, "-m", "bench.pace", path, str(rate), str(duration)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
        batch = subprocess.Popen(["bridge", "-force", "-batch", "-"], stdin=pacer.stdout,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pacer.stdout.close()
        quiet_since = None
        while True:
            r, _, _ = select.select([listener], [], [], 0.1)
            if r:
                try:
                    events = listener.read()
                except nl.Overflow:
                    overflows += 1
                    continue
                now = time.monotonic()
                n = 0
                for ev in events:
                    if ev.kind == "fdb":
                        n += 1
                    dispatcher.netlink(ev)
                if n:
                    first = first or now
                    last = now
                    consumed += n
                quiet_since = None
                if dispatcher.due():
                    dispatcher.take()
            elif batch.poll() is not None:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 0.5:
                    break
        cpu = time.process_time() - cpu0
        listener.close()
        pacer.wait(30)
        gen = json.loads(pacer.stderr.read().decode().strip().splitlines()[-1])
        inj_macs = [m for m, line in injected if line < gen["lines"]]  # the lines the pacer got to
        results.append({"rate": rate, "generated": gen["lines"], "gen_seconds": gen["seconds"],
                        "gen_rate": gen["lines"] / gen["seconds"], "consumed": consumed,
                        "consume_seconds": (last - first) if first and last else None,
                        "overflows": overflows, "consumer_cpu": cpu,
                        "injected": len(inj_macs), "detected": sum(1 for m in inj_macs if m in seen_macs)})
        # put the moved VM MACs back (pinned on their taps) for the next rate
        restore = "".join(f"fdb replace {mac} dev {tap} master static sticky\n" for mac, _br, tap in cfg["all_vms"]
                          if mac in {m for m, _ in injected})
        if restore:
            subprocess.run(["bridge", "-force", "-batch", "-"], input=restore.encode(), capture_output=True)
    return {"rates": results}


# --- figure 3: time to protect / time to heal, with the daemon running ----------------------------------
class _Watch:
    """Link and fdb events with their arrival time (monotonic), from a plain Listener."""

    def __init__(self):
        from netmedic import nl

        self.nl = nl
        self.listener = nl.Listener(rcvbuf=64 * 1024 * 1024)
        self.backlog: list = []  # (event, arrival time) read but not yet looked at

    def wait(self, pred, timeout: float):
        """The arrival time of the first event for which pred(ev) is true, or None after timeout. Events
        read together with it are kept for the next wait() (two pins can come in one read)."""
        end = time.monotonic() + timeout
        while True:
            while self.backlog:
                ev, at = self.backlog.pop(0)
                if pred(ev):
                    return at
            left = end - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.listener], [], [], left)
            if not r:
                continue
            try:
                events = self.listener.read()
            except self.nl.Overflow:
                continue
            now = time.monotonic()
            self.backlog.extend((ev, now) for ev in events)

    def close(self):
        self.listener.close()


def _ifindex(name: str) -> int:
    with open(f"/sys/class/net/{name}/ifindex") as fh:
        return int(fh.read())


def _ip_batch(lines) -> None:
    subprocess.run(["ip", "-batch", "-"], input="".join(f"{x}\n" for x in lines).encode(), check=True,
                   capture_output=True)


def _start_vms(cfg: dict, prefix: str, watch, until) -> dict:
    """cfg["repeat"] new VMs on cfg["bridge"] (domain XML written, then the tap made and enslaved), each
    timed from its tap's link event (enslaved) to `until(mac)`, the arrival time of what protects it."""
    from netmedic.lab import tap_mac_for, write_domain_xml

    br = cfg["bridge"]
    samples, missed = [], []
    for i in range(cfg["repeat"]):
        tap, mac = f"{prefix}t{i}", cfg["macs"][i]
        write_domain_xml(cfg["domain_dir"], f"{prefix}vm{i}", [{"mac": mac, "bridge": br, "tap": tap}])
        _ip_batch([f"link add name {tap} address {tap_mac_for(mac)} type veth peer name {tap}p",
                   f"link set {tap}p up", f"link set {tap} master {br}", f"link set {tap} up"])
        br_index = _ifindex(br)
        t_tap = watch.wait(lambda ev, t=tap, b=br_index: ev.kind == "link" and ev.name == t
                           and ev.master == b, 10)
        t_end = until(mac)
        if t_tap is None or t_end is None:
            missed.append(tap)
        else:
            samples.append(t_end - t_tap)
        time.sleep(cfg.get("gap", 0.2))
    return {"samples": samples, "missed": missed}


def protect(cfg: dict) -> dict:
    """Time to protect: from the tap's link event to the pin's fdb event."""
    watch = _Watch()
    try:
        return _start_vms(cfg, "p", watch, lambda mac: watch.wait(
            lambda ev: ev.kind == "fdb" and ev.action == "new" and ev.mac == mac, 30))
    finally:
        watch.close()


class _NftWatch:
    """nf_tables events (NFNLGRP_NFTABLES on a NETLINK_NETFILTER socket) with their arrival time: the
    benchmark's own listener, reading only the message type and looking for the MAC's bytes in a new
    set element (netmedic's guard commits the MAC's two set elements in one transaction)."""

    NETLINK_NETFILTER, NFNLGRP_NFTABLES = 12, 7
    NEWSETELEM = (10 << 8) | 12  # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM

    def __init__(self):
        import socket

        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, self.NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024 * 1024)
        self.sock.bind((0, 1 << (self.NFNLGRP_NFTABLES - 1)))
        self.backlog: list = []  # (message bytes, arrival time)

    def wait_element(self, mac: str, timeout: float):
        """The arrival time of the first new set element holding `mac`, or None after timeout."""
        import struct

        want = bytes.fromhex(mac.replace(":", ""))
        end = time.monotonic() + timeout
        while True:
            while self.backlog:
                msg, at = self.backlog.pop(0)
                if msg[4:6] == struct.pack("=H", self.NEWSETELEM) and want in msg:
                    return at
            left = end - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                continue
            data = self.sock.recv(1 << 20)
            now = time.monotonic()
            off = 0
            while off + 16 <= len(data):
                length = struct.unpack_from("=I", data, off)[0]
                if length < 16:
                    break
                self.backlog.append((data[off:off + length], now))
                off += (length + 3) & ~3

    def close(self):
        self.sock.close()


def protect_guard(cfg: dict) -> dict:
    """Time to protect with the reflection guard: from the tap's link event (enslaved) to the nf_tables
    event of the new set element holding the VM's MAC (the guard's transaction committed)."""
    watch, nft = _Watch(), _NftWatch()
    try:
        return _start_vms(cfg, "g", watch, lambda mac: nft.wait_element(mac, 30))
    finally:
        watch.close()
        nft.close()


def heal(cfg: dict) -> dict:
    """Delete and re-create the bridge: every tap of it is detached; time from the new bridge's link
    event to each tap's re-pin (the pin is the last step: re-enslave, then pin)."""
    br = cfg["bridge"]
    taps = cfg["taps"]  # [(tap, mac)]
    watch = _Watch()
    samples, missed, all_healed = [], [], []
    try:
        for _ in range(cfg["repeat"]):
            _ip_batch([f"link del {br}"])
            time.sleep(cfg.get("gap", 0.3))
            _ip_batch([f"link add name {br} type bridge stp_state 0 forward_delay 0", f"link set {br} up"])
            t_br = watch.wait(lambda ev: ev.kind == "link" and ev.name == br and ev.action == "new", 10)
            pending = {mac for _t, mac in taps}
            t_last = None
            while pending:
                hit: list = []
                t = watch.wait(lambda ev, p=pending, h=hit: ev.kind == "fdb" and ev.action == "new"
                               and ev.mac in p and not h.append(ev.mac), 30)
                if t is None:
                    break
                pending.discard(hit[0])
                samples.append(t - t_br)
                t_last = t
            missed.extend(sorted(pending))
            if t_last is not None and not pending:
                all_healed.append(t_last - t_br)
            time.sleep(cfg.get("gap", 0.3))
    finally:
        watch.close()
    return {"samples": samples, "missed": missed, "all_healed": all_healed}


# --- figure 6: the libvirt qemu hook, per operation ------------------------------------------------------
def hook(cfg: dict) -> dict:
    py = cfg["python"]
    with open(cfg["domain_xml"], "rb") as fh:
        xml = fh.read()
    ops = [("prepare", "begin"), ("start", "begin"), ("started", "begin"), ("stopped", "end"),
           ("release", "end")]
    rows = {"baseline": []}
    rcs: dict = {}
    for op, _sub in ops:
        rows[op] = []
    _timed([py, "-c", "pass"])  # page cache warm
    for _ in range(cfg["repeat"]):
        rows["baseline"].append(_timed([py, "-c", "pass"])[0])
        for op, sub in ops:
            wall, proc = _timed([cfg["script"], cfg["domain"], op, sub, "-"], env=cfg["env"], stdin=xml)
            rows[op].append(wall)
            rcs.setdefault(op, []).append(proc.returncode)
            if proc.returncode != 0:
                rows.setdefault("stderr", proc.stderr.decode(errors="replace")[-500:])
    return {**rows, "rc": rcs}


# --- figure 8: the cost of a Prometheus scrape of the daemon --------------------------------------------
def scrape(cfg: dict) -> dict:
    """GET /metrics on a new connection each time (as Prometheus does after an idle interval), body read in
    full; the daemon's CPU per scrape from /proc."""
    import urllib.request

    def cpu():
        with open(f"/proc/{cfg['pid']}/stat") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    body = b""
    for _ in range(3):  # warm: the first scrape after startup builds the registry
        with urllib.request.urlopen(cfg["url"], timeout=10) as r:
            body = r.read()
    seconds = []
    cpu0 = cpu()
    for _ in range(cfg["repeat"]):
        t0 = time.perf_counter()
        with urllib.request.urlopen(cfg["url"], timeout=10) as r:
            body = r.read()
        seconds.append(time.perf_counter() - t0)
        time.sleep(cfg.get("gap", 0.05))
    lines = body.decode().splitlines()
    return {"seconds": seconds, "bytes": len(body), "daemon_cpu_per_scrape_s": (cpu() - cpu0) / cfg["repeat"],
            "samples": sum(1 for x in lines if x and not x.startswith("#")),
            "vm_nic_info": sum(1 for x in lines if x.startswith("netmedic_vm_nic_info{"))}


FIGURES = {"reconcile": reconcile, "consume": consume, "protect": protect, "protect_guard": protect_guard,
           "heal": heal, "hook": hook, "scrape": scrape}


def main(argv) -> int:
    fig, cfg_path = argv[1], argv[2]
    with open(cfg_path) as fh:
        cfg = json.load(fh)
    out = FIGURES[fig](cfg)
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
