"""Make the typo dev set: corpus questions with one or two keyboard typos each.

    python bench/make_typos.py            # rewrites bench/data/typos.jsonl (byte-identical each run)
    python bench/make_typos.py --check    # exit 1 if the file is not what this script makes
    python bench/make_typos.py --count 480 --seed 777 --exclude bench/data/typos.jsonl --output FILE
                                          # a larger set sharing no question with the committed one

A seeded sample of distinct questions of the English corpus, spread over its files (round
robin over the categories, in sorted order, a shuffled queue per category), each at least 3
words or 12 characters long so that a typo leaves it recognisable. Questions whose normalised
form is shared by two corpus questions with different answers ("Will you die" / "Will you
die?") are left out: no reply could be right for both. Each picked question gets one typo or
two (an even draw), each typo one of

* ``adjacent``: a letter replaced by a QWERTY neighbour (case kept),
* ``drop``: a letter dropped (not a one-letter word),
* ``double``: a letter typed twice,
* ``swap``: a letter swapped with the letter after it (both letters, and different),

on ASCII letters only and never on the first character of the question. A result that equals
a corpus question after normalisation (case, whitespace, trailing punctuation) is redrawn.
Each line: ``{"question", "original", "kind", "category", "typos"}``, ``kind`` the typo kinds
in the order applied, joined by "+".
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import unicodedata
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT / "corpora" / "english"
OUTPUT = ROOT / "bench" / "data" / "typos.jsonl"
SEED = 20260517
COUNT = 120
MIN_WORDS, MIN_CHARS = 3, 12
KINDS = ("adjacent", "drop", "double", "swap")

# Keys that touch each letter key on a US QWERTY keyboard (same row and the rows above/below).
QWERTY_NEIGHBOURS = {
    "q": "wa", "w": "qeas", "e": "wrsd", "r": "etdf", "t": "ryfg", "y": "tugh", "u": "yihj",
    "i": "uojk", "o": "ipkl", "p": "ol",
    "a": "qwsz", "s": "weadzx", "d": "erfscx", "f": "rtdgcv", "g": "tyfhvb", "h": "yugjbn",
    "j": "uihknm", "k": "iojlm", "l": "opk",
    "z": "asx", "x": "zsdc", "c": "xdfv", "v": "cfgb", "b": "vghn", "n": "bhjm", "m": "njk",
}


def normalise(text: str) -> str:
    """Lower case, whitespace runs as one space, no trailing punctuation or whitespace
    (the same rule as bench/robustness.py's exact match)."""
    text = " ".join(text.lower().split())
    end = len(text)
    while end and (text[end - 1].isspace() or unicodedata.category(text[end - 1]).startswith("P")):
        end -= 1
    return text[:end]


def _is_letter(ch: str) -> bool:
    return ch.isascii() and ch.isalpha()


def apply_typo(text: str, kind: str, rng: random.Random) -> str | None:
    """One typo of ``kind`` at a random letter (never index 0); None if there is no place for it."""
    if kind == "swap":
        places = [i for i in range(1, len(text) - 1)
                  if _is_letter(text[i]) and _is_letter(text[i + 1]) and text[i] != text[i + 1]]
    elif kind == "drop":  # not a one-letter word ("a", "I"): that would drop a word, not a letter
        places = [i for i in range(1, len(text)) if _is_letter(text[i])
                  and (_is_letter(text[i - 1]) or (i + 1 < len(text) and _is_letter(text[i + 1])))]
    else:
        places = [i for i in range(1, len(text)) if _is_letter(text[i])]
    if not places:
        return None
    i = rng.choice(places)
    ch = text[i]
    if kind == "adjacent":
        new = rng.choice(QWERTY_NEIGHBOURS[ch.lower()])
        return text[:i] + (new.upper() if ch.isupper() else new) + text[i + 1:]
    if kind == "drop":
        return text[:i] + text[i + 1:]
    if kind == "double":
        return text[:i] + ch + text[i:]
    if kind == "swap":
        return text[:i] + text[i + 1] + ch + text[i + 2:]
    raise ValueError(f"unknown typo kind {kind!r}")


# corpora/english/basics.yml is this project's own small talk, added after the set was drawn from
# ChatterBot's files: left out, so that the committed set stays what this script makes.
LEFT_OUT_FILES = {"basics"}


def corpus_questions(corpus: str | Path = DEFAULT_CORPUS) -> dict[str, str]:
    """Each distinct corpus question -> the file stem it first appears in (corpus order)."""
    from chatbot.data.corpus import load_corpus

    table: dict[str, str] = {}
    for example in load_corpus(corpus).examples(0, True):
        stem = Path(example.source.rsplit(":", 1)[0]).stem
        if stem not in LEFT_OUT_FILES:
            table.setdefault(example.question, stem)
    return table


def make_typos(corpus: str | Path = DEFAULT_CORPUS, count: int = COUNT, seed: int = SEED,
               exclude: frozenset[str] = frozenset()) -> list[dict]:
    """The typo dev set as a list of records (deterministic for a corpus, count and seed). Corpus
    questions in ``exclude`` are never drawn (a second set sharing no question with the first)."""
    questions = corpus_questions(corpus)
    by_norm: dict[str, set[str]] = defaultdict(set)
    for question in questions:
        by_norm[normalise(question)].add(question)
    rng = random.Random(seed)
    queues: dict[str, list[str]] = defaultdict(list)
    for question in sorted(questions):
        long_enough = len(question.split()) >= MIN_WORDS or len(question) >= MIN_CHARS
        if long_enough and len(by_norm[normalise(question)]) == 1 and question not in exclude:
            queues[questions[question]].append(question)
    for category in sorted(queues):
        rng.shuffle(queues[category])
    available = sum(len(q) for q in queues.values())
    if count > available:
        raise ValueError(f"asked for {count} typo'd questions but only {available} corpus questions qualify")

    rows: list[dict] = []
    while len(rows) < count:
        for category in sorted(queues):
            if len(rows) == count or not queues[category]:
                continue
            original = queues[category].pop()
            row = _typo_row(original, category, by_norm, rng)
            if row is not None:
                rows.append(row)
    return rows


def _typo_row(original: str, category: str, by_norm: dict[str, set[str]],
              rng: random.Random, tries: int = 100) -> dict | None:
    for _ in range(tries):
        n = rng.choice((1, 2))
        kinds = [rng.choice(KINDS) for _ in range(n)]
        text: str | None = original
        for kind in kinds:
            text = apply_typo(text, kind, rng) if text is not None else None
        if text is None or text == original or normalise(text) in by_norm:
            continue
        return {"question": text, "original": original, "kind": "+".join(kinds),
                "category": category, "typos": n}
    return None  # no typo keeps it apart from the corpus: skip this question


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="corpus to draw questions from [corpora/english]")
    parser.add_argument("--count", type=int, default=COUNT, help=f"questions [{COUNT}]")
    parser.add_argument("--seed", type=int, default=SEED, help=f"random seed [{SEED}]")
    parser.add_argument("--output", default=str(OUTPUT), help="where to write [bench/data/typos.jsonl]")
    parser.add_argument("--exclude", metavar="FILE", help="leave out the corpus questions this typo file was made "
                        "from (a larger set to check the committed one against)")
    parser.add_argument("--check", action="store_true", help="do not write: exit 1 if the file differs")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import logging

    logging.getLogger("chatbot.data.corpus").setLevel(logging.ERROR)  # the one malformed trivia entry
    exclude = frozenset(json.loads(line)["original"] for line in Path(args.exclude).read_text(encoding="utf-8")
                        .splitlines() if line) if args.exclude else frozenset()
    text = render(make_typos(args.corpus, args.count, args.seed, exclude))
    out = Path(args.output)
    if args.check:
        same = out.exists() and out.read_text(encoding="utf-8") == text
        print(f"{out}: {'up to date' if same else 'differs from what make_typos.py generates'}")
        sys.exit(0 if same else 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}: {text.count(chr(10))} questions")


if __name__ == "__main__":
    main()
