"""Moved to the netmedic.lab package (its public API: netmedic.lab.__all__).

This alias stays only until the branches written against netmedic.labnet are merged; import
netmedic.lab in new code.
"""
from netmedic.lab import *  # noqa: F403
from netmedic.lab import __all__  # noqa: F401
from netmedic.lab.prober import PROBER as _PROBER  # noqa: F401
from netmedic.lab.validate import tool as _tool  # noqa: F401
