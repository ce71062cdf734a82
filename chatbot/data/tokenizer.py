"""One tokenizer interface over character, word and subword (BPE) vocabularies.

All three are built with Hugging Face ``tokenizers``. Spaces are kept as the ``▁`` marker
(the SentencePiece "Metaspace" convention), so decoding gives back the exact text, spacing
and punctuation included, rather than "Hello , world !"; only that marker itself, typed as
text (a block-graphics character), comes back as a space.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from chatbot.config import TOKENIZER_LEVELS
from chatbot.data.corpus import loads_bounded
from chatbot.data.text import strip_special_marks, unicode_error
from chatbot.errors import InputError, TokenizerError

PAD, UNK, START, END, SEP = 0, 1, 2, 3, 4
# Retrieve and refine: each retrieved pair is [RET] [SIMn] question [ANS] answer, where SIMn
# says how alike its question is to the input (SIM_TOKENS[0]: least, [-1]: most).
RET, ANS = 5, 6
SIM_TOKENS = (7, 8, 9, 10)
SIM_EDGES = (0.7, 0.85, 0.95)  # similarity at or above edge i -> SIM_TOKENS[i + 1]
# Fewer texts than this are encoded one by one: for a reply's handful (the question and two
# retrieved pairs) the Rust thread pool of encode_batch costs 5x the work (0.15 vs 0.03 ms).
PARALLEL_BATCH = 32
ENCODE_CHUNK = 4096  # texts encoded together when scanning a corpus
# Special tokens are spelt with U+FDD0, a Unicode noncharacter that ``encode`` strips from
# input: a user typing "[END]" or "<sep>" must get plain text, never a control id.
_MARK = "\ufdd0"
BASE_SPECIAL_TOKENS = [f"{_MARK}pad", f"{_MARK}unk", f"{_MARK}start", f"{_MARK}end", f"{_MARK}sep"]
SPECIAL_TOKENS = BASE_SPECIAL_TOKENS + [f"{_MARK}ret", f"{_MARK}ans"] + [f"{_MARK}sim{i}" for i in range(4)]


def similarity_token(similarity: float) -> int:
    """The marker that tells the model how alike a retrieved question is (0..1)."""
    return SIM_TOKENS[sum(similarity >= edge for edge in SIM_EDGES)]


# Subword pieces: a run of spaces but its last one (indentation: "\n▁▁▁" before "▁if"), a
# word with the space before it, or a line break. Splitting at every space instead made each
# space of an indentation its own token: the corpus' code answers took 111 tokens on average
# instead of 89 (bench/README.md), and a decoder had to count the spaces it had emitted to
# copy a line. BPE merges the common runs and spells any other from single spaces. The word
# level keeps one token per space: a run length it never saw would be unknown.
_PIECES = Regex("▁+(?=▁)|▁?[^▁\n]+|\n")


def _pre_tokenizer(level: str):
    spaces = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=level != "subword")
    newlines = pre_tokenizers.Split(Regex("\n"), behavior="isolated")
    if level == "char":
        return pre_tokenizers.Sequence([spaces, pre_tokenizers.Split(Regex("."), behavior="isolated"),
                                        newlines])
    if level == "word":
        return pre_tokenizers.Sequence([spaces, newlines, pre_tokenizers.Punctuation("isolated")])
    return pre_tokenizers.Sequence([spaces, pre_tokenizers.Split(_PIECES, behavior="isolated")])


def _check_ids(backend: Tokenizer) -> None:
    """Token ids must be exactly 0..n-1: the model has one embedding and one output row per id,
    so an id outside that range (or a gap) would only fail while decoding a reply."""
    ids = sorted(backend.get_vocab(with_added_tokens=True).values())
    size = backend.get_vocab_size(with_added_tokens=True)
    if ids == list(range(size)):
        return
    outside = [i for i in ids if not 0 <= i < size]
    if outside:
        why = f"token id {max(outside, key=abs):,} is outside the vocabulary (0 to {size - 1:,})"
    else:
        missing = next(n for n in range(size) if n >= len(ids) or ids[n] != n)
        why = f"token id {missing:,} is missing or another id repeats (ids must be 0 to {size - 1:,}, each once)"
    raise TokenizerError(f"invalid tokenizer file: {why}")


def _unencodable(texts) -> InputError:
    """Why the backend refused these texts, as a typed error."""
    for text in texts:
        if not isinstance(text, str):
            return InputError(f"text to encode must be a string, not {type(text).__name__}")
        if (error := unicode_error(text, "text")) is not None:
            return error
    return InputError("text cannot be encoded")


def _joined(parts: list[list[int]], max_tokens: int) -> list[int]:
    """Turns' ids joined by [SEP], the last ``max_tokens`` kept."""
    ids: list[int] = []
    for i, part in enumerate(parts):
        if i:
            ids.append(SEP)
        ids.extend(part)
    return ids[-max_tokens:] if len(ids) > max_tokens else ids


