"""One configuration tree for everything that shapes a model, serialised inside its bundle.

Every field is declared once with ``setting(default, help, min=..., max=..., choices=...)``:
its help text and bounds live in the field's metadata, and validation, the CLI's decoding
flags and the REPL's ``/set`` are all generated from it, so they cannot drift apart. Each
section writes by hand only the rules that tie two fields together.

Reading is strict on purpose: a misspelt key silently falling back to a default would train
a different model from the one the user asked for, so unknown keys and bad values raise
``ConfigError`` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatbot.errors import ConfigError

TOKENIZER_LEVELS = ("char", "word", "subword")
CELLS = ("lstm", "gru", "transformer")
RETRIEVERS = ("lexical", "hybrid")
ATTENTIONS = ("none", "dot", "additive")
DECODING_STRATEGIES = ("greedy", "beam", "sample")
MONITORS = ("val_loss", "loss")
SPLITS = ("pairs", "dialogues")
DISTRIBUTE = ("none", "mirrored", "multi-worker")
LR_SCHEDULES = ("plateau", "cosine")
MAX_TOKENS = 10_000  # any length in tokens: a model that never ends would otherwise run for ages
MAX_SEED = 2 ** 31 - 1  # seeds reach TensorFlow as int32


def setting(default: Any, help: str, *, min: float | None = None, max: float | None = None,
            above: float | None = None, below: float | None = None,
            choices: tuple[str, ...] | None = None) -> Any:
    """A config field with its help text and bounds in one declaration. ``min``/``max`` are
    inclusive bounds, ``above``/``below`` exclusive ones (e.g. a probability in (0, 1])."""
    bounds = {"min": min, "max": max, "above": above, "below": below, "choices": choices}
    return field(default=default, metadata={"help": help, **{k: v for k, v in bounds.items() if v is not None}})


@dataclass(frozen=True)
class Spec:
    """One setting as declared: its name, type and the metadata given to ``setting``."""

    name: str
    hint: Any  # the annotation, e.g. int or ``int | None``
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    above: float | None = None
    below: float | None = None
    choices: tuple[str, ...] | None = None

    @property
    def optional(self) -> bool:
        """None is a valid value (e.g. ``decoding.seed``: a fresh seed per call)."""
        return type(None) in typing.get_args(self.hint)

    @property
    def type(self) -> type:
        """bool, int, float or str."""
        return next((a for a in typing.get_args(self.hint) if a is not type(None)), self.hint)

    @property
    def bounds(self) -> str | None:
        """What a valid value is, in words: "between 1 and 64", "> 0 and <= 100", ..."""
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        if self.min is not None and self.max is not None:
            return f"between {self.min} and {self.max}"
        low = f">= {self.min}" if self.min is not None else f"> {self.above}" if self.above is not None else None
        high = f"<= {self.max}" if self.max is not None else f"< {self.below}" if self.below is not None else None
        return " and ".join(part for part in (low, high) if part) or None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` (already of the right type) is refused, or None."""
        if value is None:
            return None
        if self.choices:
            return None if value in self.choices else f"must be {self.bounds}"
        if self.type is str:
            return None if value.strip() else "must not be blank"
        if self.type is bool:
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        inside = ((self.min is None or value >= self.min) and (self.max is None or value <= self.max)
                  and (self.above is None or value > self.above) and (self.below is None or value < self.below))
        return None if inside else f"must be {self.bounds}"


@functools.cache
def specs(cls: type) -> tuple[Spec, ...]:
    """The settings of a config section, in declaration order."""
    hints = typing.get_type_hints(cls)
    return tuple(Spec(f.name, hints[f.name], f.default, **f.metadata) for f in dataclasses.fields(cls))


