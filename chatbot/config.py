"""One configuration tree for everything that shapes a model, serialised inside its bundle.

Reading is strict on purpose: a misspelt key silently falling back to a default would train
a different model from the one the user asked for, so unknown keys and bad values raise
``ConfigError`` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatbot.errors import ConfigError

TOKENIZER_LEVELS = ("char", "word", "subword")
CELLS = ("lstm", "gru")
ATTENTIONS = ("none", "dot", "additive")
DECODING_STRATEGIES = ("greedy", "beam", "sample")
MONITORS = ("val_loss", "loss")


@dataclass
class DataConfig:
    """How corpus dialogues become (context + question -> answer) examples."""

    context_turns: int = 0  # previous turns prepended to the question, joined by [SEP]
    max_input_tokens: int = 64  # longer inputs keep their last tokens (the question)
    max_output_tokens: int = 128  # longer answers are cut here for training
    validation_fraction: float = 0.1
    deduplicate: bool = True

    def validate(self, prefix: str) -> None:
        _check(self.context_turns >= 0, prefix, "context_turns", "must be >= 0")
        _check(self.max_input_tokens >= 1, prefix, "max_input_tokens", "must be >= 1")
        _check(self.max_output_tokens >= 1, prefix, "max_output_tokens", "must be >= 1")
        _check(0.0 <= self.validation_fraction < 1.0, prefix, "validation_fraction",
               "must be in [0, 1)")


@dataclass
class TokenizerConfig:
    level: str = "subword"
    vocab_size: int = 2000  # upper bound for word and subword vocabularies
    min_frequency: int = 1

    def validate(self, prefix: str) -> None:
        _check(self.level in TOKENIZER_LEVELS, prefix, "level", f"must be one of {TOKENIZER_LEVELS}")
        _check(self.vocab_size >= 10, prefix, "vocab_size", "must be >= 10")
        _check(self.min_frequency >= 1, prefix, "min_frequency", "must be >= 1")


@dataclass
class ModelConfig:
    cell: str = "gru"
    embedding_dim: int = 128
    units: int = 256
    layers: int = 1
    dropout: float = 0.0
    bidirectional: bool = False
    attention: str = "dot"

    def validate(self, prefix: str) -> None:
        _check(self.cell in CELLS, prefix, "cell", f"must be one of {CELLS}")
        _check(self.attention in ATTENTIONS, prefix, "attention", f"must be one of {ATTENTIONS}")
        _check(self.embedding_dim >= 1, prefix, "embedding_dim", "must be >= 1")
        _check(self.units >= 1, prefix, "units", "must be >= 1")
        _check(1 <= self.layers <= 8, prefix, "layers", "must be between 1 and 8")
        _check(0.0 <= self.dropout < 1.0, prefix, "dropout", "must be in [0, 1)")


@dataclass
class TrainingConfig:
    epochs: int = 100
    batch_size: int = 32
    learning_rate: float = 0.002
    clipnorm: float = 1.0
    early_stopping: bool = True
    # Question/answer corpora hold one or a few answers per question, and a chatbot must give
    # them back exactly: by default keep the weights with the lowest *training* loss. Use
    # "val_loss" for corpora where unseen inputs should be generalised to (e.g. translation).
    monitor: str = "loss"
    patience: int = 8
    lr_decay_patience: int = 3  # halve the learning rate after this many epochs without progress; 0: never
    seed: int = 1234
    checkpoint_every_steps: int = 0  # 0: checkpoint at each epoch end only

    def validate(self, prefix: str) -> None:
        _check(self.epochs >= 1, prefix, "epochs", "must be >= 1")
        _check(self.batch_size >= 1, prefix, "batch_size", "must be >= 1")
        _check(self.learning_rate > 0, prefix, "learning_rate", "must be > 0")
        _check(self.clipnorm >= 0, prefix, "clipnorm", "must be >= 0 (0 disables clipping)")
        _check(self.monitor in MONITORS, prefix, "monitor", f"must be one of {MONITORS}")
        _check(self.patience >= 0, prefix, "patience", "must be >= 0")
        _check(self.lr_decay_patience >= 0, prefix, "lr_decay_patience", "must be >= 0")
        _check(self.checkpoint_every_steps >= 0, prefix, "checkpoint_every_steps", "must be >= 0")


@dataclass
class DecodingConfig:
    """How replies are generated. Every numeric setting reaches the compiled loops as a scalar
    tensor, so changing one (per call, or with ``/set``) never retraces them.

    * ``strategy``: "greedy" (argmax), "beam" (beam search) or "sample". A "greedy" config
      with ``beam`` > 1 is beam search; ``resolved()`` writes the strategy actually used.
    * beam search: ``beam`` hypotheses, ranked by the sum of log-probabilities divided by the
      GNMT length penalty ((5 + length) / 6) ** ``length_penalty``; ``n_best`` of them come
      back (best first) as alternatives. ``beam`` 1 is exactly greedy.
    * sampling: ``temperature``, ``top_k`` (0: off), ``top_p`` (1: off), ``seed`` (None: a
      fresh random seed per call; a number: the same replies for the same inputs). ``top_k``
      1 is greedy. These four are ignored by greedy and beam search.
    * all strategies: ``no_repeat_ngram_size`` (0: off) never lets a reply repeat an n-gram
      of its own, ``repetition_penalty`` (CTRL, 1: off) makes tokens already in the reply
      less likely, ``min_length`` forbids the end token before that many tokens.
    * ``avoid_repeat``: in a session, ``ChatBot.reply`` takes the best of the n-best list
      that differs from the bot's previous reply (needs ``n_best`` > 1 to have a choice).
    * ``rerank``: the answers of up to this many training questions most like the input
      (at least ``rerank_min_similarity`` alike, 0..1) compete with the decoded reply; the
      one the model itself scores highest is the reply (0: off). Needs a bundle that stores
      its training pairs (``train.jsonl``); inputs with no close question are decoded only.
    """

    strategy: str = "greedy"
    max_length: int = 128  # tokens generated at most, end token included
    beam: int = 1
    n_best: int = 1
    length_penalty: float = 0.6  # GNMT alpha; 0: rank beams by the plain sum of log-probs
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    min_length: int = 0  # tokens before the end token, at least
    avoid_repeat: bool = False
    rerank: int = 0
    rerank_min_similarity: float = 0.6

    def validate(self, prefix: str) -> None:
        _check(self.strategy in DECODING_STRATEGIES, prefix, "strategy",
               f"must be one of {DECODING_STRATEGIES}")
        _check(self.max_length >= 1, prefix, "max_length", "must be >= 1")
        _check(1 <= self.beam <= 64, prefix, "beam", "must be between 1 and 64")
        _check(not (self.strategy == "sample" and self.beam > 1), prefix, "beam",
               "must be 1 when strategy is 'sample'")
        _check(1 <= self.n_best <= self.beam, prefix, "n_best", f"must be between 1 and beam ({self.beam})")
        _check(0.0 <= self.length_penalty <= 10.0, prefix, "length_penalty", "must be between 0 and 10")
        _check(self.temperature > 0, prefix, "temperature", "must be > 0")
        _check(self.top_k >= 0, prefix, "top_k", "must be >= 0 (0 disables it)")
        _check(0.0 < self.top_p <= 1.0, prefix, "top_p", "must be in (0, 1]")
        _check(self.seed is None or 0 <= self.seed < 2 ** 31, prefix, "seed", "must be in [0, 2**31)")
        _check(self.no_repeat_ngram_size >= 0, prefix, "no_repeat_ngram_size", "must be >= 0 (0 disables it)")
        _check(self.repetition_penalty >= 1.0, prefix, "repetition_penalty", "must be >= 1.0 (1 disables it)")
        _check(0 <= self.min_length < self.max_length, prefix, "min_length",
               f"must be >= 0 and below max_length ({self.max_length})")
        _check(0 <= self.rerank <= 100, prefix, "rerank", "must be between 0 (off) and 100")
        _check(0.0 <= self.rerank_min_similarity <= 1.0, prefix, "rerank_min_similarity", "must be in [0, 1]")

    @property
    def effective_strategy(self) -> str:
        if self.strategy == "sample":
            return "sample"
        return "beam" if self.strategy == "beam" or self.beam > 1 else "greedy"

    def resolved(self) -> "DecodingConfig":
        """A copy whose ``strategy`` is the one used (beam > 1 makes "greedy" a beam search)."""
        return dataclasses.replace(self, strategy=self.effective_strategy)

    def with_overrides(self, overrides: "DecodingConfig | dict[str, Any] | None" = None,
                       max_length: int | None = None, prefix: str = "decoding") -> "DecodingConfig":
        """This config with per-call overrides: a whole ``DecodingConfig`` or a dict of some of
        its fields (type-checked like a config file); validated, strategy resolved."""
        if overrides is None:
            config = self
        elif isinstance(overrides, DecodingConfig):
            config = overrides
        elif isinstance(overrides, dict):
            config = _build(DecodingConfig, {**dataclasses.asdict(self), **overrides}, prefix)
        else:
            raise ConfigError(f"'{prefix}' must be a DecodingConfig or a dict, got {type(overrides).__name__}")
        if max_length is not None:
            config = dataclasses.replace(config, max_length=_coerce(max_length, int, f"{prefix}.max_length"))
        config.validate(prefix)
        return config.resolved()


@dataclass
class DialogueConfig:
    """How the dialogue manager uses the model inside a conversation."""

    # Replies whose score (mean log-probability per token) is under this are replaced by
    # ``fallback_text`` and recorded as fallbacks.
    fallback_threshold: float = -5.0
    # ... and so are replies whose confidence (``Generation.confidence``, 0..1) is under this.
    min_confidence: float = 0.0
    fallback_text: str = "I'm not sure I understand. Could you rephrase that?"

    def with_overrides(self, overrides: "DialogueConfig | dict[str, Any] | None" = None,
                       prefix: str = "dialogue") -> "DialogueConfig":
        """This config with some fields replaced (a whole config or a dict), validated."""
        if overrides is None:
            config = self
        elif isinstance(overrides, DialogueConfig):
            config = overrides
        elif isinstance(overrides, dict):
            config = _build(DialogueConfig, {**dataclasses.asdict(self), **overrides}, prefix)
        else:
            raise ConfigError(f"'{prefix}' must be a DialogueConfig or a dict, got {type(overrides).__name__}")
        config.validate(prefix)
        return config

    def validate(self, prefix: str) -> None:
        _check(0.0 <= self.min_confidence <= 1.0, prefix, "min_confidence", "must be in [0, 1]")
        _check(self.fallback_threshold <= 0, prefix, "fallback_threshold",
               "must be <= 0 (scores are mean log-probabilities)")
        _check(bool(self.fallback_text.strip()), prefix, "fallback_text", "must not be empty")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    dialogue: DialogueConfig = field(default_factory=DialogueConfig)

    def validate(self) -> "Config":
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate(f.name)
        return self

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        return _build(cls, data, "").validate()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        """Read a JSON or TOML file (by extension); keys left out keep their defaults."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
        try:
            if path.suffix.lower() == ".toml":
                data = tomllib.loads(raw.decode("utf-8-sig"))
            else:
                data = json.loads(raw.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: not a valid {path.suffix.lstrip('.') or 'JSON'} file ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the config must be a table/object at the top level")
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def with_overrides(self, overrides: dict[str, Any]) -> "Config":
        """A copy with dotted keys replaced, e.g. ``{"training.epochs": 3}``."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            if section not in data or not key:
                raise ConfigError(f"unknown config key '{dotted}'")
            data[section][key] = value
        return Config.from_dict(data)


def _check(ok: bool, prefix: str, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"invalid value for '{prefix}.{key}': {why}")


def _build(cls, data: Any, prefix: str):
    """Instantiate dataclass ``cls`` from a dict, type-checking every key."""
    where = prefix or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"'{where}' must be a table/object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            dotted = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown config key '{dotted}' (known: {', '.join(sorted(known))})")
    values = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        expected = hints[key]
        if dataclasses.is_dataclass(expected):
            values[key] = _build(expected, value, dotted)
        else:
            values[key] = _coerce(value, expected, dotted)
    return cls(**values)


def _coerce(value: Any, expected: Any, dotted: str) -> Any:
    args = typing.get_args(expected)
    if type(None) in args:  # an optional setting, e.g. ``int | None``
        if value is None:
            return None
        expected = next(a for a in args if a is not type(None))
    # bool is a subclass of int: refuse True where a number is expected and 1 where a flag is.
    if expected is bool:
        if isinstance(value, bool):
            return value
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif expected is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"invalid value for '{dotted}': expected {getattr(expected, '__name__', expected)}, "
                      f"got {value!r}")
