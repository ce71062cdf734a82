"""Keep the decode loops' compiled XLA programs on disk, so a new process does not compile them again.

The greedy and beam loops are XLA programs compiled per input width and batch, about a second
each on 2 cores: every `chatbot ask` compiled two or three before it answered and another for
each new width, and every `chatbot serve` worker one per width it serves before it was ready
(the cache saves them 2.2 s and 6.2 s: bench/results/startup.json).
TensorFlow can keep compiled programs in a directory (its `tf_xla_persistent_cache_directory`
flag): a program is found by its HLO and signature and checked against them in full when read,
and written through a temporary file and a rename. Weights are arguments of the programs, not
constants, so a retrained model of the same shape reuses them.

Three things the flag alone does not cover, handled here:
- the key names neither the CPU a program was compiled for nor the TensorFlow build, so the
  directory does (``<cache>/tf<version>-<cpu>``): a home directory shared between machines never
  hands one of them a program built for another's instructions;
- TensorFlow fails the call, rather than compiling again, when a cached file cannot be read, so
  files that are not whole are removed before TensorFlow starts;
- the directory grows with every new shape, so it is kept under ``MAX_BYTES``, oldest first;
- a TensorFlow upgrade or another CPU starts a directory of its own, so the directories of other
  builds unused for ``UNUSED_BUILD_DAYS`` are removed (a machine sharing the home directory that
  still uses one compiles its programs again, once).

The directory must be the user's own and writable by no one else (a program read from it runs
as machine code). Set ``CHATBOT_XLA_CACHE`` to another directory, or to ``off``.
A leaf module (it imports nothing of the package and not TensorFlow): ``enable`` must run before
TensorFlow is imported.
"""

from __future__ import annotations

import hashlib
import os
import platform
import stat
import time
from importlib import metadata
from pathlib import Path

ENVIRONMENT = "CHATBOT_XLA_CACHE"
FLAG = "--tf_xla_persistent_cache_directory"
MAX_BYTES = 128 * 2 ** 20  # about 180 programs of the default model (700 KB each)
STALE_TEMPORARY_SECONDS = 3600  # a writer's temporary file this old was left by a crash
UNUSED_BUILD_DAYS = 30  # another TensorFlow build's or CPU's directory nothing wrote to for this long
_WHOLE_ENTRY_FIELDS = {1, 2, 3}  # XlaSerializedCacheEntry: key, hlo_module, executable


def default_directory() -> Path:
    """``$XDG_CACHE_HOME/chatbot/xla`` (an absolute path only, as the XDG spec requires), else
    ``~/.cache/chatbot/xla``."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "chatbot" / "xla"


def _tensorflow_version() -> str:
    for name in ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-macos"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def cpu_fingerprint() -> str:
    """Names the instruction set programs are compiled for: the architecture and, where Linux
    lists them, the CPU model and its feature flags."""
    described = [platform.machine(), platform.processor()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    described.append(line.strip())
                elif not line.strip() and len(described) > 2:
                    break  # the first processor's lines are enough
    except OSError:
        pass
    return hashlib.blake2b("\n".join(described).encode(), digest_size=6).hexdigest()


def cache_directory(base: str | Path | None = None) -> Path:
    """Where programs for this TensorFlow build and this CPU are kept, under ``base``."""
    base = Path(base) if base else default_directory()
    return base / f"tf{_tensorflow_version()}-{platform.machine() or 'cpu'}-{cpu_fingerprint()}"


def _is_private(path: Path) -> bool:
    info = path.stat()
    owned = not hasattr(os, "getuid") or info.st_uid == os.getuid()
    return stat.S_ISDIR(info.st_mode) and owned and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _is_whole(path: Path) -> bool:
    """Whether a cached program parses as a complete entry (its key, HLO and executable)."""
    from google.protobuf import empty_pb2
    from google.protobuf.message import DecodeError
    from google.protobuf.unknown_fields import UnknownFieldSet

    entry = empty_pb2.Empty()
    try:
        entry.ParseFromString(path.read_bytes())
    except (DecodeError, OSError):
        return False
    return _WHOLE_ENTRY_FIELDS <= {field.field_number for field in UnknownFieldSet(entry)}


def tidy(directory: Path, max_bytes: int = MAX_BYTES) -> None:
    """Remove programs that are not whole, temporary files a crashed writer left, and the
    oldest programs while the directory holds more than ``max_bytes``."""
    now = time.time()
    programs = []
    for path in directory.iterdir():
        try:
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode):
                continue
            if path.suffix == ".pb" and _is_whole(path):
                programs.append((info.st_mtime, info.st_size, path))
            elif path.suffix == ".pb" or now - info.st_mtime > STALE_TEMPORARY_SECONDS:
                path.unlink()
        except FileNotFoundError:  # another process tidied it first
            continue
    total = sum(size for _, size, _ in programs)
    for _, size, path in sorted(programs):
        if total <= max_bytes:
            break
        path.unlink(missing_ok=True)
        total -= size


def retire_other_builds(directory: Path, unused_days: float = UNUSED_BUILD_DAYS) -> None:
    """Remove the sibling directories of ``directory`` (other TensorFlow builds and CPUs) that
    are ours, private, and hold nothing written in ``unused_days`` (reading a program does not
    touch it, so "written" is what can be told). Anything else there is left alone."""
    cutoff = time.time() - unused_days * 86400
    for other in directory.parent.iterdir():
        if other == directory or not other.name.startswith("tf") or other.is_symlink():
            continue
        try:
            if not _is_private(other):
                continue
            entries = list(other.iterdir())
            if any(not entry.is_file() or entry.is_symlink() for entry in entries):
                continue  # not a program directory of ours
            if max([other.stat().st_mtime] + [entry.stat().st_mtime for entry in entries]) > cutoff:
                continue
            for entry in entries:
                entry.unlink()
            other.rmdir()
        except OSError:  # in use, gone, or not ours to remove: leave it
            continue


def enable(base: str | Path | None = None) -> Path | None:
    """Point TensorFlow's XLA program cache at ``cache_directory(base)`` (``base`` defaults to
    ``$CHATBOT_XLA_CACHE``, else ``default_directory()``), by the ``TF_XLA_FLAGS`` environment
    variable, which child processes inherit. Call it before TensorFlow is imported; afterwards it
    has no effect on this process. Returns the directory, or None when the cache stays off:
    ``CHATBOT_XLA_CACHE=off``, a cache directory already set in ``TF_XLA_FLAGS`` (the user's own
    is kept), or a directory that cannot be made private."""
    setting = os.environ.get(ENVIRONMENT, "").strip()
    flags = os.environ.get("TF_XLA_FLAGS", "")
    if setting.lower() == "off" or FLAG in flags:
        return None
    directory = cache_directory(base or setting or None)
    if any(character.isspace() for character in str(directory)):
        return None  # TF_XLA_FLAGS is split at white space
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _is_private(directory):
            return None
        tidy(directory)
        retire_other_builds(directory)
    except OSError:
        return None
    os.environ["TF_XLA_FLAGS"] = f"{flags} {FLAG}={directory}".strip()
    return directory