class Section:
    """A config section: each field is checked against its own metadata; ``check_combinations``
    adds the rules that involve several fields."""

    def validate(self, prefix: str) -> None:
        for spec in specs(type(self)):
            value = getattr(self, spec.name)
            dotted = f"{prefix}.{spec.name}"
            _coerce(value, spec.hint, dotted)  # also built directly or by dataclasses.replace
            why = spec.problem(value)
            if why:
                raise ConfigError(f"invalid value for '{dotted}': {why}, got {value!r}")
        self.check_combinations(prefix)

    def check_combinations(self, prefix: str) -> None:
        """Rules between fields; none unless a section says otherwise."""

    def with_overrides(self, overrides=None, prefix: str = ""):
        """This section with some fields replaced: a whole section of the same type or a dict of
        some of its fields (type-checked like a config file); validated."""
        cls = type(self)
        if overrides is None:
            config = self
        elif isinstance(overrides, cls):
            config = overrides
        elif isinstance(overrides, dict):
            config = _build(cls, {**dataclasses.asdict(self), **overrides}, prefix)
        else:
            raise ConfigError(f"'{prefix}' must be a {cls.__name__} or a dict, got {type(overrides).__name__}")
        config.validate(prefix)
        return config


MAX_CONFIG_BYTES = 2**20


@dataclass
class DataConfig(Section):
    """How corpus dialogues become (context + question -> answer) examples."""

    context_turns: int = setting(0, "previous turns prepended to the question, joined by [SEP]", min=0, max=100)
    max_input_tokens: int = setting(64, "longer inputs keep their last tokens (the question)", min=1, max=MAX_TOKENS)
    max_output_tokens: int = setting(128, "longer answers are cut here for training", min=1, max=MAX_TOKENS)
    # A chatbot's job is to answer its corpus' questions, and a held-out question's answer is
    # mostly one no training pair has (62 of 66 held out from corpora/spanish): held out by
    # default, a tenth of a user's questions went unanswered. Robustness is measured on reworded
    # and mistyped questions instead (bench/robustness.py).
    validation_fraction: float = setting(0.0, "share of the pairs held out to validate on (e.g. 0.1 to "
                                              "measure answers to questions never seen)", min=0, below=1)
    deduplicate: bool = setting(True, "drop repeated (context, question, answer) examples")
    shuffle_window: int = setting(
        65_536, "training inputs are shuffled within windows of this many: a bigger training set is "
                "streamed from its token cache on disk a window at a time, so memory stays flat "
                "whatever the corpus' size; a smaller one is held in memory and shuffled whole",
        min=1, max=100_000_000)
    split_by: str = setting(
        "pairs", "what validation_fraction holds out: random 'pairs', or whole 'dialogues' (conversations "
                 "never seen in training: the honest test of a model that reads context)", choices=SPLITS)
    retrieved_pairs: int = setting(
        2, "retrieve and refine: the encoder also reads this many training pairs whose questions are "
           "most like the input, and learns to copy or ignore them (0: off)", min=0, max=8)
    retriever: str = setting(
        "hybrid", "how retrieval finds training questions like the input: 'lexical' (edit distance: "
                  "typos, reordered words) or 'hybrid' (also sentence embeddings: rewordings, synonyms)",
        choices=RETRIEVERS)
    max_retrieved_answer_tokens: int = setting(512, "a retrieved answer longer than this is cut",
                                               min=1, max=MAX_TOKENS)
    # The defaults of retrieve and refine, and the training's batch, rate and decay, are the
    # default model's recipe (models/default.toml, chosen on the dev halves of bench/data): with
    # the earlier ones (2 copies, a quarter leaving their own pair out, no substitutions, batch
    # 32 at 0.002), a model of corpora/spanish answered 17 of 30 reworded questions, against 25
    # with these (greedy too; the same weights, to the bit, as with models/default.toml).
    noisy_copies: int = setting(
        3, "noisy variants (typos, dropped/doubled/swapped words, chat spellings) of each training "
           "question, trained with what retrieval finds for them, so the model learns what users type",
        min=0, max=20)
    substitute_words: bool = setting(
        True, "noisy variants may also replace a word of the question with another word of the "
               "training questions, standing in for a synonym, so the model learns to copy a retrieved "
               "answer whose question differs by a word")
    leave_out_own: float = setting(
        0.01, "share of training examples whose own pair is left out of what they are shown, so the "
              "model also learns to answer when retrieval found nothing useful", min=0, max=1)
    spelling: bool = setting(
        True, "correct words neither the corpus nor a general English word list knows to the nearest "
              "corpus word (1 edit, 2 for words of 7+ letters) before retrieval and the model read them, "
              "in training and at reply time alike")


