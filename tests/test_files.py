"""The one atomic write every export, corpus and bundle file goes through."""

from __future__ import annotations

import os
import stat
import threading

from chatbot.files import write_atomically


def test_a_write_replaces_the_file_whole_and_keeps_its_mode(tmp_path):
    private = tmp_path / "export.yaml"
    private.write_text("old")
    private.chmod(0o600)
    write_atomically(private, "new")
    assert private.read_text() == "new" and stat.S_IMODE(private.stat().st_mode) == 0o600  # it came back 0644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.yaml"]  # no temporary file left


def test_a_symbolic_link_is_written_through_not_replaced(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "chat.yml"
    target.write_text("old")
    link = tmp_path / "link.yml"
    link.symlink_to(target)
    write_atomically(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


def test_a_fifo_is_written_to_not_replaced_by_a_file(tmp_path):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    write_atomically(fifo, "through the pipe\n")
    reader.join(10)
    assert received == [b"through the pipe\n"] and stat.S_ISFIFO(fifo.stat().st_mode)
