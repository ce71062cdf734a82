"""`chatbot evaluate --unanswerable` on the bench's own sets: does it choose the shipped threshold?

    python bench/fallback_choice.py              # the default model (about 3 minutes)

The default model's ``dialogue.min_confidence`` (0.9074) was chosen by ``bench/robustness.py``
on the dev halves of its sets. ``chatbot evaluate --unanswerable`` offers users the same rule
(``chatbot/evaluation/fallback.py``). This script builds, for each half, a corpus of the training
questions and that half's reworded and typo'd questions (each with its original's answers) and
that half's off-corpus questions (``bench/data/unanswerable.jsonl``), runs the real command on
each (``--json``), and reports what it says: on the dev half it should find no better threshold
than the shipped one (the same rule on the same replies); the test half says how that threshold
does on questions it was not chosen on. The last stdout line is JSON, also written to
``bench/results/fallback_choice.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import DEFAULT_CORPUS, ROOT, emit, log, results_name
from robustness import REWORDED, TYPOS, UNANSWERABLE, answers_table, is_test_half, load_corpus_quietly, load_dev_set

HALVES = {"dev": ("reworded", "typos"), "test": ("reworded_test", "typos_test")}


def write_sets(folder: Path, corpus: str | Path) -> dict[str, int]:
    """Per half, ``HALF.jsonl`` (a corpus) and ``unanswerable_HALF.jsonl``; returns the worded count."""
    table = answers_table(load_corpus_quietly(corpus).examples(0, True))
    items = load_dev_set(REWORDED, "reworded") + load_dev_set(TYPOS, "typos")
    off = [json.loads(line) for line in UNANSWERABLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    counts = {}
    for half, sets in HALVES.items():
        worded = [i for i in items if i.set in sets]
        rows = [{"question": q, "answer": a} for q, answers in table.items() for a in answers]
        rows += [{"question": i.question, "answer": a} for i in worded for a in table[i.original]]
        (folder / f"{half}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        outside = [r for r in off if is_test_half(r["question"]) == (half == "test")]
        (folder / f"unanswerable_{half}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in outside),
                                                           encoding="utf-8")
        counts[half] = {"worded": len(worded), "unanswerable": len(outside)}
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="the model's training corpus")
    args = parser.parse_args()
    result: dict = {"model": args.model}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        result["questions"] = write_sets(folder, args.corpus)
        for half in HALVES:
            log(f"{half} half: chatbot evaluate --corpus ... --unanswerable ... --json")
            done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "evaluate", "--model", args.model,
                                   "--corpus", str(folder / f"{half}.jsonl"),
                                   "--unanswerable", str(folder / f"unanswerable_{half}.jsonl"), "--json"],
                                  capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                sys.exit(f"chatbot evaluate failed ({done.returncode}): {done.stderr.strip()[-500:]}")
            report = json.loads(done.stdout.strip().splitlines()[-1])
            result[half] = {"exact_match": report["exact_match"], "fallback": report["fallback"]}
    dev = result["dev"]["fallback"]
    suggested = dev["suggested"]
    result["dev_finds_no_better_threshold"] = suggested is None or suggested["accuracy"] <= dev["current"]["accuracy"]
    result["targets"] = {"dev_finds_no_better_threshold": True}
    result["pass"] = result["dev_finds_no_better_threshold"]
    emit(result, results_name(args.model))


if __name__ == "__main__":
    main()