@dataclass
class TokenizerConfig(Section):
    level: str = setting("subword", "what a token is", choices=TOKENIZER_LEVELS)
    vocab_size: int = setting(2000, "upper bound for word and subword vocabularies", min=10, max=1_000_000)
    min_frequency: int = setting(1, "tokens seen fewer times are left out of the vocabulary",
                                 min=1, max=1_000_000)


@dataclass
class ModelConfig(Section):
    cell: str = setting("gru", "recurrent cell of encoder and decoder, or 'transformer' (self-attention "
                               "layers: chatbot/model/transformer.py)", choices=CELLS)
    embedding_dim: int = setting(128, "size of the token embeddings (ignored by a transformer: its "
                                      "embeddings are units wide)", min=1, max=16_384)
    units: int = setting(256, "units per recurrent layer; a transformer's model width", min=1, max=16_384)
    layers: int = setting(1, "recurrent layers in encoder and decoder; a transformer's encoder layers and "
                             "as many decoder layers", min=1, max=8)
    dropout: float = setting(0.0, "dropout between layers while training", min=0, below=1)
    bidirectional: bool = setting(False, "the encoder also reads the input backwards (recurrent cells; a "
                                         "transformer's encoder always reads both ways)")
    attention: str = setting("dot", "how the decoder looks at the encoded input (recurrent cells; a "
                                    "transformer always attends: ignored)", choices=ATTENTIONS)
    copy_attention: bool = setting(
        True, "pointer-generator copying (See et al. 2017): a learned switch mixes the vocabulary "
              "distribution with the attention over the input's tokens, so long retrieved answers "
              "come out exact; needs attention (a transformer has a pointer attention of its own)")
    copy_continuation: bool = setting(
        True, "with copying (and dot attention, for recurrent cells): the pointer favours the "
              "retrieved-answer token that follows the last tokens emitted (2 for recurrent cells, "
              "16 for a transformer, which can also copy an answer's end), so a copy runs on "
              "without jumping or garbling")
    heads: int = setting(4, "transformer: attention heads per layer (must divide units)", min=1, max=256)
    feed_forward: int = setting(0, "transformer: width of each layer's feed-forward block (0: 4 x units)",
                                min=0, max=65_536)

    def summary(self) -> str:
        """One line for people: "GRU 256 x1, attention dot with copying" (training, models show)."""
        shape = f"{self.heads} heads" if self.cell == "transformer" else f"attention {self.attention}"
        return f"{self.cell.upper()} {self.units} x{self.layers}, {shape}{' with copying' if self.copy_attention else ''}"

    def check_combinations(self, prefix: str) -> None:
        if self.cell == "transformer":
            _check(self.units % self.heads == 0, prefix, "heads",
                   f"must divide units ({self.units}) for a transformer, got {self.heads}")
            return
        _check(not (self.copy_attention and self.attention == "none"), prefix, "copy_attention",
               "needs attention ('dot' or 'additive'); with model.attention 'none' set model.copy_attention false")


