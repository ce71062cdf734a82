"""Encoded examples on disk, so that training reads a big corpus' token ids a window at a time.

A cache is a folder with one flat int32 file of token ids and one int64 file of row offsets per
column (``sources``, ``targets``), and ``cache.json`` with the key of what produced them (the
corpus digest, the tokenizer, the data settings): a resumed training finds its cache and skips
encoding, and a cache built from other data is never read. It is written in a temporary folder
and renamed into place, so a kill leaves either the whole cache or none.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from chatbot.data.tokenizer import START

COLUMNS = ("sources", "targets")
FORMAT = 1
WRITE_CHUNK = 8192  # rows encoded and written together


def cache_key(*parts) -> str:
    """A digest of everything that decides the encoded rows (JSON-serialisable parts)."""
    return hashlib.sha256(json.dumps([FORMAT, *parts], sort_keys=True).encode()).hexdigest()


@dataclass
class Rows:
    """Variable-length rows stored flat: row i is ``values[offsets[i]:offsets[i + 1]]``."""

    values: np.ndarray  # int32
    offsets: np.ndarray  # int64, one more than there are rows

    @classmethod
    def from_lists(cls, rows: list[list[int]]) -> "Rows":
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(r) for r in rows])
        values = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(offsets[-1]))
        return cls(values, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def shifted_right(self) -> "Rows":
        """Each row moved one place right behind [START], its last id dropped: the decoder's
        input under teacher forcing, for target rows (which are never empty: they end in [END])."""
        values = np.empty_like(self.values)
        values[1:] = self.values[:-1]
        values[self.offsets[:-1]] = START
        return Rows(values, self.offsets)

    def padded(self, rows: np.ndarray) -> np.ndarray:
        """The given rows as one int32 matrix, padded with 0 to the longest of them."""
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        positions = np.arange(int(lengths.max()) if len(rows) else 0)
        index = np.minimum(starts[:, None] + positions[None, :], max(len(self.values) - 1, 0))
        return np.where(positions[None, :] < lengths[:, None], self.values[index], 0).astype(np.int32)


class TokenCache:
    """One cache folder (see the module's docstring); ``count`` rows per column."""

    def __init__(self, folder: Path, count: int):
        self.folder, self.count = Path(folder), count
        self._offsets = {column: np.fromfile(self.folder / f"{column}.offsets", dtype=np.int64) for column in COLUMNS}

    @classmethod
    def open(cls, folder: str | Path, key: str) -> "TokenCache | None":
        """The cache in ``folder`` if it was built for ``key``; None otherwise."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / "cache.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("key") != key or not isinstance(meta.get("count"), int):
            return None
        return cls(folder, meta["count"])

    @classmethod
    def build(cls, folder: str | Path, key: str, rows: Iterable[tuple[list[int], list[int]]]) -> "TokenCache":
        """Write ``(source ids, target ids)`` rows to ``folder`` a chunk at a time."""
        folder = Path(folder)
        building = folder.with_name(folder.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        offsets = {column: array("q", [0]) for column in COLUMNS}
        files = {column: open(building / f"{column}.ids", "wb") for column in COLUMNS}
        try:
            rows = iter(rows)
            while chunk := list(itertools.islice(rows, WRITE_CHUNK)):
                for column, part in zip(COLUMNS, zip(*chunk)):
                    flat = Rows.from_lists(list(part))
                    files[column].write(flat.values.tobytes())
                    end = offsets[column][-1]
                    offsets[column].extend((flat.offsets[1:] + end).tolist())
        finally:
            for f in files.values():
                f.close()
        for column in COLUMNS:
            np.frombuffer(offsets[column], dtype=np.int64).tofile(building / f"{column}.offsets")
        count = len(offsets[COLUMNS[0]]) - 1
        (building / "cache.json").write_text(json.dumps({"key": key, "count": count}), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        building.rename(folder)
        return cls(folder, count)

    def lengths(self, column: str) -> np.ndarray:
        return np.diff(self._offsets[column])

    def read(self, column: str, start: int = 0, stop: int | None = None) -> Rows:
        """Rows ``start:stop`` of a column, read from the file (not mapped: the pages a training
        has read do not stay in its memory)."""
        stop = self.count if stop is None else stop
        offsets = self._offsets[column][start:stop + 1]
        first = int(offsets[0])
        values = np.fromfile(self.folder / f"{column}.ids", dtype=np.int32, count=int(offsets[-1]) - first,
                             offset=first * 4)
        return Rows(values, offsets - first)