class TextTokenizer:
    """Text <-> token ids. Ids 0-4 are always pad, unknown, start, end, turn separator."""

    def __init__(self, backend: Tokenizer, level: str):
        self.backend = backend
        self.level = level
        for token_id, token in enumerate(BASE_SPECIAL_TOKENS):
            if backend.token_to_id(token) != token_id:
                raise TokenizerError(f"tokenizer: special token {token} must have id {token_id}")
        # Tokenizers fitted before retrieve and refine lack the retrieval markers.
        self.reads_retrieval = all(backend.token_to_id(t) == i for i, t in enumerate(SPECIAL_TOKENS))

    @classmethod
    def fit(cls, texts: Iterable[str], level: str = "subword", vocab_size: int = 2000,
            min_frequency: int = 1) -> "TextTokenizer":
        if level == "subword":
            backend = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS[UNK]))
            trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                          special_tokens=SPECIAL_TOKENS, show_progress=False)
        elif level in ("word", "char"):
            backend = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS[UNK]))
            trainer = trainers.WordLevelTrainer(
                vocab_size=vocab_size if level == "word" else 1_000_000,
                min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS, show_progress=False)
        else:
            raise TokenizerError(f"unknown tokenizer level '{level}' (expected char, word or subword)")
        backend.pre_tokenizer = _pre_tokenizer(level)
        backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
        texts = iter(texts)  # streamed to the trainer: a big corpus is never held as one list here
        first = next(texts, None)
        if first is None:
            raise TokenizerError("cannot fit a tokenizer on no text")
        backend.train_from_iterator(itertools.chain([first], texts), trainer=trainer)
        return cls(backend, level)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    # --- text -> ids ---------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        try:
            return self.backend.encode(strip_special_marks(text), add_special_tokens=False).ids
        except (TypeError, AttributeError, UnicodeEncodeError):
            raise _unencodable([text]) from None

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text; ``InputError`` for a non-string or a lone surrogate
        (text that has no UTF-8 form, which the Rust backend cannot take)."""
        try:
            texts = [strip_special_marks(t) for t in texts]
            if len(texts) < PARALLEL_BATCH:  # a reply's few texts: the thread pool costs more than it saves
                return [self.backend.encode(t, add_special_tokens=False).ids for t in texts]
            return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]
        except (TypeError, AttributeError, UnicodeEncodeError):
            raise _unencodable(texts) from None

    def encode_input(self, turns: Sequence[str], max_tokens: int,
                     retrieved: Sequence[tuple[str, str, float]] = (), max_answer_tokens: int = 512) -> list[int]:
        """Context turns then the question, joined by [SEP]; keep the last ``max_tokens``.

        Keeping the tail means an over-long input loses its oldest context first and the
        question's own end last, which is what a reply depends on most.

        ``retrieved`` (question, answer, similarity) pairs, best first, come before it, the
        best one last, nearest the question: ``[RET] [SIMn] question [ANS] answer ... [SEP]
        turns``. Each retrieved question keeps its first ``max_tokens``, each answer its first
        ``max_answer_tokens``.
        """
        ids = _joined(self.encode_batch(turns), max_tokens)
        if not retrieved:
            return ids
        if not self.reads_retrieval:
            raise TokenizerError("this tokenizer has no retrieval markers (fitted before retrieve and refine)")
        shown: list[int] = []
        texts = self.encode_batch([text for q, a, _ in retrieved for text in (q, a)])
        for rank in reversed(range(len(retrieved))):
            question, answer = texts[2 * rank], texts[2 * rank + 1]
            shown += [RET, similarity_token(retrieved[rank][2]), *question[:max_tokens], ANS,
                      *answer[:max_answer_tokens]]
        return shown + [SEP] + ids

    def encode_inputs(self, inputs: Sequence[Sequence[str]], max_tokens: int) -> list[list[int]]:
        """``encode_input`` of many inputs, none with retrieved pairs, their texts encoded in
        one batch (the backend's threads encode a corpus 1.5x faster than one text at a time)."""
        parts = iter(self.encode_batch([text for turns in inputs for text in turns]))
        return [_joined([next(parts) for _ in turns], max_tokens) for turns in inputs]

    def encode_target(self, text: str, max_tokens: int) -> list[int]:
        """Answer ids ending in [END]; an over-long answer is cut to fit ``max_tokens``."""
        return self.encode_targets([text], max_tokens)[0]

    def encode_targets(self, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
        return [ids[: max_tokens - 1] + [END] for ids in self.encode_batch(texts)]

    def unknown_rate(self, texts: Iterable[str]) -> float:
        """Share of unknown tokens in ``texts``, encoded a chunk at a time: the backend's
        encodings of a whole big corpus at once would take gigabytes."""
        total = unknown = 0
        texts = iter(texts)
        while chunk := list(itertools.islice(texts, ENCODE_CHUNK)):
            for ids in self.encode_batch(chunk):
                total += len(ids)
                unknown += ids.count(UNK)
        return unknown / total if total else 0.0

    # --- ids -> text ---------------------------------------------------------------------
    def decode(self, ids: Iterable[int]) -> str:
        """Readable text of a generated sequence: stops at [END], drops special tokens."""
        kept = []
        for i in ids:
            i = int(i)
            if i == END:
                break
            if i > SEP:
                kept.append(i)
        return self.backend.decode(kept, skip_special_tokens=True)

    # --- persistence ---------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({"level": self.level, "tokenizer": json.loads(self.backend.to_str())},
                          ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "TextTokenizer":
        """A saved tokenizer, checked whole: bounded nesting, a known level, and token ids that
        run from 0 to vocab_size - 1 (the model's output rows), so that a damaged or hostile file
        fails here, as a ``TokenizerError``, and never later inside a reply."""
        try:
            data = loads_bounded(text)
        except ValueError as exc:  # bad JSON, nested too deeply, a number too long
            raise TokenizerError(f"invalid tokenizer file ({exc})") from None
        if not isinstance(data, dict) or data.get("level") not in TOKENIZER_LEVELS:
            raise TokenizerError(f"invalid tokenizer file (expected an object with 'level' one of "
                                 f"{', '.join(TOKENIZER_LEVELS)} and 'tokenizer')")
        try:
            backend = Tokenizer.from_str(json.dumps(data["tokenizer"]))
        except Exception as exc:  # KeyError, TypeError, and tokenizers raises plain Exception
            raise TokenizerError(f"invalid tokenizer file ({exc})") from None
        _check_ids(backend)
        return cls(backend, data["level"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "TextTokenizer":
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenizerError(f"{path}: cannot read tokenizer ({exc})") from None
        return cls.from_json(text)