@dataclass
class TrainingConfig(Section):
    # Early stopping rarely ends a training on the training loss, which still edges down long
    # after the replies are learnt: with the default recipe, corpora/spanish (684 pairs) ran all of
    # 100 epochs (37 min) and answered one reworded question fewer than after 26 (8 min, all its
    # training questions); 26 also taught 20 pairs (tests/data) and the English corpus (1,176)
    # every answer. A bigger corpus takes more steps per epoch.
    epochs: int = setting(26, "passes over the training data at most", min=1, max=100_000)
    batch_size: int = setting(64, "examples per training step", min=1, max=65_536)
    # A step's memory grows with the decoder positions times what each reads: the vocabulary
    # distribution and the attention over the source. Batches of long examples are cut to this
    # many such cells: on the default recipe, a batch of 52 x 250 x (625 + 2000) peaked at 2.9 GB
    # and a budget of 12M at 1.9 GB, epochs as fast (bench/README.md, train_speed.py).
    max_batch_cells: int = setting(12_000_000, "a batch holds at most this many decoder positions x (source "
                                               "tokens + vocabulary) cells; long examples get smaller batches "
                                               "(0: no limit)", min=0, max=10 ** 12)
    learning_rate: float = setting(0.003, "Adam's learning rate", above=0, max=10)
    clipnorm: float = setting(1.0, "gradient norm clipping, of each weight's gradient on its own "
                                   "(Keras' clipnorm; 0: off)", min=0, max=1_000)
    # Polyak averaging: the weights kept are an exponential moving average of the weights after
    # each step, which smooths out where the last steps happened to leave them.
    ema_momentum: float = setting(0.0, "keep and save a moving average of the weights, updated each step "
                                       "with this momentum (0: off; e.g. 0.998)", min=0, below=1)
    early_stopping: bool = setting(True, "stop when the monitored loss stops improving")
    # Question/answer corpora hold one or a few answers per question, and a chatbot must give
    # them back exactly: by default keep the weights with the lowest *training* loss.
    monitor: str = setting("loss", "the loss that picks the weights kept (val_loss for corpora whose unseen "
                                   "inputs should be generalised to, e.g. translation)", choices=MONITORS)
    patience: int = setting(8, "epochs without progress before early stopping", min=0, max=100_000)
    lr_decay_patience: int = setting(2, "halve the learning rate after this many epochs without progress "
                                        "(0: never; lr_schedule 'plateau' only)", min=0, max=100_000)
    # Under the plateau rule the loss of both cells' recipes rose for a few epochs once it was
    # small (the rule halves the rate only afterwards); a cosine lowers the rate before, and the
    # default recipe's GRU reached 0.99 two epochs sooner (bench/README.md, train_speed.py).
    lr_schedule: str = setting("plateau", "how the learning rate changes: 'plateau' (halved after "
                                          "lr_decay_patience epochs without progress) or 'cosine' (from "
                                          "learning_rate down to a hundredth of it over the epochs)",
                               choices=LR_SCHEDULES)
    seed: int = setting(1234, "seed for weights, shuffling and the validation split", min=0, max=MAX_SEED)
    checkpoint_every_steps: int = setting(0, "also checkpoint every this many steps (0: at each epoch end only)",
                                          min=0, max=10 ** 9)
    # An epoch of a big corpus takes hours on a CPU (4M pairs: about 17 h at the default recipe's
    # 65 pairs/s on 2 cores, bench/results/train_speed.json); a kill must not cost more than a few minutes
    # of it. One save of the default model takes about 60 ms.
    checkpoint_every_minutes: float = setting(
        10.0, "also checkpoint within an epoch once this many minutes passed since the last checkpoint "
              "(0: never by time; one machine: multi-worker trainings checkpoint by steps)", min=0, max=10 ** 6)
    distribute: str = setting(
        "none", "tf.distribute strategy: 'mirrored' (every local device) or 'multi-worker' (processes "
                "and machines named by TF_CONFIG); batch_size is the global batch", choices=DISTRIBUTE)


