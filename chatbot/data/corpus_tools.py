"""Corpus tools: statistics, validation and format conversion (``chatbot corpus ...``).

Everything goes through the readers in ``chatbot.data.corpus``, so what these tools count, flag
and convert is exactly what training would read. Library code: results are returned,
problems raised as typed errors; no TensorFlow is imported.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from array import array
from collections import Counter
from pathlib import Path

import numpy as np
import yaml

from chatbot.data.corpus import (
    CorpusReader,
    Dialogue,
    _read_file,
    corpus_files,
    load_corpus,
    read_back_unquoted,
)
from chatbot.data.text import characters_apart, match_key
from chatbot.errors import CorpusError, InputError
from chatbot.files import write_atomically

WORD = re.compile(r"\w+(?:['’]\w+)*")  # "don't" is one word; punctuation is not a word
PERCENTILES = (50, 90, 99)
COVERAGE_TOPS = (1000, 5000)
COVERAGE_PERCENTS = (90, 95, 99)
FORMATS = ("yaml", "tsv", "jsonl")
SUFFIX_FORMAT = {".yml": "yaml", ".yaml": "yaml", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl"}


# --- stats -----------------------------------------------------------------------------------
def corpus_stats(path: str | Path, conflict_examples: int = 3) -> dict:
    """Figures that tell whether a corpus is fit to train on: size, redundancy, ambiguity
    (questions with several answers), lengths (to choose ``max_length``) and vocabulary
    coverage (to choose the tokenizer's ``vocab_size``). Pairs are counted as training sees
    them with ``context_turns=0``, before deduplication.

    Streamed, so that a corpus of millions of pairs fits in memory: one pass over the dialogues
    keeps counts, length histograms and two 64-bit hashes per pair, never the pairs themselves;
    a second pass, only when some question has several answers, collects the texts of the few
    shown as examples. (Distinct pairs and questions are told apart by Python's 64-bit string
    hash: two different ones sharing a hash, about one chance in 10^8 at a million pairs,
    would count as one.)"""
    reader = CorpusReader(path)  # logs a warning per skipped entry, as training would
    tally = _Tally()
    for dialogue in reader:
        tally.add([u.text for u in dialogue.utterances])
    pairs, unique_pairs, duplicate_pairs, questions, conflicts = tally.pair_figures()
    alike = tally.alike_conflicts()
    ranked = [n for _, n in tally.words.most_common()]
    total = sum(ranked)
    return {
        "path": str(path),
        "files": len(reader.files),
        "dialogues": reader.dialogues,
        "skipped": [str(e) for e in reader.skipped],
        "pairs": pairs,
        "unique_pairs": unique_pairs,
        "duplicate_pairs": duplicate_pairs,
        "duplicate_copies": pairs - unique_pairs,
        "questions": questions,
        "conflicting_questions": len(conflicts),
        "alike_conflicting_groups": alike,
        "conflict_examples": _conflict_examples(path, conflicts[:conflict_examples]),
        "lengths": {side: {unit: _percentiles(tally.lengths[side, unit]) for unit in ("chars", "words")}
                    for side in ("question", "answer")},
        "vocabulary": len(ranked),
        "words": total,
        "singletons": sum(1 for n in ranked if n == 1),
        "coverage": {str(top): round(sum(ranked[:top]) / total, 4) if total else 0.0
                     for top in COVERAGE_TOPS},
        "words_for_coverage": {f"{p}%": _words_for(ranked, p) for p in COVERAGE_PERCENTS},
    }


class _Tally:
    """What ``corpus_stats`` counts in its one pass. Memory grows with the vocabulary, the
    number of distinct lengths and 16 bytes per pair (the pair's and the question's hash), not
    with the text: a million pairs take 16 MB here."""

    def __init__(self):
        self.pair_hashes = array("q")
        self.question_hashes = array("q")
        # The question as retrieval compares it (``match_key``), alone and with the answer.
        self.key_hashes, self.keyed_answers = array("q"), array("q")
        self.words: Counter[str] = Counter()  # lower-cased word -> occurrences
        # (side, unit) -> histogram: length -> how many questions (answers) have it
        self.lengths: dict[tuple[str, str], Counter[int]] = {
            (side, unit): Counter() for side in ("question", "answer") for unit in ("chars", "words")}

    def add(self, texts: list[str]) -> None:
        """One dialogue's utterances: each consecutive two are a question and its answer."""
        words = [len(self._count_words(text)) for text in texts]
        for i in range(len(texts) - 1):
            self.pair_hashes.append(hash((texts[i], texts[i + 1])))
            self.question_hashes.append(hash(texts[i]))
            key = match_key(texts[i])
            self.key_hashes.append(hash(key))
            self.keyed_answers.append(hash((key, texts[i + 1])))
            self.lengths["question", "chars"][len(texts[i])] += 1
            self.lengths["question", "words"][words[i]] += 1
            self.lengths["answer", "chars"][len(texts[i + 1])] += 1
            self.lengths["answer", "words"][words[i + 1]] += 1

    def _count_words(self, text: str) -> list[str]:
        """The utterance's words, counted into the vocabulary (each utterance once)."""
        found = WORD.findall(characters_apart(text))  # Chinese, Japanese, Thai: a character is a word
        self.words.update(map(str.lower, found))
        return found

    def pair_figures(self) -> tuple[int, int, int, int, list[tuple[int, int]]]:
        """(pairs, distinct pairs, pairs seen more than once, distinct questions, and the
        questions with more than one answer as (hash, distinct answers): most answers first,
        then in corpus order)."""
        pairs = np.frombuffer(self.pair_hashes, dtype=np.int64)
        questions = np.frombuffer(self.question_hashes, dtype=np.int64)
        _, first_of_pair, copies = np.unique(pairs, return_index=True, return_counts=True)
        distinct_questions, first_of_question = np.unique(questions, return_index=True)
        # Answers per question: its distinct pairs (np.unique sorts both by the question's hash).
        _, answers = np.unique(questions[first_of_pair], return_counts=True)
        several = answers > 1
        order = np.lexsort((first_of_question[several], -answers[several]))
        conflicts = [(int(h), int(n)) for h, n in zip(distinct_questions[several][order], answers[several][order])]
        return len(pairs), len(copies), int((copies > 1).sum()), len(distinct_questions), conflicts


    def alike_conflicts(self) -> int:
        """Groups of questions that differ, but only in case, punctuation or contractions (one
        ``match_key``), and have different answers: retrieval cannot tell them apart, so which
        answer the model is shown is chance."""
        keys = np.frombuffer(self.key_hashes, dtype=np.int64)

        def per_key(texts: array) -> np.ndarray:
            """How many distinct texts (hashes, one per pair) each key has, keys sorted."""
            _, first = np.unique(np.frombuffer(texts, dtype=np.int64), return_index=True)
            return np.unique(keys[first], return_counts=True)[1]

        # A question has one key, so its own hash tells distinct questions apart; an answer
        # can follow questions of several keys, so it is counted with its question's key.
        questions, answers = per_key(self.question_hashes), per_key(self.keyed_answers)
        return int(((questions > 1) & (answers > 1)).sum())


def _conflict_examples(path: str | Path, wanted: list[tuple[int, int]]) -> list[dict]:
    """The ``wanted`` questions, given as (hash, distinct answers), with their answers in corpus
    order: a second, quiet pass (the first reported the skipped entries), which stops as soon
    as every answer of them has been seen."""
    found: dict[int, tuple[str, dict[str, None]]] = {}
    missing = sum(n for _, n in wanted)
    keys = {key for key, _ in wanted}
    for dialogue in CorpusReader(path, quiet=True) if wanted else ():
        texts = [u.text for u in dialogue.utterances]
        for question, answer in zip(texts, texts[1:]):
            key = hash(question)
            if key in keys:
                answers = found.setdefault(key, (question, {}))[1]
                missing -= answer not in answers
                answers[answer] = None
        if not missing:
            break
    return [{"question": found[key][0], "answers": list(found[key][1])} for key, _ in wanted if key in found]


def _words_for(ranked: list[int], percent: int) -> int:
    """How many of the most frequent words cover ``percent`` % of all occurrences."""
    total, covered = sum(ranked), 0
    for n, count in enumerate(ranked, start=1):
        covered += count
        if covered * 100 >= percent * total:
            return n
    return len(ranked)


def _percentiles(histogram: Counter[int]) -> dict[str, int]:
    """Nearest-rank percentiles of the values a histogram (value -> how often) counts: always
    a value that occurs, easy to check by hand."""
    ordered = sorted(histogram.items())
    total = sum(histogram.values())
    out = {}
    for p in PERCENTILES:
        rank, seen = max(1, math.ceil(p / 100 * total)), 0  # the rank-th smallest value, from 1
        for value, count in ordered:
            seen += count
            if seen >= rank:
                out[f"p{p}"] = value
                break
    out["max"] = ordered[-1][0]
    return out


def format_stats(stats: dict) -> str:
    """The stats as a table for people (``--json`` gives the dict itself)."""
    n_skipped, columns = len(stats["skipped"]), ("p50", "p90", "p99", "max")
    tops = ", ".join(f"top {int(top):,} words {share:.1%}" for top, share in stats["coverage"].items())
    needed = ", ".join(f"{n:,} words cover {share}" for share, n in stats["words_for_coverage"].items())
    lines = [
        f"corpus       {stats['path']}: {stats['files']} file{'s' * (stats['files'] != 1)}, "
        f"{stats['dialogues']:,} dialogue{'s' * (stats['dialogues'] != 1)}, {n_skipped} malformed entr{'y' if n_skipped == 1 else 'ies'} skipped",
        f"pairs        {stats['pairs']:,} ({stats['unique_pairs']:,} unique; "
        f"{stats['duplicate_pairs']:,} repeated, {stats['duplicate_copies']:,} extra copies)",
        f"questions    {stats['questions']:,} distinct, "
        f"{stats['conflicting_questions']:,} with more than one answer; "
        f"{stats['alike_conflicting_groups']:,} group{'s' * (stats['alike_conflicting_groups'] != 1)} alike but for "
        "case, punctuation or contractions with different answers",
        f"vocabulary   {stats['vocabulary']:,} words (lower-cased), {stats['words']:,} occurrences, "
        f"{stats['singletons']:,} seen once",
        f"coverage     {tops}",
        f"             {needed}",
        "",
        f"{'length':<16}" + "".join(f"{key:>7}" for key in columns),
    ]
    for side in ("question", "answer"):
        for unit in ("chars", "words"):
            row = stats["lengths"][side][unit]
            lines.append(f"{side + ' ' + unit:<16}" + "".join(f"{row[key]:>7}" for key in columns))
    if stats["conflict_examples"]:
        lines += ["", "questions with the most answers:"]
        lines += [f"  {_short(c['question'])!r}: {len(c['answers'])} answers" for c in stats["conflict_examples"]]
    if n_skipped:
        lines += ["", "skipped (chatbot corpus validate lists them all):"]
        lines += [f"  {s}" for s in stats["skipped"][:5]] + ([f"  ... and {n_skipped - 5:,} more"] * (n_skipped > 5))
    return "\n".join(lines)


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# --- validate --------------------------------------------------------------------------------
def validate_corpus(path: str | Path) -> list[CorpusError]:
    """Every problem in a corpus, with file and line, in file order. Unlike ``load_corpus``
    (which stops at the first broken file) each file is read on its own, so one file that is
    not UTF-8 or not YAML is one problem and the other files are still checked."""
    root = Path(path)
    try:
        files = corpus_files(root)
    except CorpusError as exc:
        return [exc]
    problems: list[CorpusError] = []
    dialogues = 0
    for file in files:
        try:
            for item in _read_file(file, hashlib.sha256()):
                if isinstance(item, CorpusError):
                    problems.append(item)
                else:
                    dialogues += 1
        except OSError as exc:
            problems.append(CorpusError(file, None, f"cannot read file ({exc.strerror})"))
        except CorpusError as exc:  # the whole file is unusable
            problems.append(exc)
    if not dialogues:
        problems.append(CorpusError(root, None, "empty corpus: no question/answer pairs found"))
    return problems


# --- convert ---------------------------------------------------------------------------------
def convert_corpus(src: str | Path, dst: str | Path, format: str | None = None) -> dict:
    """Write the corpus at ``src`` (file or directory, any format) as one YAML, TSV or JSONL
    file, so that reading it back gives the same examples (TSV: the same pairs, since it has
    no multi-turn dialogues). Malformed entries are skipped as in training and listed in the
    result. The file is replaced atomically and never onto the source."""
    src, dst = Path(src), Path(dst)
    fmt = _output_format(dst, format)
    target = dst.resolve()
    if src.exists() and (target == src.resolve() or (src.is_dir() and src.resolve() in target.parents)):
        raise InputError(f"{dst}: would overwrite or add to the source corpus {src}; choose another path")
    corpus = load_corpus(src)
    text = {"yaml": _to_yaml, "tsv": _to_tsv, "jsonl": _to_jsonl}[fmt](corpus.dialogues)
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(dst, text)
    return {"path": str(dst), "format": fmt, "dialogues": len(corpus.dialogues),
            "pairs": sum(len(d.utterances) - 1 for d in corpus.dialogues),
            # TSV holds pairs: a longer conversation's later pairs lose their earlier turns
            # (what a model with data.context_turns > 0 reads); YAML and JSONL keep them.
            "context_lost": sum(1 for d in corpus.dialogues if len(d.utterances) > 2) if fmt == "tsv" else 0,
            "skipped": [str(e) for e in corpus.skipped]}


def _output_format(dst: Path, format: str | None) -> str:
    by_suffix = SUFFIX_FORMAT.get(dst.suffix.lower())
    fmt = format or by_suffix
    if fmt is None:
        raise InputError(f"{dst}: cannot tell the format from the suffix; use a suffix "
                         f"({', '.join(SUFFIX_FORMAT)}) or give the format ({', '.join(FORMATS)})")
    if fmt not in FORMATS:
        raise InputError(f"unknown corpus format {fmt!r} (expected one of {', '.join(FORMATS)})")
    if by_suffix and by_suffix != fmt:  # it would be read back with the wrong reader
        raise InputError(f"{dst}: the suffix '{dst.suffix}' means {by_suffix}, not {fmt}")
    return fmt


class _Dumper(yaml.SafeDumper):
    """Safe YAML with multi-line utterances (code samples) as readable ``|`` blocks."""


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def _to_yaml(dialogues: list[Dialogue]) -> str:
    """ChatterBot format. It has one category list per file: the dialogues' categories are all
    listed (JSONL keeps one per dialogue)."""
    categories = list(dict.fromkeys(d.category for d in dialogues if d.category))
    doc = {"categories": categories} if categories else {}
    doc["conversations"] = [[u.text for u in d.utterances] for d in dialogues]
    return yaml.dump(doc, Dumper=_Dumper, allow_unicode=True, sort_keys=False, width=1 << 30)


def _to_tsv(dialogues: list[Dialogue]) -> str:
    """One ``question<TAB>answer`` row per consecutive pair; refuses text TSV cannot hold."""
    rows = []
    for d in dialogues:
        for u in d.utterances:
            quoted = read_back_unquoted(u.text)  # a spreadsheet's quoting: read back without its quotes
            if "\n" in u.text or "\t" in u.text or quoted:
                file, _, line = u.source.rpartition(":")
                kind = "a line break" if "\n" in u.text else "a tab" if "\t" in u.text else "a spreadsheet's quoting"
                raise CorpusError(file, int(line) if line.isdigit() else None,
                                  f"utterance holds {kind}, which TSV cannot hold; convert to YAML or JSONL")
        rows += [f"{q.text}\t{a.text}\n" for q, a in zip(d.utterances, d.utterances[1:])]
    return "".join(rows)


def _to_jsonl(dialogues: list[Dialogue]) -> str:
    """A pair as ``{"question", "answer"}``, a longer dialogue as ``{"turns": [...]}``."""
    lines = []
    for d in dialogues:
        texts = [u.text for u in d.utterances]
        obj = {"question": texts[0], "answer": texts[1]} if len(texts) == 2 else {"turns": texts}
        if d.category:
            obj["category"] = d.category
        lines.append(json.dumps(obj, ensure_ascii=False) + "\n")
    return "".join(lines)
