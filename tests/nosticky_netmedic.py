"""`python tests/nosticky_netmedic.py ARGS...` runs the real `netmedic ARGS...` with one seam: its netlink
reader answers every fdb lookup without the NTF_STICKY flag. A FAKE KERNEL ANSWER: this kernel keeps the
flag; the fake stands in for a kernel before 5.x (the founding report's 4.19), where a pin comes back a
plain `static` entry. Everything else (the pins written, the fdb, nf_tables) is the real kernel's."""
from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netmedic import cli, nl  # noqa: E402
from netmedic.nl import data  # noqa: E402


def _without_sticky(entry):
    return None if entry is None else dataclasses.replace(entry, flags=entry.flags & ~data.NTF_STICKY)


class NoStickyNetlink(nl.Netlink):
    def fdb_get_many(self, queries) -> list:
        return [_without_sticky(e) for e in super().fdb_get_many(queries)]

    def fdb_dump(self, bridge_index: int) -> list:
        return [_without_sticky(e) for e in super().fdb_dump(bridge_index)]


nl.Netlink = NoStickyNetlink

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
