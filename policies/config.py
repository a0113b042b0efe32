"""The policy file: which invariants run, observe or enforce, where, with which remedy and limits.

Validated at load: every error is one line naming the file, the line and the field
(`/etc/netmedic/policy.yaml:12: field 'invariants.fdb_ownership.mode': must be one of observe, enforce`).
The daemon keeps its last good policy when a reload fails.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
import re
from typing import Any, Optional

import yaml

from netmedic.errors import PolicyError

MODES = ("observe", "enforce")
DEFAULT_POLICY_PATH = "/etc/netmedic/policy.yaml"
SHIPPED_DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.yaml")


@dataclasses.dataclass(frozen=True)
class Option:
    """One option an invariant (or its healer) accepts: type or choices, default, help."""

    default: Any
    help: str
    choices: Optional[tuple] = None
    type: Optional[type] = None

    def validate(self, value, where):
        if self.choices is not None:
            value = _onoff(value, self.choices)
            if value not in self.choices:
                raise where(f"must be one of {', '.join(map(str, self.choices))} (got {value!r})")
        elif self.type is not None:
            ok = isinstance(value, self.type) and not (self.type is int and isinstance(value, bool))
            if self.type is float and isinstance(value, int) and not isinstance(value, bool):
                ok, value = True, float(value)
            if not ok:
                raise where(f"must be a {self.type.__name__} (got {value!r})")
        return value


def _onoff(value, choices):
    """YAML 1.1 reads an unquoted on/off (yes/no) as a boolean: where 'on'/'off' are the words the
    option takes, take the boolean for the word."""
    if isinstance(value, bool):
        word = "on" if value else "off"
        if word in choices:
            return word
    return value


@dataclasses.dataclass(frozen=True)
class Limits:
    rate_actions: int = 20  # heal actions per subject ...
    rate_window: float = 60.0  # ... per this many seconds
    global_actions: int = 120  # heal actions on the whole host per global_window
    global_window: float = 60.0
    max_attempts: int = 5  # failed attempts on a subject before giving up until it changes
    backoff_initial: float = 2.0  # seconds after the first failed attempt, doubling
    backoff_max: float = 300.0
    breaker_trips: int = 4  # fixes undone within breaker_hold, this many within breaker_window => a fight
    breaker_window: float = 600.0
    breaker_cooldown: float = 1800.0  # the longest pause (the first is shorter, doubling: bounds.py)
    breaker_hold: float = 1.0  # a fix that held this long before the fault came back was not fought
    verify_retries: int = 5  # re-observations before a heal is declared failed
    verify_interval: float = 0.05


# Counts where 0 would stop every heal with a misleading reason ("tripped after 0 fixes"): at least 1.
LIMIT_MIN_ONE = ("rate_actions", "global_actions", "max_attempts", "breaker_trips")

# The documented range of every numeric policy value (docs/policy.md), inclusive: anything outside is
# refused by `policy check` and at load (a 1e12 verify.retries would wedge a pass, a 1e300 cooldown overflow).
LIMIT_RANGES = {
    "rate_actions": (1, 10000), "rate_window": (1, 86400),
    "global_actions": (1, 100000), "global_window": (1, 86400),
    "max_attempts": (1, 1000), "backoff_initial": (0, 3600), "backoff_max": (0, 86400),
    "breaker_trips": (1, 1000), "breaker_window": (1, 86400), "breaker_cooldown": (1, 604800),
    "breaker_hold": (0, 3600),
    "verify_retries": (0, 100), "verify_interval": (0, 10),
}
RESYNC_MAX = 86400

LIMIT_FIELDS = {
    "rate": {"actions": "rate_actions", "window": "rate_window"},
    "global_rate": {"actions": "global_actions", "window": "global_window"},
    "attempts": {"max": "max_attempts", "backoff_initial": "backoff_initial", "backoff_max": "backoff_max"},
    "breaker": {"trips": "breaker_trips", "window": "breaker_window", "cooldown": "breaker_cooldown",
                "hold": "breaker_hold"},
    "verify": {"retries": "verify_retries", "interval": "verify_interval"},
}


@dataclasses.dataclass(frozen=True)
class Scope:
    bridges: tuple = ("*",)
    exclude_bridges: tuple = ()
    domains: tuple = ("*",)
    exclude_domains: tuple = ()

    def bridge_in(self, name: Optional[str]) -> bool:
        if name is None:
            return True
        return (any(fnmatch.fnmatchcase(name, p) for p in self.bridges)
                and not any(fnmatch.fnmatchcase(name, p) for p in self.exclude_bridges))

    def domain_in(self, name: Optional[str]) -> bool:
        if name is None:
            return True
        return (any(fnmatch.fnmatchcase(name, p) for p in self.domains)
                and not any(fnmatch.fnmatchcase(name, p) for p in self.exclude_domains))


@dataclasses.dataclass(frozen=True)
class InvariantPolicy:
    name: str
    enabled: bool
    mode: str
    bridge_modes: tuple  # ((glob, 'observe'|'enforce'|'off'), ...) first match wins
    options: dict
    limits: Limits

    def mode_for(self, bridge: Optional[str]) -> str:
        """'off', 'observe' or 'enforce' for a subject on this bridge."""
        if not self.enabled:
            return "off"
        if bridge is not None:
            for pattern, mode in self.bridge_modes:
                if fnmatch.fnmatchcase(bridge, pattern):
                    return mode
        return self.mode


@dataclasses.dataclass(frozen=True)
class Policy:
    source: str
    dry_run: bool
    kill_switch_file: str
    scope: Scope
    limits: Limits
    invariants: dict  # name -> InvariantPolicy
    resync_interval: float = 60.0
    metrics_listen: str = ""  # metrics.listen: ADDRESS:PORT of the daemon's /metrics ("" off)
    metrics_textfile: str = ""  # metrics.textfile: node_exporter textfile collector file ("" off)

    def in_scope(self, bridge: Optional[str], domain: Optional[str]) -> bool:
        return self.scope.bridge_in(bridge) and self.scope.domain_in(domain)

    def killed(self) -> bool:
        return bool(self.kill_switch_file) and os.path.exists(self.kill_switch_file)

    def with_mode(self, mode: Optional[str]) -> Policy:
        """The --mode override: every invariant (and every per-bridge setting) in that mode."""
        if mode is None:
            return self
        invs = {n: dataclasses.replace(p, mode=mode, bridge_modes=tuple(
            (g, m if m == "off" else mode) for g, m in p.bridge_modes)) for n, p in self.invariants.items()}
        return dataclasses.replace(self, invariants=invs)


# ---------------------------------------------------------------------------------------------
# YAML with line numbers: compose the node graph and convert it ourselves, remembering each path's line.

class _Doc:
    def __init__(self, source: str):
        self.source = source
        self.lines: dict = {}

    def error(self, path: str, message: str) -> PolicyError:
        line = self.lines.get(path)
        while line is None and "." in path:
            path = path.rsplit(".", 1)[0]
            line = self.lines.get(path)
        return PolicyError(message, source=self.source, line=line, field=path or None)

    def where(self, path):
        return lambda message: self.error(path, message)


_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


def _convert(node, path: str, doc: _Doc, seen: Optional[set] = None):
    if seen is None:
        seen = set()
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        # An alias to a mapping/list can recurse (&a [*a]) or multiply (a "billion laughs"): refused.
        # (The node's own mark is its anchor's: name the line of the key that holds the alias.)
        if id(node) in seen:
            line = doc.lines.get(path) or doc.lines.get(re.sub(r"(\[\d+\])+$", "", path))
            raise PolicyError("YAML aliases (*name) of mappings or lists are not supported",
                              source=doc.source, line=line, field=path or None)
        seen.add(id(node))
        if node.tag not in _COLLECTION_TAGS:  # e.g. !!python/object/apply: never constructed
            raise PolicyError(f"unsupported YAML tag {node.tag}", source=doc.source,
                              line=node.start_mark.line + 1, field=path or None)
    doc.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                raise PolicyError("keys must be plain names", source=doc.source, line=knode.start_mark.line + 1)
            key = knode.value
            sub = f"{path}.{key}" if path else key
            doc.lines[sub] = knode.start_mark.line + 1
            if key in out:
                raise doc.error(sub, "duplicate key")
            out[key] = _convert(vnode, sub, doc, seen)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(v, f"{path}[{i}]", doc, seen) for i, v in enumerate(node.value)]
    try:  # resolve the scalar's tag the safe way (bool, int, float, null, str)
        return yaml.SafeLoader("").construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:  # !!python/..., !!int abc
        problem = getattr(exc, "problem", None) or str(exc)
        problem = " ".join(problem.split())
        raise PolicyError(f"invalid value {node.value!r} (tag {node.tag}): {problem}",
                          source=doc.source, line=node.start_mark.line + 1, field=path or None) from None


def _read_yaml(text: str, source: str, doc: _Doc):
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PolicyError(f"invalid YAML: {problem}", source=source,
                          line=mark.line + 1 if mark else None) from None
    if node is None:
        return {}
    data = _convert(node, "", doc)
    if not isinstance(data, dict):
        raise PolicyError("the policy must be a mapping of keys", source=source, line=1)
    return data


def _limits(raw, base: Limits, path: str, doc: _Doc) -> Limits:
    if raw is None:
        return base
    if not isinstance(raw, dict):
        raise doc.error(path, "must be a mapping")
    changes = {}
    for group, val in raw.items():
        gpath = f"{path}.{group}"
        if group not in LIMIT_FIELDS:
            raise doc.error(gpath, f"unknown limit (known: {', '.join(LIMIT_FIELDS)})")
        if not isinstance(val, dict):
            raise doc.error(gpath, "must be a mapping")
        for key, v in val.items():
            kpath = f"{gpath}.{key}"
            if key not in LIMIT_FIELDS[group]:
                raise doc.error(kpath, f"unknown key (known: {', '.join(LIMIT_FIELDS[group])})")
            attr = LIMIT_FIELDS[group][key]
            integer = isinstance(getattr(base, attr), int)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise doc.error(kpath, f"must be {'an integer' if integer else 'a number'} >= 0 (got {v!r})")
            if integer and not isinstance(v, int):
                raise doc.error(kpath, f"must be an integer >= 0 (got {v!r})")
            if attr in LIMIT_MIN_ONE and v < 1:
                raise doc.error(kpath, f"must be an integer >= 1 (got {v!r}; to stop healing use mode: observe)")
            lo, hi = LIMIT_RANGES[attr]
            if not lo <= v <= hi:
                raise doc.error(kpath, f"must be {'an integer' if integer else 'a number'} from {lo:g} to {hi:g} "
                                f"(got {v!r})")
            changes[attr] = type(getattr(base, attr))(v)
    return dataclasses.replace(base, **changes)


def _globs(raw, path: str, doc: _Doc) -> tuple:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise doc.error(path, "must be a list of names or glob patterns")
    return tuple(raw)


def _bool(raw, path, doc):
    if not isinstance(raw, bool):
        raise doc.error(path, f"must be true or false (got {raw!r})")
    return raw


TOP_KEYS = ("version", "mode", "dry_run", "kill_switch_file", "scope", "limits", "invariants",
            "resync_interval", "metrics")
METRICS_KEYS = ("listen", "textfile")
COMMON_KEYS = ("enabled", "mode", "bridges", "limits")


def parse(text: str, source: str = "<policy>") -> Policy:
    from netmedic.policies import INVARIANTS  # the registry

    doc = _Doc(source)
    data = _read_yaml(text, source, doc)
    for key in data:
        if key not in TOP_KEYS:
            raise doc.error(key, f"unknown key (known: {', '.join(TOP_KEYS)})")
    version = data.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version != 1:
        raise doc.error("version", f"unsupported policy version {version!r} (this netmedic reads 1)")
    mode = data.get("mode", None)
    if mode is not None and mode not in MODES:
        raise doc.error("mode", f"must be one of {', '.join(MODES)} (got {mode!r})")
    dry_run = _bool(data.get("dry_run", False), "dry_run", doc)
    kill = data.get("kill_switch_file", "/etc/netmedic/kill-switch")
    if not isinstance(kill, str):
        raise doc.error("kill_switch_file", "must be a path")
    resync = data.get("resync_interval", 60)
    if isinstance(resync, bool) or not isinstance(resync, (int, float)) or not math.isfinite(resync) \
            or not 0 < resync <= RESYNC_MAX:
        raise doc.error("resync_interval", f"must be a number of seconds > 0 and <= {RESYNC_MAX} (got {resync!r})")
    metrics_listen, metrics_textfile = _metrics(data.get("metrics"), doc)
    raw_scope = data.get("scope", {}) or {}
    if not isinstance(raw_scope, dict):
        raise doc.error("scope", "must be a mapping")
    scope_keys = {f.name for f in dataclasses.fields(Scope)}
    for key in raw_scope:
        if key not in scope_keys:
            raise doc.error(f"scope.{key}", f"unknown key (known: {', '.join(sorted(scope_keys))})")
    scope = Scope(**{k: _globs(v, f"scope.{k}", doc) for k, v in raw_scope.items()})
    limits = _limits(data.get("limits"), Limits(), "limits", doc)

    raw_invs = data.get("invariants", {}) or {}
    if not isinstance(raw_invs, dict):
        raise doc.error("invariants", "must be a mapping of invariant names")
    invariants = {}
    for name in raw_invs:
        if name not in INVARIANTS:
            raise doc.error(f"invariants.{name}",
                            f"unknown invariant (known: {', '.join(sorted(INVARIANTS))})")
    for name, inv in INVARIANTS.items():
        raw = raw_invs.get(name, {})
        path = f"invariants.{name}"
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise doc.error(path, "must be a mapping")
        for key in raw:
            if key not in COMMON_KEYS and key not in inv.OPTIONS:
                known = ", ".join(list(COMMON_KEYS) + sorted(inv.OPTIONS))
                raise doc.error(f"{path}.{key}", f"unknown option (known: {known})")
        enabled = _bool(raw.get("enabled", inv.DEFAULT_ENABLED), f"{path}.enabled", doc)
        imode = raw.get("mode", mode or inv.DEFAULT_MODE)
        if imode not in MODES:
            raise doc.error(f"{path}.mode", f"must be one of {', '.join(MODES)} (got {imode!r})")
        bridge_modes = []
        raw_br = raw.get("bridges", {}) or {}
        if not isinstance(raw_br, dict):
            raise doc.error(f"{path}.bridges", "must be a mapping of bridge name/glob to observe|enforce|off")
        for pattern, bmode in raw_br.items():
            bmode = _onoff(bmode, ("off",))
            if bmode not in MODES + ("off",):
                raise doc.error(f"{path}.bridges.{pattern}", f"must be observe, enforce or off (got {bmode!r})")
            bridge_modes.append((str(pattern), bmode))
        options = {}
        for key, opt in inv.OPTIONS.items():
            if key in raw:
                options[key] = opt.validate(raw[key], doc.where(f"{path}.{key}"))
            else:
                options[key] = opt.default
        invariants[name] = InvariantPolicy(
            name=name, enabled=enabled, mode=imode, bridge_modes=tuple(bridge_modes), options=options,
            limits=_limits(raw.get("limits"), limits, f"{path}.limits", doc))
    return Policy(source=source, dry_run=dry_run, kill_switch_file=kill, scope=scope, limits=limits,
                  invariants=invariants, resync_interval=float(resync), metrics_listen=metrics_listen,
                  metrics_textfile=metrics_textfile)


def _metrics(raw, doc: _Doc) -> tuple:
    """The `metrics:` section: (listen, textfile), "" for off (docs/monitoring.md)."""
    from netmedic.metrics import parse_listen

    if raw is None:
        return "", ""
    if not isinstance(raw, dict):
        raise doc.error("metrics", "must be a mapping (listen, textfile)")
    for key in raw:
        if key not in METRICS_KEYS:
            raise doc.error(f"metrics.{key}", f"unknown key (known: {', '.join(METRICS_KEYS)})")
    listen = raw.get("listen") or ""
    textfile = raw.get("textfile") or ""
    if not isinstance(listen, str):
        raise doc.error("metrics.listen", f"must be ADDRESS:PORT or empty (got {listen!r})")
    if listen:
        try:
            parse_listen(listen)
        except ValueError as exc:
            raise doc.error("metrics.listen", str(exc)) from None
    if not isinstance(textfile, str) or (textfile and not (os.path.isabs(textfile) and textfile.endswith(".prom"))):
        raise doc.error("metrics.textfile", f"must be an absolute path ending in .prom, or empty (got {textfile!r})")
    return listen, textfile


def load(path: Optional[str]) -> Policy:
    """Load a policy file. A missing file at the default path means the shipped defaults."""
    if path is None:
        path = DEFAULT_POLICY_PATH if os.path.exists(DEFAULT_POLICY_PATH) else SHIPPED_DEFAULT
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise PolicyError(f"cannot read policy: {exc.strerror}", source=path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"policy is not UTF-8 text (byte 0x{data[exc.start]:02x})", source=path,
                          line=data.count(b"\n", 0, exc.start) + 1) from None
    return parse(text, path)
