"""The on-disk model: a directory written atomically and validated on load.

Layout of ``models/NAME/``::

    bundle.json        format version, creation time, corpus identity, sha256 of every file
    config.json        the full Config (tokenizer, model, training, decoding)
    tokenizer.json     the fitted tokenizer
    model.weights.h5   weights only: loading never deserialises code (no pickle, no Lambda)
    metrics.json       training history and evaluation figures
    validation.jsonl   the held-out examples, so evaluation always uses unseen pairs
    train.jsonl        the training examples: the answer memory that replies can draw on
    question_vectors.safetensors   the memory's question embeddings (hybrid retrieval)
    training_log.csv   per-epoch log written during training
    training.png       loss and accuracy per epoch (when matplotlib is installed)
    tensorboard/       TensorBoard event files of the training run

A bundle is first written to a hidden sibling directory and renamed into place, so a crash
leaves either the old bundle or the new one, never a half-written one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from chatbot.version import __version__
from chatbot.config import Config
from chatbot.data.corpus import Example, JSONTooDeep, load_corpus, loads_bounded, resolve_corpus
from chatbot.errors import BundleError, ChatbotError, CorpusError
from chatbot.files import temporary_sibling
from chatbot.data.tokenizer import TextTokenizer

# 1: the first format; 2: retrieve and refine (data.retrieved_pairs, model.copy_attention,
# decoding.retrieval replace decoding.rerank); 3: data.retriever (hybrid retrieval) and the
# stored question embeddings; 4: data.spelling and model.copy_continuation; 5: a transformer's
# pointer reads model.copy_continuation too. Older bundles still load, as the models they were.
FORMAT_VERSION = 5
MANIFEST = "bundle.json"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
WEIGHTS = "model.weights.h5"
METRICS = "metrics.json"
VALIDATION = "validation.jsonl"
TRAIN = "train.jsonl"
TRAINING_LOG = "training_log.csv"
QUESTION_VECTORS = "question_vectors.safetensors"
REQUIRED = (CONFIG, TOKENIZER, WEIGHTS)
# Formats that can carry executable code; a bundle holding one is refused outright.
UNSAFE_SUFFIXES = (".pkl", ".pickle", ".keras", ".pb", ".joblib", ".npy", ".npz")


def _models_dir() -> Path:
    """Where named models live: ``models/`` of a source checkout (an editable install), else
    the copy a wheel carries inside the package (``chatbot/bundled_models``)."""
    package = Path(__file__).resolve().parent.parent
    checkout = package.parent / "models"
    if (checkout / "default" / CONFIG).is_file():
        return checkout
    return package / "bundled_models"


MODELS_DIR = _models_dir()


def model_directories() -> list[Path]:
    """Where a model's name is looked up, first match first: ``models/`` of the working
    directory (where ``chatbot train`` writes by default), then the bundled models."""
    here = Path("models")
    if here.is_dir() and here.resolve() != MODELS_DIR.resolve():
        return [here, MODELS_DIR]
    return [MODELS_DIR]


def resolve_model_path(model: str | Path | None) -> Path:
    """A path, a name under ``models/`` (``model_directories``), ``$CHATBOT_MODEL``, or the
    model named ``default``, looked up as any name is: a ``models/default`` of the working
    directory comes first, as it does for ``--model default`` and in ``chatbot models list``."""
    if model is None:
        model = os.environ.get("CHATBOT_MODEL")
        if not model:
            return next((d / "default" for d in model_directories() if (d / "default").is_dir()),
                        MODELS_DIR / "default")
    path = Path(model).expanduser()
    if path.exists():
        return path
    if not path.is_absolute():
        for directory in model_directories():
            if (directory / path).is_dir():
                return directory / path
    known = sorted({p.name for d in model_directories() if d.is_dir() for p in d.iterdir()
                    if (p / MANIFEST).is_file() and not p.name.startswith(".")})
    raise BundleError(f"{path}: no such model (give a bundle directory or a name under "
                      f"{' or '.join(str(d) for d in model_directories())}"
                      + (f": {', '.join(known)})" if known else ")"))


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
    model: Any  # an EncoderDecoder; typed loosely so importing this module stays cheap
    metrics: dict = field(default_factory=dict)
    corpus: dict = field(default_factory=dict)  # {"path", "sha256", "examples", "train", "validation"}
    validation: list[Example] = field(default_factory=list)
    train: list[Example] = field(default_factory=list)
    path: Path | None = None
    manifest: dict = field(default_factory=dict)
    # The answer memory's question embeddings (hybrid retrieval) and the fingerprint of the
    # questions they belong to, so loading a model does not embed its whole memory again.
    question_vectors: tuple[Any, str] | None = None

    @property
    def name(self) -> str:
        return self.path.name if self.path else "unsaved"

    # --- saving --------------------------------------------------------------------------
    def save(self, path: str | Path, training_log: Path | None = None,
             attachments: dict[str, Path] | None = None) -> Path:
        """Write the bundle atomically; ``attachments`` maps names in the bundle to files or
        directories to copy in (plots, TensorBoard logs). Every file is checksummed. An
        existing bundle at ``path`` is replaced; anything else there is refused."""
        path = Path(path)
        check_replaceable(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = temporary_sibling(path)
        staging.mkdir()
        with _swapped_in(staging, path, "write"):
            (staging / CONFIG).write_text(self.config.to_json(), encoding="utf-8")
            self.tokenizer.save(staging / TOKENIZER)
            self.model.save_weights(staging / WEIGHTS)
            (staging / METRICS).write_text(json.dumps(self.metrics, indent=2) + "\n", encoding="utf-8")
            (staging / VALIDATION).write_text(_jsonl(self.validation), encoding="utf-8")
            if self.train:
                (staging / TRAIN).write_text(_jsonl(self.train), encoding="utf-8")
            if self.question_vectors is not None:
                _write_vectors(staging / QUESTION_VECTORS, *self.question_vectors)
            if training_log is not None and training_log.exists():
                shutil.copyfile(training_log, staging / TRAINING_LOG)
            for name, source in (attachments or {}).items():
                if source.is_dir():
                    shutil.copytree(source, staging / name)
                elif source.exists():
                    shutil.copyfile(source, staging / name)
            files = sorted(f.relative_to(staging).as_posix() for f in staging.rglob("*") if f.is_file())
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
        self.path, self.manifest = path, manifest
        return path

    # --- the data it was trained on ------------------------------------------------------
    def training_examples(self) -> list[Example]:
        """Every example this model was trained on, validation split included: the bundle's own
        train.jsonl and validation.jsonl, so that a corpus edited or moved since (the bundled
        corpora change between releases) does not matter; older bundles, without train.jsonl,
        rebuild it from the recorded corpus path, checked against the recorded sha256."""
        if self.train:
            return list(self.train) + list(self.validation)
        recorded = self.corpus.get("path")
        if not recorded:
            raise BundleError(f"{self.path}: the bundle does not record its training corpus")
        path = resolve_corpus(recorded)  # a path, a bundled corpus, or a name such as "chitchat"
        if not path.exists():
            raise CorpusError(path, None, f"the training corpus of model {self.name} is no longer here")
        corpus = load_corpus(path, quiet=True)  # what it skips was reported when the model was trained
        if corpus.sha256 != self.corpus.get("sha256"):
            raise CorpusError(path, None, f"the training corpus of model {self.name} changed since "
                                          "it was trained (sha256 differs)")
        data = self.config.data
        return corpus.examples(data.context_turns, data.deduplicate)

    # --- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> "Bundle":
        path = Path(path)
        manifest, config, tokenizer = _checked_parts(path)
        from chatbot.model.network import build_model  # deferred: TensorFlow is slow to import

        model = build_model(tokenizer.vocab_size, config.model, config.data.max_output_tokens)
        model.build_for_inference()
        try:
            model.load_weights(path / WEIGHTS)
        except Exception as exc:  # h5py/Keras raise many types; all mean "unusable weights"
            detail = " ".join(str(exc).split())  # Keras' reasons run over several lines
            if len(detail) > 300:
                detail = detail[:300] + "..."
            raise BundleError(f"{path / WEIGHTS}: cannot load weights: they do not fit the model's "
                              f"config and tokenizer, or the file is damaged ({detail})") from None
        metrics = _read_metrics(path / METRICS)
        return cls(config, tokenizer, model, metrics, corpus=manifest.get("corpus", {}),
                   validation=_read_examples(path / VALIDATION), train=_read_examples(path / TRAIN),
                   path=path, manifest=manifest, question_vectors=_read_vectors(path / QUESTION_VECTORS))


def _checked_parts(path: Path) -> tuple[dict, Config, TextTokenizer]:
    """What loading reads and checks before it builds the network: the manifest
    (``checked_manifest``), the config, the tokenizer, and whether they fit the weights file."""
    manifest = checked_manifest(path)
    with _read_as_bundle(path, manifest):
        config = _bundle_config(path / CONFIG, manifest)
        tokenizer = TextTokenizer.load(path / TOKENIZER)
    if tokenizer.vocab_size != manifest.get("vocab_size"):
        raise BundleError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the weights "
                          f"expect {manifest.get('vocab_size')}")
    _check_weights_can_hold(path, config, tokenizer.vocab_size)
    return manifest, config, tokenizer


def checked_manifest(path: Path) -> dict:
    """The manifest of the bundle at ``path``, after the checks loading makes before it reads a
    file: a bundle of a format this version reads, no file that can execute code, every listed
    file present and unchanged (sha256), no unlisted file that loading would read."""
    if not path.is_dir():
        raise BundleError(f"{path}: no model bundle here (not a directory)")
    manifest = _read_manifest(path / MANIFEST)
    version = manifest["format_version"]
    if version > FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format {version} is newer than this chatbot "
                          f"supports ({FORMAT_VERSION}); upgrade the chatbot package")
    unsafe = [p.relative_to(path).as_posix() for p in path.rglob("*") if p.suffix.lower() in UNSAFE_SUFFIXES]
    if unsafe:
        raise BundleError(f"{path}: refusing to load a bundle containing {', '.join(sorted(unsafe))} "
                          "(formats that can execute code)")
    listed = manifest["files"]
    for name in REQUIRED:
        if name not in listed:
            raise BundleError(f"{path / MANIFEST}: '{name}' is not listed")
    for name, expected in listed.items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"{file}: missing file")
        if file_sha256(file) != expected:
            raise BundleError(f"{file}: corrupt file (checksum mismatch)")
    for name in (METRICS, VALIDATION, TRAIN, QUESTION_VECTORS):  # the optional files loading reads
        if name not in listed and (path / name).exists():
            raise BundleError(f"{path / name}: not listed in {MANIFEST}, so it was not written with the "
                              "bundle and its checksum cannot be checked")
    return manifest


@contextlib.contextmanager
def _read_as_bundle(path: Path, manifest: dict):
    """A config or tokenizer that cannot be read is the bundle's error, and says so when a newer
    chatbot wrote it."""
    try:
        yield
    except ChatbotError as exc:
        written_by = manifest.get("chatbot_version")
        if _newer_version(written_by, __version__):  # e.g. a config key this version lacks
            raise BundleError(f"{path}: {exc}; the model was made by chatbot {written_by}, newer than "
                              f"this one ({__version__}): upgrade the chatbot package") from None
        raise BundleError(f"{path}: {exc}") from None


def _bundle_config(file: Path, manifest: dict) -> Config:
    """A bundle's ``config.json`` in today's keys, as its format means it (``upgrade_config``)."""
    return Config.from_dict(upgrade_config(_read_json(file), manifest["format_version"]))


@contextlib.contextmanager
def _swapped_in(staging: Path, path: Path, doing: str):
    """Fill ``staging`` in the block; then it is synced and replaces ``path`` whole. If anything
    fails it is removed and the bundle at ``path`` (if any) is untouched; an ``OSError`` (disk
    full, permissions) becomes a ``BundleError`` saying it could not ``doing`` the bundle."""
    try:
        yield
        _fsync_tree(staging)
        _replace_dir(staging, path)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BundleError(f"{path}: cannot {doing} the bundle ({exc.strerror or exc})") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


RUN_TIME_SECTIONS = ("decoding", "dialogue")  # what replies read at run time; the rest made the weights


def change_settings(path: str | Path, overrides: dict[str, Any]) -> Config:
    """Change a trained model's run-time settings in place, e.g. ``{"dialogue.min_confidence":
    0.93}`` (chosen by ``chatbot evaluate --unanswerable``) or a fallback text in the corpus'
    language, without retraining: only ``decoding.*`` and ``dialogue.*`` keys, checked as a
    config file is. The bundle is checked as loading checks it, copied beside itself (files
    hard-linked where the file system allows), given the new ``config.json`` and manifest (which
    records what changed, when), and swapped in whole, as ``save`` does. Returns the new config."""
    from chatbot.errors import ConfigError

    path = Path(path)
    if not overrides:
        raise ConfigError("no settings to change (expected KEY=VALUE, e.g. dialogue.min_confidence=0.9)")
    for key in overrides:
        if key.partition(".")[0] not in RUN_TIME_SECTIONS or not key.partition(".")[2]:
            raise ConfigError(f"'{key}': only decoding.* and dialogue.* settings change without retraining "
                              "(the others made the weights: train again with chatbot train --set)")
    manifest = checked_manifest(path)
    with _read_as_bundle(path, manifest):
        config = _bundle_config(path / CONFIG, manifest)
    config = config.with_overrides(overrides)
    staging = temporary_sibling(path)
    with _swapped_in(staging, path, "change"):
        shutil.copytree(path, staging, copy_function=_link_or_copy)
        (staging / CONFIG).unlink()  # a hard link: writing through it would change the bundle in place
        (staging / CONFIG).write_text(config.to_json(), encoding="utf-8")
        written = config.to_dict()
        changed = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "chatbot_version": __version__,
                   "settings": {key: written[key.partition(".")[0]][key.partition(".")[2]] for key in overrides}}
        # The config is written in today's keys (upgrade_config), so the bundle's format is today's.
        manifest = {**manifest, "format_version": FORMAT_VERSION, "changes": [*manifest.get("changes", []), changed],
                    "files": {**manifest["files"], CONFIG: file_sha256(staging / CONFIG)}}
        (staging / MANIFEST).unlink()
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return config


def _link_or_copy(source: str, target: str) -> None:
    """A hard link where the file system allows (a bundle's files are never written in place)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _check_weights_can_hold(path: Path, config: Config, vocab_size: int) -> None:
    """Refuse a config whose network the weights file is far too small to hold, before building
    it: building allocates every variable, and a config edited to 4,096 units made a 6 MB bundle
    take 3.6 GB and minutes before its weights were found not to fit. The bound is low on
    purpose: an embedding table and one square matrix per layer, at 2 bytes a parameter."""
    m = config.model
    width = m.units if m.cell == "transformer" else max(m.embedding_dim, m.units)
    least = vocab_size * width + m.layers * m.units ** 2
    held = (path / WEIGHTS).stat().st_size
    if 2 * least > held + 2**20:
        raise BundleError(f"{path / CONFIG}: describes a network of at least {least:,} parameters, which "
                          f"{WEIGHTS} ({held:,} bytes) cannot hold: the config and the weights do not belong together")


def config_file(path: str | Path) -> Config:
    """A ``--config`` file: a bundle's ``config.json`` as its format means it (``upgrade_config``,
    as loading the bundle reads it: an older bundle's keys are not today's), any other file as
    written."""
    path = Path(path)
    if path.name == CONFIG and (path.parent / MANIFEST).is_file():
        return _bundle_config(path, _read_manifest(path.parent / MANIFEST))
    return Config.load(path)


# Defaults that became the default recipe's after 0.4.0 (bundles hold every key, so these only fill
# what a hand-written or trimmed config.json leaves out).
EARLIER_DEFAULTS = {"data": {"validation_fraction": 0.1, "noisy_copies": 2, "substitute_words": False,
                             "leave_out_own": 0.25},
                    "training": {"epochs": 100, "batch_size": 32, "learning_rate": 0.002, "lr_decay_patience": 3}}


def upgrade_config(raw: dict, format_version: int) -> dict:
    """A config as written by an older bundle format, in today's keys, meaning the same model:
    format 1 predates retrieve and refine (its models read the question alone and have no copy
    switch) and ranked stored answers with ``decoding.rerank``, which no longer exists (a
    reply is always the decoded text); formats 1 and 2 retrieved by edit distance alone;
    formats 1 to 3 read words as typed and copy without the continuation bonus, which a
    transformer ignored up to format 4."""
    if not isinstance(raw, dict):
        return raw
    raw = _upgrade_format(json.loads(json.dumps(raw)), format_version)  # a copy
    for section, keys in EARLIER_DEFAULTS.items():  # a key the bundle lacks meant the default of its day
        if isinstance(raw.setdefault(section, {}), dict):
            for key, value in keys.items():
                raw[section].setdefault(key, value)
    return raw


def _upgrade_format(raw: dict, format_version: int) -> dict:
    if format_version >= FORMAT_VERSION:
        return raw
    data, model, decoding = (raw.setdefault(k, {}) for k in ("data", "model", "decoding"))
    if isinstance(model, dict) and model.get("cell") == "transformer":
        model["copy_continuation"] = False
    if format_version >= 4:
        return raw
    if isinstance(data, dict):
        data.setdefault("spelling", False)
    if isinstance(model, dict):
        model.setdefault("copy_continuation", False)
    if format_version >= 3:
        return raw
    if isinstance(data, dict):
        data.setdefault("retriever", "lexical")
    if format_version >= 2:
        return raw
    if isinstance(data, dict):
        data.setdefault("retrieved_pairs", 0)
        data.setdefault("noisy_copies", 0)
    if isinstance(model, dict):
        model.setdefault("copy_attention", False)
    if isinstance(decoding, dict):
        for legacy in ("rerank", "rerank_min_similarity"):
            decoding.pop(legacy, None)
    return raw


@dataclass(frozen=True)
class BundleSummary:
    """What ``chatbot models list`` shows: read from the manifest and metrics, no weights."""

    name: str
    path: Path
    size_bytes: int
    created: str | None = None
    corpus: str | None = None
    parameters: int | None = None
    metrics: dict = field(default_factory=dict)  # train_exact_match, validation figures
    problem: str | None = None  # why the directory is not a usable bundle


def list_bundles(directory: str | Path) -> list[BundleSummary]:
    """Every bundle directly under ``directory`` (hidden work directories skipped), by name.
    Cheap: no weights are loaded and no checksums computed (``Bundle.load`` does that); a file
    the manifest lists but the folder lacks makes the bundle unusable here already."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"{directory}: not a directory")
    found = []
    for path in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (path / MANIFEST).exists():
            continue  # not a bundle (e.g. a folder of configs)
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        try:
            manifest = _read_manifest(path / MANIFEST)
            metrics = _read_metrics(path / METRICS)
        except BundleError as exc:
            found.append(BundleSummary(path.name, path, size, problem=str(exc)))
            continue
        key = {"train_exact_match": metrics.get("train_exact_match"), **metrics.get("validation", {})}
        version = manifest["format_version"]
        missing = sorted(name for name in manifest["files"] if not (path / name).is_file())
        problem = (f"format {version} is newer than this chatbot supports" if version > FORMAT_VERSION
                   else f"{missing[0]}: missing file" if missing else None)
        found.append(BundleSummary(path.name, path, size, manifest.get("created"),
                                   (manifest.get("corpus") or {}).get("path"), manifest.get("parameters"),
                                   {k: v for k, v in key.items() if v is not None}, problem))
    return found


def describe(path: str | Path) -> dict:
    """Everything ``chatbot models show`` tells about a bundle, without loading its weights:
    the manifest (how and from what it was made, its later setting changes), the whole config
    in today's keys, the training figures (per-epoch history left out: ``training_log.csv``),
    every file's size, and ``problem``: what loading would refuse, found by every check it makes
    but building the network and reading the weights into it (None: files intact and readable).
    A manifest or config that cannot be read at all is a BundleError."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: no model bundle here (not a directory)")
    try:
        manifest, config, _ = _checked_parts(path)
        for examples in (VALIDATION, TRAIN):
            _read_examples(path / examples)
        _read_vectors(path / QUESTION_VECTORS)
        problem = None
    except BundleError as exc:  # what can still be read is shown, beside why it would not load
        problem = str(exc)
        manifest = _read_manifest(path / MANIFEST)
        with _read_as_bundle(path, manifest):
            config = _bundle_config(path / CONFIG, manifest)
    try:
        metrics = _read_metrics(path / METRICS)
    except BundleError as exc:
        metrics, problem = {}, problem or str(exc)
    history = metrics.pop("history", None)
    losses = history.get("loss") if isinstance(history, dict) else None
    if isinstance(losses, list) and losses and all(isinstance(x, (int, float)) for x in losses):
        metrics.update(final_loss=losses[-1], best_loss=min(losses))
    files = {p.relative_to(path).as_posix(): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}
    return {"name": path.name, "path": str(path), "problem": problem,
            **{key: manifest.get(key) for key in ("format_version", "chatbot_version", "created",
                                                  "parameters", "vocab_size")},
            "size_bytes": sum(files.values()), "corpus": manifest.get("corpus") or {},
            "changes": manifest.get("changes") or [], "training": metrics, "config": config.to_dict(),
            "files": files}


