"""The on-disk model: a directory written atomically and validated on load.

Layout of ``models/NAME/``::

    bundle.json        format version, creation time, corpus identity, sha256 of every file
    config.json        the full Config (tokenizer, model, training, decoding)
    tokenizer.json     the fitted tokenizer
    model.weights.h5   weights only: loading never deserialises code (no pickle, no Lambda)
    metrics.json       training history and evaluation figures
    validation.jsonl   the held-out examples, so evaluation always uses unseen pairs
    training_log.csv   per-epoch log written during training

A bundle is first written to a hidden sibling directory and renamed into place, so a crash
leaves either the old bundle or the new one, never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config
from .corpus import Example
from .errors import BundleError, ChatbotError
from .tokenizer import TextTokenizer

FORMAT_VERSION = 1
MANIFEST = "bundle.json"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
WEIGHTS = "model.weights.h5"
METRICS = "metrics.json"
VALIDATION = "validation.jsonl"
TRAINING_LOG = "training_log.csv"
REQUIRED = (CONFIG, TOKENIZER, WEIGHTS)
# Formats that can carry executable code; a bundle holding one is refused outright.
UNSAFE_SUFFIXES = (".pkl", ".pickle", ".keras", ".pb", ".joblib", ".npy", ".npz")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Bundle:
    config: Config
    tokenizer: TextTokenizer
    model: Any  # Seq2Seq; typed loosely so importing this module stays cheap
    metrics: dict = field(default_factory=dict)
    corpus: dict = field(default_factory=dict)  # {"path", "sha256", "examples", "train", "validation"}
    validation: list[Example] = field(default_factory=list)
    path: Path | None = None
    manifest: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name if self.path else "unsaved"

    # --- saving --------------------------------------------------------------------------
    def save(self, path: str | Path, training_log: Path | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            (staging / CONFIG).write_text(self.config.to_json(), encoding="utf-8")
            self.tokenizer.save(staging / TOKENIZER)
            self.model.save_weights(staging / WEIGHTS)
            (staging / METRICS).write_text(json.dumps(self.metrics, indent=2) + "\n", encoding="utf-8")
            (staging / VALIDATION).write_text(
                "".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in self.validation),
                encoding="utf-8")
            if training_log is not None and training_log.exists():
                shutil.copyfile(training_log, staging / TRAINING_LOG)
            files = sorted(p.name for p in staging.iterdir())
            manifest = {
                "format_version": FORMAT_VERSION,
                "chatbot_version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "vocab_size": self.tokenizer.vocab_size,
                "parameters": int(self.model.count_params()),
                "corpus": self.corpus,
                "files": {name: file_sha256(staging / name) for name in files},
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            _fsync_tree(staging)
            _replace_dir(staging, path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.path, self.manifest = path, manifest
        return path

    # --- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> "Bundle":
        path = Path(path)
        if not path.is_dir():
            raise BundleError(f"{path}: no model bundle here (not a directory)")
        manifest = _read_json(path / MANIFEST)
        version = manifest.get("format_version")
        if not isinstance(version, int):
            raise BundleError(f"{path / MANIFEST}: missing or invalid 'format_version'")
        if version > FORMAT_VERSION:
            raise BundleError(f"{path}: bundle format {version} is newer than this chatbot "
                              f"supports ({FORMAT_VERSION}); upgrade the chatbot package")
        unsafe = [p.name for p in path.iterdir() if p.suffix.lower() in UNSAFE_SUFFIXES]
        if unsafe:
            raise BundleError(f"{path}: refusing to load a bundle containing {', '.join(sorted(unsafe))} "
                              "(formats that can execute code)")
        listed = manifest.get("files", {})
        for name in REQUIRED:
            if name not in listed:
                raise BundleError(f"{path / MANIFEST}: '{name}' is not listed")
        for name, expected in listed.items():
            file = path / name
            if not file.is_file():
                raise BundleError(f"{file}: missing file")
            if file_sha256(file) != expected:
                raise BundleError(f"{file}: corrupt file (checksum mismatch)")

        try:
            config = Config.from_dict(_read_json(path / CONFIG))
            tokenizer = TextTokenizer.load(path / TOKENIZER)
        except ChatbotError as exc:
            raise BundleError(f"{path}: {exc}") from None
        if tokenizer.vocab_size != manifest.get("vocab_size"):
            raise BundleError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the weights "
                              f"expect {manifest.get('vocab_size')}")
        from .model import Seq2Seq  # deferred: TensorFlow is slow to import

        model = Seq2Seq(tokenizer.vocab_size, config.model)
        model.build_for_inference()
        try:
            model.load_weights(path / WEIGHTS)
        except Exception as exc:  # h5py/Keras raise many types; all mean "unusable weights"
            raise BundleError(f"{path / WEIGHTS}: cannot load weights ({exc})") from None
        validation = [Example.from_json(json.loads(line))
                      for line in (path / VALIDATION).read_text(encoding="utf-8").splitlines() if line]\
            if (path / VALIDATION).exists() else []
        metrics = _read_json(path / METRICS) if (path / METRICS).exists() else {}
        return cls(config, tokenizer, model, metrics, manifest.get("corpus", {}), validation, path, manifest)


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{file}: missing file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{file}: unreadable or corrupt JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{file}: expected a JSON object")
    return data


def _fsync_tree(directory: Path) -> None:
    for file in directory.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_dir(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``; an existing target is swapped out, then deleted."""
    if target.exists():
        retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, retired)
        os.rename(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, target)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
