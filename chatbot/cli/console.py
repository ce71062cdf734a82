"""Console helpers for the command line: the input history file, colour choice, a spinner.

Interfaces print; these are the small pieces ``chatbot.cli.main`` and the REPL share.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Callable, TextIO

from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from wcwidth import wcswidth

from chatbot.data.text import escape_unshowable
from chatbot.errors import InputError
from chatbot.files import user_data_dir, write_atomically

HISTORY_FILE = "chatbot_history"


def history_path(db_url: str) -> Path:
    """The input history file: next to a SQLite database file, else (or when every user may
    write to that folder, as to ``/tmp``) in the user's data directory."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(db_url)
    except Exception:  # noqa: BLE001 - an unparsable URL was already reported by the store
        return user_data_dir() / HISTORY_FILE
    database = url.database or ""
    if (url.get_backend_name() == "sqlite" and database and database != ":memory:"
            and not database.startswith("file:") and url.query.get("mode") != "memory"
            and not _shared_folder(Path(database).expanduser().parent)):
        return Path(database).expanduser().parent / HISTORY_FILE
    return user_data_dir() / HISTORY_FILE


def column(text: str, width: int) -> str:
    """``text`` for one cell of a table: escape codes shown, not run, and padded to ``width``
    terminal columns (a CJK character or an emoji takes two; ``str.ljust`` counts one)."""
    text = escape_unshowable(text)
    shown = wcswidth(text)
    return text + " " * max(width - (len(text) if shown < 0 else shown), 0)


def warn_if_in_memory(in_memory: bool, stream: TextIO | None = None) -> None:
    """One warning line when the database is in memory (``--db sqlite://``): what is written
    there is gone when the command ends, and there is nothing in it to read."""
    if in_memory:
        print("chatbot: warning: the database is in memory (sqlite://): it starts empty and nothing "
              "will be kept", file=stream or sys.stderr)


def open_history(path: Path) -> History:
    """A ``FileHistory`` at ``path``; in memory when the file cannot be created (a warning on
    stderr), so a read-only directory does not stop the chat. What was typed is private: a
    file someone else owns or a link is not used, one others may read is made private."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            status = os.fstat(descriptor)
            if hasattr(os, "getuid") and status.st_uid != os.getuid():
                raise PermissionError(0, "owned by another user")
            if status.st_mode & 0o077:
                os.fchmod(descriptor, 0o600)
        finally:
            os.close(descriptor)
    except OSError as exc:
        reason = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror or exc
        print(f"chatbot: warning: input history not saved ({path}: {reason})", file=sys.stderr)
        return InMemoryHistory()
    return FileHistory(str(path))


def _shared_folder(folder: Path) -> bool:
    """Whether every user may write to ``folder`` (``/tmp``)."""
    try:
        return bool(folder.stat().st_mode & stat.S_IWOTH)
    except OSError:
        return False


@contextlib.contextmanager
def keys_not_echoed(stream: TextIO | None = None):
    """While a reply is decoded, keys typed on the terminal are not echoed into the transcript
    (they printed before the reply, then again at the next prompt); they stay queued for the
    next prompt. Ctrl-C still interrupts. Nothing changes where ``stream`` is no terminal."""
    stream = stream if stream is not None else sys.stdin
    try:
        import termios

        descriptor = stream.fileno()
        before = termios.tcgetattr(descriptor) if os.isatty(descriptor) else None
    except (ImportError, AttributeError, OSError, ValueError):  # no termios (Windows), no descriptor
        before = None
    if before is None:
        yield
        return
    quiet = list(before)
    quiet[3] &= ~termios.ECHO
    termios.tcsetattr(descriptor, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(descriptor, termios.TCSANOW, before)


def color_wanted(no_color_flag: bool, stream: TextIO) -> bool:
    """Colours unless --no-color, a non-empty NO_COLOR (https://no-color.org), TERM=dumb or a
    non-terminal."""
    if no_color_flag or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Spinner:
    """A one-line spinner on a terminal while something slow runs (``with Spinner(...):``).

    It writes to a duplicate of the stream's file descriptor, so it keeps turning while the
    original descriptor is muted (as during the TensorFlow import), and it erases itself on exit,
    whether the block succeeded or raised. Disabled (silent) when the stream is not a terminal.
    """

    FRAMES = "|/-\\"

    def __init__(self, message: str, stream: TextIO | None = None, enabled: bool | None = None,
                 interval: float = 0.1):
        self.message = message
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            try:
                enabled = self.stream.isatty()
            except (AttributeError, ValueError):
                enabled = False
        self.enabled = enabled
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._out: TextIO | None = None
        self._own_out = False
        self._width = 0

    def __enter__(self) -> "Spinner":
        if not self.enabled:
            return self
        try:
            self._out = os.fdopen(os.dup(self.stream.fileno()), "w", encoding="utf-8", errors="replace")
            self._own_out = True
        except (AttributeError, OSError, ValueError):  # no real descriptor (e.g. a StringIO)
            self._out = self.stream
        self._thread = threading.Thread(target=self._spin, name="chatbot-spinner", daemon=True)
        self._thread.start()
        return self

    def _spin(self) -> None:
        began = time.monotonic()
        frame = 0
        while True:
            text = f"{self.FRAMES[frame % len(self.FRAMES)]} {self.message} ({time.monotonic() - began:.0f} s)"
            self._width = max(self._width, len(text))
            try:
                self._out.write("\r" + text)
                self._out.flush()
            except (OSError, ValueError):
                return
            frame += 1
            if self._stop.wait(self.interval):
                return

    def __exit__(self, *exc_info) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        try:
            self._out.write("\r" + " " * self._width + "\r")
            self._out.flush()
        except (OSError, ValueError):
            pass
        if self._own_out:
            self._out.close()
        self._out = None


def write_export(path: str | Path, text: str, is_database: Callable[[str | Path], bool]) -> None:
    """An export written to ``path`` all or nothing, never over the session database it came
    from (``/export chat.db`` used to replace every stored conversation with one session)."""
    if is_database(path):
        raise InputError(f"{path}: that is the session database itself; export to another file")
    if _is_sqlite_file(path):  # another database (another REPL's, a project's): not an export to replace
        raise InputError(f"{path}: that is a SQLite database; export to another file")
    write_atomically(path, text)


def _is_sqlite_file(path: str | Path) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(16) == b"SQLite format 3\x00"
    except OSError:  # missing, a folder, unreadable: write_atomically says what is wrong
        return False
