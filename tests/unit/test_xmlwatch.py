"""The daemon's inotify watch on the run-state XML directories, and the inventory's incremental reload
that trusts it: real inotify on directories of the test's own."""
from __future__ import annotations

import os

from snapshots import MAC1, MAC2, domain_xml, interface_xml, write

from netmedic import inventory
from netmedic.sources.xmlwatch import XmlWatch


def test_watch_reports_changed_paths_and_unwatched_directories(tmp_path):
    qemu, net = tmp_path / "qemu", tmp_path / "network"
    qemu.mkdir()
    watch = XmlWatch([str(qemu), str(net)])  # network/ does not exist yet
    try:
        assert watch.status()["directories"] == [str(qemu)]
        assert watch.take_changes() is None  # one directory is not watched: no promise
        net.mkdir()
        assert watch.poll(None, 0.0) is None  # now both are
        assert watch.take_changes() == set()  # (an empty set: nothing changed)
        a = write(qemu, "a.xml", domain_xml("a", [interface_xml(MAC1, "br0", "vnet0")]))
        write(qemu, "b.xml", domain_xml("b", [interface_xml(MAC2, "br0", "vnet1")]))
        assert watch.take_changes() == {a, str(qemu / "b.xml")}
        assert watch.take_changes() == set()
        os.replace(a, str(qemu / "c.xml"))  # what libvirt does: write a temp file, rename it over
        assert watch.take_changes() == {a, str(qemu / "c.xml")}
        net.rmdir()  # a watched directory goes away: no promise until it is back and watched
        assert watch.take_changes() is None
    finally:
        watch.close()


def test_incremental_load_rereads_only_the_changed_files(tmp_path):
    qemu = tmp_path / "qemu"
    a = write(qemu, "a.xml", domain_xml("a", [interface_xml(MAC1, "br0", "vnet0")]))
    b = write(qemu, "b.xml", domain_xml("b", [interface_xml(MAC2, "br0", "vnet1")]))
    first = inventory.load(str(qemu), None)
    assert sorted(first.domains) == ["a", "b"]
    # b changes; the caller says only a did: b is taken from the cache as it was (the watch vouches)
    write(qemu, "b.xml", domain_xml("b", [interface_xml(MAC2, "br1", "vnet1")]))
    trusted = inventory.load(str(qemu), None, changed={a})
    assert trusted.domains["b"].nics[0].bridge == "br0"
    # named as changed: read again; and a full load (changed=None) always reads
    assert inventory.load(str(qemu), None, changed={b}).domains["b"].nics[0].bridge == "br1"
    os.unlink(a)
    assert sorted(inventory.load(str(qemu), None, changed={a}).domains) == ["b"]  # a deleted file is gone