def _newer_version(version, than: str) -> bool:
    try:
        return Version(str(version)) > Version(than)
    except InvalidVersion:  # missing or unparsable: nothing to say about it
        return False


def _jsonl(examples: list[Example]) -> str:
    return "".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in examples)


def _read_examples(file: Path) -> list[Example]:
    if not file.exists():  # optional: older bundles lack train.jsonl
        return []
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{file}: unreadable examples ({exc})") from None
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        try:
            examples.append(Example.from_json(loads_bounded(line)))
        except ValueError as exc:  # bad JSON, too deep, or not an example (Example.from_json)
            raise BundleError(f"{file}:{number}: unreadable example ({exc})") from None
    return examples


def _write_vectors(file: Path, vectors, questions_fingerprint: str) -> None:
    """Written like the bundle's other files, in its staging directory (``save_file`` makes
    its file readable by its owner only: a server running as another user could not load it)."""
    import numpy as np
    from safetensors.numpy import save

    file.write_bytes(save({"questions": np.ascontiguousarray(vectors, dtype=np.float16)},
                          metadata={"questions_sha256": questions_fingerprint}))


def _read_vectors(file: Path) -> tuple[Any, str] | None:
    """Stored question embeddings (safetensors: plain arrays, no code), or None."""
    if not file.exists():
        return None
    import numpy as np
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="numpy") as stored:
            fingerprint = (stored.metadata() or {}).get("questions_sha256", "")
            vectors = stored.get_tensor("questions").astype(np.float32)
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as exc:
        raise BundleError(f"{file}: cannot read the question embeddings ({exc})") from None
    if vectors.ndim != 2 or not np.isfinite(vectors).all():
        raise BundleError(f"{file}: the question embeddings must be a finite matrix, got shape {vectors.shape}")
    return vectors, fingerprint