@dataclass
class DecodingConfig(Section):
    """How replies are generated. Every numeric setting reaches the compiled loops as a scalar
    tensor, so changing one (per call, or with ``/set``) never retraces them.

    A "greedy" config with ``beam`` > 1 is beam search (``resolved()`` writes the strategy
    actually used); ``beam`` 1 is exactly greedy, and so is sampling with ``top_k`` 1. Beams are
    ranked by the sum of log-probabilities divided by the GNMT length penalty
    ((5 + length) / 6) ** ``length_penalty``. The sampling settings are ignored by greedy and
    beam search.
    """

    strategy: str = setting("greedy", "greedy, beam or sample", choices=DECODING_STRATEGIES)
    max_length: int = setting(128, "tokens generated at most per reply", min=1, max=MAX_TOKENS)
    beam: int = setting(1, "beam search width (1: greedy)", min=1, max=64)
    n_best: int = setting(1, "hypotheses returned from the beam, best first (<= beam)", min=1, max=64)
    length_penalty: float = setting(0.6, "GNMT alpha ranking beams by length (0: plain sum of log-probs)",
                                    min=0, max=10)
    temperature: float = setting(1.0, "sampling temperature", above=0, max=100)
    top_k: int = setting(0, "sample from the k most likely tokens (0: all)", min=0, max=1_000_000)
    top_p: float = setting(1.0, "nucleus sampling: the smallest set of tokens with this much "
                                "probability (1: all)", above=0, max=1)
    seed: int | None = setting(None, "sampling seed: the same replies for the same inputs "
                                     "(none: a fresh seed per call)", min=0, max=MAX_SEED)
    no_repeat_ngram_size: int = setting(0, "never repeat an n-gram of this size within a reply (0: off)",
                                        min=0, max=MAX_TOKENS)
    repetition_penalty: float = setting(1.0, "CTRL penalty on tokens already in the reply (1: off)",
                                        min=1, max=100)
    min_length: int = setting(0, "tokens before the end of a reply, at least", min=0, max=MAX_TOKENS)
    avoid_repeat: bool = setting(False, "in a session, do not repeat the previous reply (takes the best "
                                        "different one of the n-best list)")
    retrieval: bool = setting(True, "show the model the training pairs most like the input (models trained "
                                    "with data.retrieved_pairs > 0); the reply is decoded either way")
    retrieved_bonus: float = setting(
        0.0, "beam search: a hypothesis that repeats a retrieved answer word for word ranks as if its "
             "score were higher by this times that pair's similarity (0: off); it ranks only what the "
             "decoder produced, and the reply keeps its own score", min=0, max=100)
    mmi_weight: float = setting(
        0.0, "beam search: maximum mutual information reranking (Li et al. 2016): each hypothesis' "
             "log-probability minus this times its log-probability with an empty input, so replies "
             "that fit any input ('i don't know') rank lower (0: off)", min=0, max=1)
    # A model shown retrieved pairs copies a shown answer confidently whether or not it fits the
    # question. How likely it finds the same reply from the question alone tells the two apart:
    # on the default model (w = 0.02, chosen on the dev halves), off-corpus questions still
    # answered at the chosen threshold fell from 48% to 30% on the test half (bench/unaided_weight.py).
    unaided_weight: float = setting(
        0.0, "confidence: also count how likely the model finds the reply given the input without the "
             "retrieved pairs, confidence = exp(score + this x that score) (0: off; models that read "
             "retrieval only)", min=0, max=10)

    def check_combinations(self, prefix: str) -> None:
        _check(not (self.strategy == "sample" and self.beam > 1), prefix, "beam",
               "must be 1 when strategy is 'sample'")
        _check(self.n_best <= self.beam, prefix, "n_best",
               f"must be between 1 and beam ({self.beam}): a longer n-best list needs a wider beam")
        _check(self.min_length < self.max_length, prefix, "min_length",
               f"must be below max_length ({self.max_length})")

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
        """This config with per-call overrides (``Section.with_overrides``) and an optional
        ``max_length``, validated together; strategy resolved."""
        if isinstance(overrides, dict) and overrides.get("strategy") in ("greedy", "sample"):
            # Asking for greedy decoding or sampling means one hypothesis: the model's own beam
            # width (beam search by default for some models) belongs to its beam search.
            overrides = {"beam": 1, "n_best": 1, **overrides}
        if max_length is not None:
            max_length = _coerce(max_length, int, f"{prefix}.max_length")
            if overrides is None or isinstance(overrides, dict):
                overrides = {**(overrides or {}), "max_length": max_length}
            elif isinstance(overrides, DecodingConfig):
                overrides = dataclasses.replace(overrides, max_length=max_length)
        return super().with_overrides(overrides, prefix).resolved()


