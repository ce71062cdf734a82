"""How much should a reply's confidence count what the model makes of the question alone?

    python bench/unaided_weight.py                  # models/default
    python bench/unaided_weight.py --model DIR      # a candidate (its own results file)

A model trained to read retrieved pairs copies a shown answer with high confidence whether or
not the pair fits the question, so off-corpus questions get confident wrong replies. Each reply
is therefore also scored given the question without the pairs (``decoding.unaided_weight`` w:
confidence = exp(score + w x that score)). For each w of a grid, on the questions of
``robustness.py`` (training questions, the dev and test halves of the reworded and typo'd sets,
the off-corpus questions), this reports the confidence's ROC AUC between right replies and
off-corpus questions, and the threshold ``robustness.py`` would choose for
``dialogue.min_confidence`` (the best accuracy on the dev halves with the off-corpus dev half,
where a fallback is right, capped so that no training question answered right falls back),
with what it keeps and drops on each half. w is chosen on the dev halves only (best accuracy,
then best AUC, then the smaller w); the test halves report it. One decode: the replies are the
same for every w (the weight changes no ranking), and the bundle's own path computes both
scores (generated once with w = 1, whose confidence is exp(score + unaided score)).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before anything imports TensorFlow

import argparse
import math

from _common import DEFAULT_CORPUS, emit, log, peak_rss_mb, results_name
from robustness import (REWORDED, TYPOS, UNANSWERABLE, answers_table, capped_best_threshold, is_right,
                        load_corpus_quietly, load_dev_set, load_unanswerable, roc_auc, training_questions)

GRID = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)


def halves_of(items, unanswerable) -> dict[str, list[tuple[str, str | None]]]:
    """(question, original) per half: "dev" and "test" (reworded and typos, then off-corpus
    questions, whose original is None)."""
    halves: dict[str, list[tuple[str, str | None]]] = {"dev": [], "test": []}
    for item in items:
        halves["test" if item.set.endswith("_test") else "dev"].append((item.question, item.original))
    for half, rows in unanswerable.items():
        halves[half] += [(item.question, None) for item in rows]
    return halves


def weigh(w: float, scores: dict, training: list[str], halves: dict, right: dict) -> dict:
    confidence = {q: math.exp(s + w * u) for q, (s, u) in scores.items()}
    kept_training = [confidence[q] for q in training if right[q]]
    dev = halves["dev"]
    threshold = capped_best_threshold([confidence[q] for q, _ in dev], [right[q] for q, _ in dev],
                                      kept_training)["threshold"]
    report = {"weight": w, "threshold": round(threshold, 4),
              "lowest_right_training_confidence": round(min(kept_training), 4),
              "training_falling_back": sum(c < threshold for c in kept_training)}
    for half, rows in halves.items():
        answered = [q for q, original in rows if original is not None]
        outside = [q for q, original in rows if original is None]
        rights = [confidence[q] for q in answered if right[q]]
        wrongs = [confidence[q] for q in answered if not right[q]]
        off = [confidence[q] for q in outside]
        judged = [(confidence[q] >= threshold) == right[q] for q, _ in rows]
        auc = roc_auc(rights + off, [True] * len(rights) + [False] * len(off))
        report[half] = {
            "auc_right_vs_off_corpus": None if auc is None else round(auc, 4),
            "accuracy": round(sum(judged) / len(judged), 4),
            "right_kept": round(sum(c >= threshold for c in rights) / len(rights), 4),
            "wrong_kept": f"{sum(c >= threshold for c in wrongs)}/{len(wrongs)}",
            "off_corpus_answered": round(sum(c >= threshold for c in off) / len(off), 4),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/default", help="bundle directory or name [models/default]")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="the corpus the dev sets come from")
    parser.add_argument("--batch-size", type=int, default=64, help="questions per generate() call [64]")
    args = parser.parse_args()

    from chatbot.dialogue.bot import ChatBot

    bot = ChatBot.load(args.model, db="sqlite://")
    if not bot.generator.reads_retrieval:
        raise SystemExit(f"{args.model}: the model does not read retrieved pairs; there is nothing to weigh")
    corpus_examples = load_corpus_quietly(args.corpus).examples(0, True)
    table = answers_table(corpus_examples)
    training, _ = training_questions(bot.bundle, corpus_examples)
    items = load_dev_set(REWORDED, "reworded") + load_dev_set(TYPOS, "typos")
    halves = halves_of(items, load_unanswerable(UNANSWERABLE))
    originals = {q: q for q in training} | {q: o for rows in halves.values() for q, o in rows}
    questions = list(originals)
    scores, right = {}, {}
    for start in range(0, len(questions), args.batch_size):
        chunk = questions[start:start + args.batch_size]
        for question, g in zip(chunk, bot.generate(chunk, decoding={"unaided_weight": 1.0})):
            scores[question] = (g.score, math.log(max(g.confidence, 1e-300)) - g.score)
            original = originals[question]
            right[question] = original is not None and is_right(g.text, table.get(original, []))
        log(f"{min(start + args.batch_size, len(questions))}/{len(questions)} questions")
    grid = [weigh(w, scores, training, halves, right) for w in GRID]
    for row in grid:
        log(f"w={row['weight']}: threshold {row['threshold']} | dev {row['dev']} | test {row['test']}")
    chosen = max(grid, key=lambda r: (r["dev"]["accuracy"], r["dev"]["auc_right_vs_off_corpus"], -r["weight"]))
    emit({"model": args.model, "questions": {"training": len(training), **{h: len(r) for h, r in halves.items()}},
          "grid": grid, "chosen": chosen, "rule": "best dev accuracy, then dev AUC, then the smaller weight",
          "peak_mb": peak_rss_mb()}, results_name(args.model))


if __name__ == "__main__":
    main()