def _read_json(file: Path) -> dict:
    """A JSON object from a bundle file, nesting bounded (``loads_bounded``): a hostile file is
    a ``BundleError`` naming it, never a ``RecursionError`` here or in what reads it next."""
    try:
        data = loads_bounded(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{file}: missing file") from None
    except JSONTooDeep as exc:
        raise BundleError(f"{file}: unreadable JSON ({exc})") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, a number too long
        raise BundleError(f"{file}: unreadable or corrupt JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{file}: expected a JSON object")
    return data


def _read_manifest(file: Path) -> dict:
    """``bundle.json``, with every field that loading and listing rely on checked for its type,
    so that a hand-edited or hostile manifest is one ``BundleError`` naming the field rather
    than a ``TypeError`` somewhere later."""
    manifest = _read_json(file)
    version = manifest.get("format_version")
    if type(version) is not int or version < 1:
        raise BundleError(f"{file}: missing or invalid 'format_version'")
    files = manifest.setdefault("files", {})
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise BundleError(f"{file}: 'files' must map file names to sha256 digests")
    outside = next((name for name in files if not _inside_bundle(name)), None)
    if outside is not None:
        raise BundleError(f"{file}: 'files' lists {outside!r}, which is not a file name inside the bundle")
    for key, kind in (("corpus", dict), ("created", str), ("chatbot_version", str),
                      ("vocab_size", int), ("parameters", int), ("changes", list)):
        if manifest.get(key) is not None and not isinstance(manifest[key], kind):
            raise BundleError(f"{file}: '{key}' must be a {kind.__name__}, got {type(manifest[key]).__name__}")
    return manifest


def _inside_bundle(name: str) -> bool:
    """A manifest's file name is relative and stays inside the bundle directory (no "..")."""
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts and "\x00" not in name


def _read_metrics(file: Path) -> dict:
    """``metrics.json`` (optional); its ``validation`` figures, when present, are an object."""
    if not file.exists():
        return {}
    metrics = _read_json(file)
    if not isinstance(metrics.get("validation", {}), dict):
        raise BundleError(f"{file}: 'validation' must be an object")
    return metrics


def check_replaceable(path: Path) -> None:
    """``BundleError`` when saving a bundle at ``path`` would destroy what is not a bundle: a
    file, or a directory that holds files but no ``bundle.json`` (``--out .``, a typo naming a
    folder of one's own)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BundleError(f"{path}: exists and is not a model bundle; choose another output path")
    if path.is_dir() and not (path / MANIFEST).is_file() and any(path.iterdir()):
        raise BundleError(f"{path}: a directory that is not a model bundle (no {MANIFEST}) and is not empty; "
                          "choose another output path, or remove it")


def _fsync_tree(directory: Path) -> None:
    for entry in directory.iterdir():
        if entry.is_dir():
            _fsync_tree(entry)
            continue
        with open(entry, "rb") as f:
            os.fsync(f.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux' ``renameat2`` with ``RENAME_EXCHANGE``);
    False where the system or the file system cannot."""
    rename_exchange, at_fdcwd = 2, -100
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(error, os.strerror(error), str(b))


def _replace_dir(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``. An existing target is exchanged with it in one step,
    so ``target`` is a whole bundle at every moment, whenever the process dies; where the
    system cannot exchange, it is renamed aside first and renamed back if the move fails."""
    if target.exists():
        if _exchange(staging, target):
            shutil.rmtree(staging, ignore_errors=True)  # now the old bundle
        else:
            retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, retired)
            try:
                os.rename(staging, target)
            except OSError:
                os.rename(retired, target)
                raise
            shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, target)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
