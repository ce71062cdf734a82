"""File-system helpers shared by every layer: one atomic write and the user data directory.

A leaf module: it imports nothing of the package, so the lowest layers can use it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def user_data_dir() -> Path:
    """``$XDG_DATA_HOME/chatbot`` (an absolute path only, as the XDG spec requires), else
    ``~/.local/share/chatbot``: where the default database and the input history live."""
    base = os.environ.get("XDG_DATA_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".local" / "share"
    return root / "chatbot"


def temporary_sibling(path: Path) -> Path:
    """A hidden, unique name beside ``path``: a rename from it onto ``path`` is atomic."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it is fsynced and renamed
    over ``path``, on any failure it is removed and ``path`` is left as it was.

    For writers that want a file name (matplotlib, h5py); ``write_atomically`` is the
    bytes/text form.
    """
    path = Path(os.path.realpath(path))  # through a symbolic link to its file, not over the link
    partial = temporary_sibling(path)
    try:
        yield partial
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        with contextlib.suppress(FileNotFoundError):  # a private file stays private
            os.chmod(partial, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_atomically(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8, newlines as given) to ``path`` all or nothing: a crash or a
    full disk leaves the previous file whole, never a half-written one."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    if _is_special(path):  # /dev/stdout, a FIFO: written to, never replaced by a file
        with open(path, "wb") as f:
            f.write(payload)
        return
    with atomic_path(path) as partial:
        with open(partial, "xb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())


def _is_special(path: str | Path) -> bool:
    """Whether ``path`` (through links) is something other than a file: a device, a FIFO."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)