@dataclass
class DialogueConfig(Section):
    """How the dialogue manager uses the model inside a conversation."""

    fallback_threshold: float = setting(
        -5.0, "replies whose score (mean log-probability per token) is under this are replaced by "
              "fallback_text and recorded as fallbacks", min=-1000, max=0)
    min_confidence: float = setting(0.0, "... and so are replies whose confidence (0..1) is under this",
                                    min=0, max=1)
    fallback_text: str = setting("I'm not sure I understand. Could you rephrase that?",
                                 "what the bot says when its reply is not good enough")
    max_message_chars: int = setting(
        20_000, "longer messages are refused before anything is stored (the model reads only the "
                "last data.max_input_tokens tokens of a message anyway)", min=1, max=100_000_000)

    def with_overrides(self, overrides: "DialogueConfig | dict[str, Any] | None" = None,
                       prefix: str = "dialogue") -> "DialogueConfig":
        return super().with_overrides(overrides, prefix)



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
            with open(path, "rb") as f:
                raw = f.read(MAX_CONFIG_BYTES + 1)  # --config /dev/zero must not read until memory runs out
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: a config file is at most {MAX_CONFIG_BYTES // 2**20} MiB; this one is larger")
        try:
            if path.suffix.lower() == ".toml":
                data = tomllib.loads(raw.decode("utf-8-sig"))
            else:
                data = json.loads(raw.decode("utf-8-sig"))
        except ValueError as exc:  # bad UTF-8, JSON or TOML, and an integer of thousands of digits
            kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
            other = "" if path.suffix.lower() in (".toml", ".json") else \
                f"; a config is JSON, or TOML named *.toml, and this one's name ends in '{path.suffix}'"
            raise ConfigError(f"{path}: not a valid {kind} file ({exc}){other}") from None
        except RecursionError:
            raise ConfigError(f"{path}: not a valid config file (nested too deeply)") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the config must be a table/object at the top level")
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def with_overrides(self, overrides: dict[str, Any]) -> "Config":
        """A copy with dotted keys replaced, e.g. ``{"training.epochs": 3}``."""
        return Config.from_dict(apply_dotted(self.to_dict(), overrides))


def apply_dotted(data: dict, overrides: dict[str, Any]) -> dict:
    """``data`` (a config as nested dicts) with dotted keys replaced, before validation, so an
    override can also repair a value that is no longer valid; the sections are copied."""
    data = {section: dict(values) if isinstance(values, dict) else values for section, values in data.items()}
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if not isinstance(data.get(section), dict) or not key:
            raise ConfigError(f"unknown config key '{dotted}'")
        data[section][key] = value
    return data


def _check(ok: bool, prefix: str, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"invalid value for '{prefix}.{key}': {why}")


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """A section's fields and their types, read once: ``get_type_hints`` evaluates every
    annotation, and a server resolves decoding settings on every request."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _build(cls, data: Any, prefix: str):
    """Instantiate dataclass ``cls`` from a dict, type-checking every key."""
    where = prefix or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"'{where}' must be a table/object, got {type(data).__name__}")
    hints = _type_hints(cls)
    known = hints.keys()
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
    elif expected in (int, float) and isinstance(value, int) and not isinstance(value, bool) \
            and not -2 ** 63 <= value < 2 ** 63:  # JSON numbers have no limit; a seed or float() does
        raise ConfigError(f"invalid value for '{dotted}': a number too large ({value.bit_length()} bits; at most 63)")
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
