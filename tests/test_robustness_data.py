"""The robustness dev sets (bench/data) and bench/robustness.py's judging helpers; no TensorFlow."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import make_typos  # noqa: E402  (bench/ is not a package)
import robustness  # noqa: E402

CORPUS = ROOT / "corpora" / "english"
REWORD_KINDS = {"synonym", "word_order", "filler", "contraction", "case_punct"}
TYPO_KINDS = {"adjacent", "drop", "double", "swap"}


@pytest.fixture(scope="module")
def corpus_examples():
    return robustness.load_corpus_quietly(CORPUS).examples(0, True)


@pytest.fixture(scope="module")
def categories(corpus_examples) -> dict[str, list[str]]:
    return robustness.question_categories(corpus_examples)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def reworded() -> list[dict]:
    return read_rows(robustness.REWORDED)


@pytest.fixture(scope="module")
def typos() -> list[dict]:
    return read_rows(robustness.TYPOS)


# --- the dev sets ----------------------------------------------------------------------------
def test_dev_sets_load_through_the_benchmark():
    assert len(robustness.load_dev_set(robustness.REWORDED, "reworded")) >= 110
    assert len(robustness.load_dev_set(robustness.TYPOS, "typos")) >= 110


def test_reworded_sizes_kinds_and_categories(reworded, categories):
    assert len(reworded) >= 110
    kinds = Counter(row["kind"] for row in reworded)
    assert set(kinds) == REWORD_KINDS
    assert min(kinds.values()) >= 15, kinds
    every_file = {stem for stems in categories.values() for stem in stems} - make_typos.LEFT_OUT_FILES
    assert {row["category"] for row in reworded} == every_file  # ChatterBot's files: basics.yml came later


def test_typo_sizes_kinds_and_categories(typos, categories):
    assert len(typos) >= 110
    assert len({row["original"] for row in typos}) == len(typos)  # distinct questions
    for row in typos:
        kinds = row["kind"].split("+")
        assert set(kinds) <= TYPO_KINDS, row
        assert row["typos"] in (1, 2) and len(kinds) == row["typos"], row
        original = row["original"]
        assert len(original.split()) >= 3 or len(original) >= 12, row
        assert row["question"][0] == original[0], row  # never the first letter
    every_file = {stem for stems in categories.values() for stem in stems} - make_typos.LEFT_OUT_FILES
    assert {row["category"] for row in typos} == every_file


@pytest.mark.parametrize("name", ["reworded", "typos"])
def test_originals_are_corpus_questions_of_their_category(name, request, categories):
    for row in request.getfixturevalue(name):
        assert row["original"] in categories, row
        assert row["category"] in categories[row["original"]], row


# Since exact match reads ’ as ' (2026-12-06), this reworded item is its corpus question; it
# stays, so that the dev figures stay comparable with those committed before, and the bench
# counts it (``dev_questions_in_training_split``). Drop it at the next full re-run.
APOSTROPHE_ONLY = "What is the world's biggest island?"


@pytest.mark.parametrize("name", ["reworded", "typos"])
def test_no_dev_question_is_a_corpus_question(name, request, categories):
    corpus = {robustness.normalise(q) for q in categories}
    rows = request.getfixturevalue(name)
    for row in rows:
        if row["question"] == APOSTROPHE_ONLY:
            assert row["original"] == APOSTROPHE_ONLY.replace("'", "\u2019") in categories
            continue
        assert robustness.normalise(row["question"]) not in corpus, row
    assert len({robustness.normalise(row["question"]) for row in rows}) == len(rows)  # no repeats


def test_reworded_and_typo_sets_do_not_overlap(reworded, typos):
    assert not {r["question"] for r in reworded} & {r["question"] for r in typos}


def test_unanswerable_questions_are_off_corpus_distinct_and_in_both_halves(categories, reworded, typos):
    halves = robustness.load_unanswerable(robustness.UNANSWERABLE)
    rows = halves["dev"] + halves["test"]
    assert len(halves["dev"]) >= 30 and len(halves["test"]) >= 30
    corpus = {robustness.normalise(q) for q in categories}
    asked = {robustness.normalise(r["question"]) for r in reworded + typos}
    texts = [robustness.normalise(item.question) for item in rows]
    assert len(set(texts)) == len(texts)
    assert not set(texts) & (corpus | asked)


def test_the_unanswerable_report_counts_replies_kept_and_separates_right_from_off_corpus():
    from types import SimpleNamespace as Reply

    Item = robustness.Item
    asked = [Item("reworded", "right one", "", "", ""), Item("reworded", "wrong one", "", "", ""),
             Item("training", "known", "", "", "")]
    off = {"dev": [Item("unanswerable_dev", "cook?", "", "", ""), Item("unanswerable_dev", "zzz", "", "", "")],
           "test": []}
    generated = {"right one": Reply(confidence=0.95), "wrong one": Reply(confidence=0.5), "known": Reply(confidence=0.93)}
    off_corpus = {"cook?": Reply(confidence=0.9), "zzz": Reply(confidence=0.2)}
    right = {("model", "reworded", "right one"): True, ("model", "reworded", "wrong one"): False,
             ("model", "training", "known"): True}
    report = robustness.unanswerable_report(off, off_corpus, generated, right, asked, min_confidence=0.8)
    assert report["dev"]["replied_at_min_confidence"] == 0.5  # "cook?" is kept, "zzz" falls back
    assert report["dev"]["auc_right_vs_unanswerable"] == 1.0
    assert report["dev"]["best_threshold_with_wrong"]["threshold"] > 0.9  # drops both wrong and off-corpus
    # capped where the training question answered right still passes: "cook?" (0.9) is dropped
    assert 0.9 < report["dev"]["best_threshold_with_wrong_capped"]["threshold"] <= 0.93


def test_typo_file_is_what_make_typos_generates():
    rows = make_typos.make_typos(CORPUS, make_typos.COUNT, make_typos.SEED)
    assert make_typos.render(rows) == robustness.TYPOS.read_text(encoding="utf-8")


def test_make_typos_is_seeded():
    one = make_typos.make_typos(CORPUS, 30, 1)
    assert one == make_typos.make_typos(CORPUS, 30, 1)
    assert one != make_typos.make_typos(CORPUS, 30, 2)


def test_a_second_typo_set_shares_no_question_with_the_first():
    first = make_typos.make_typos(CORPUS, 60, 1)
    taken = frozenset(row["original"] for row in first)
    second = make_typos.make_typos(CORPUS, 300, 2, exclude=taken)
    assert len(second) == 300 and not taken & {row["original"] for row in second}


def test_typo_kinds_do_what_they_say():
    import random

    rng = random.Random(0)
    text = "What is your favorite number"
    for _ in range(50):
        swapped = make_typos.apply_typo(text, "swap", rng)
        assert len(swapped) == len(text) and sorted(swapped) == sorted(text) and swapped != text
        assert len(make_typos.apply_typo(text, "drop", rng)) == len(text) - 1
        assert len(make_typos.apply_typo(text, "double", rng)) == len(text) + 1
        adjacent = make_typos.apply_typo(text, "adjacent", rng)
        diff = [(a, b) for a, b in zip(text, adjacent) if a != b]
        assert len(diff) == 1 and diff[0][1].lower() in make_typos.QWERTY_NEIGHBOURS[diff[0][0].lower()]
    assert make_typos.apply_typo("a 1", "swap", rng) is None  # no two adjacent letters after index 0


def test_qwerty_neighbours_are_symmetric():
    for key, neighbours in make_typos.QWERTY_NEIGHBOURS.items():
        for other in neighbours:
            assert key in make_typos.QWERTY_NEIGHBOURS[other], (key, other)


# --- judging helpers -------------------------------------------------------------------------
@pytest.mark.parametrize("reply, answers, right", [
    ("Hello", ["Hello"], True),
    ("hello.", ["Hello"], True),
    ("  Hi   there!! ", ["hi there"], True),
    ("Python", ["Python."], True),
    ("I am doing well", ["I am doing well.", "Good."], True),
    ("Good", ["Great", "Fine"], False),
    ("Hello world", ["Hello"], False),
    (".Hello", ["Hello"], False),  # only trailing punctuation goes
    ("It's", ["Its"], False),  # inner punctuation counts
    ("", ["Hello"], False),
])
def test_exact_match(reply, answers, right):
    assert robustness.is_right(reply, answers) is right


def test_normalise():
    assert robustness.normalise("  What's UP?!  ") == "what's up"
    assert robustness.normalise("Sort of…") == "sort of"
    assert robustness.normalise("a\n  b\tc") == "a b c"
    assert robustness.normalise("?!") == ""
    assert make_typos.normalise("Hi, How is it going?") == robustness.normalise("Hi, How is it going?")


def test_corpus_chrf_takes_varying_reference_counts():
    perfect = robustness.corpus_chrf(["Hello", "Good"], [["Hello"], ["Fine", "Good", "Great"]])
    assert perfect == pytest.approx(100.0)
    assert robustness.corpus_chrf(["xyz", "qqq"], [["Hello"], ["Fine", "Good"]]) < 10
