"""A third party's invariant and healer, shipped in a package of its own (tests/unit/test_plugins.py,
tests/integration/test_third_party_plugin.py)."""
from __future__ import annotations

import textwrap

TOY = '''
"""A site's own invariant and healer, shipped apart from netmedic: VM ports must not learn."""
from netmedic.model import Plan, Step, Subject, Violation
from netmedic.plugin import Healer, Invariant


class NoLearning(Invariant):
    NAME = "toy_no_learning"
    DESCRIPTION = "VM ports do not learn"
    DEFAULT_ENABLED = False
    DEFAULT_MODE = "observe"
    REMEDIES = {"learning_on": "toy_learning_off"}

    def check(self, snapshot, options):
        out = []
        for nic in snapshot.nics():
            tap = snapshot.link(nic.tap)
            if tap is not None and tap.port is not None and tap.port.learning:
                out.append(Violation(self.NAME, "learning_on", Subject(bridge=nic.bridge, port=nic.tap,
                                     domain=nic.domain), f"{nic.tap} learns", {"learning": True}))
        return out


class LearningOff(Healer):
    NAME = "toy_learning_off"
    HANDLES = ("toy_no_learning",)

    def plan(self, violation, snapshot, options):
        tap = snapshot.link(violation.subject.port)
        ids = {"port": tap.name, "port_index": tap.index}
        return Plan(self.NAME, violation, (Step("set_port", {**ids, "learning": False}, f"learning off on {tap.name}",
                                                undo=Step("set_port", {**ids, "learning": True}, "learning on")),),
                    f"turn learning off on {tap.name}"), ""
'''


def toy_package(tmp_path) -> str:
    """A package of its own, installed the way pip leaves one: the module and a dist-info with its entry
    points (importlib.metadata finds it on sys.path)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "toy_netmedic_plugin.py").write_text(textwrap.dedent(TOY))
    info = site / "toy_netmedic_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-netmedic-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[netmedic.invariants]\ntoy_no_learning = toy_netmedic_plugin:NoLearning\n\n"
                                           "[netmedic.healers]\ntoy_learning_off = toy_netmedic_plugin:LearningOff\n")
    return str(site)
