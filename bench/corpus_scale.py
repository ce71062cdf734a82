"""Training on big corpora (issue 18): peak memory and time of ``chatbot train --epochs 1`` as the
corpus grows, on synthetic corpora made from chitchat-dataset's pairs.

Each size is a JSONL corpus of N distinct pairs: question i of the chitchat pairs with the reply
of another pair drawn at random, so that no pair repeats (deduplication would shrink the corpus)
and the text looks like the real one. Each run is a separate ``chatbot train`` process under
``/usr/bin/time -v``; the model is tiny (GRU 32) so that an epoch over millions of pairs fits a
bench run, and the figures say what the data path costs: reading, splitting, tokenising, encoding,
one epoch, the bundle. Every size above ``data.shuffle_window`` (65,536 inputs) takes the streamed
path: the corpus read again on each pass, the inputs encoded into a token cache on disk and read
a shuffled window at a time. Targets (issue 18): memory flat (the largest within 1.5x of the
smallest), time linear (seconds per pair within 1.5x).

    pip install -e ".[chitchat]"
    python bench/corpus_scale.py                      # 100k, 1M and 2M pairs (about 40 minutes)
    python bench/corpus_scale.py --sizes 100000,4000000 --name corpus_scale_4m   # about 40 minutes
    python bench/corpus_scale.py --sizes 20000,50000 --quick
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, emit, log

TINY = {"model.units": 32, "model.embedding_dim": 16, "model.copy_attention": False, "model.copy_continuation": False,
        "tokenizer.vocab_size": 1000, "training.batch_size": 256, "training.epochs": 1,
        "data.retrieved_pairs": 0, "data.noisy_copies": 0, "data.spelling": False,
        "data.validation_fraction": 0.01, "data.max_input_tokens": 32, "data.max_output_tokens": 24,
        "decoding.max_length": 24}


def synthetic(size: int, folder: Path, seed: int) -> Path:
    """``size`` distinct (question, reply) pairs from the chitchat pairs, as JSONL."""
    from chatbot.data.corpus import load_corpus

    pairs = [(e.question, e.answer) for e in load_corpus("chitchat").examples()]
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    file = folder / f"pairs_{size}.jsonl"
    with open(file, "w", encoding="utf-8") as out:
        while len(seen) < size:
            key = (rng.randrange(len(pairs)), rng.randrange(len(pairs)))
            if key in seen:
                continue
            seen.add(key)
            out.write(json.dumps({"question": pairs[key[0]][0], "answer": pairs[key[1]][1]}) + "\n")
    return file


def train_once(corpus: Path, out: Path) -> dict:
    overrides = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    command = ["/usr/bin/time", "-v", sys.executable, str(ROOT / "cli.py"), "train", "--corpus", str(corpus),
               "--out", str(out), "--quiet", *overrides]
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if result.returncode != 0:
        raise SystemExit(f"chatbot train failed on {corpus.name}: {result.stderr.strip().splitlines()[-1]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return {"seconds": round(seconds, 1), "fit_seconds": summary["seconds"], "peak_rss_mb": round(peak_kb / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000,2000000", help="corpus sizes in pairs, smallest first")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--quick", action="store_true", help="a smoke run: figures not saved")
    parser.add_argument("--name", default="corpus_scale", help="results file: bench/results/NAME.json")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for size in sizes:
            corpus = synthetic(size, folder, args.seed)
            log(f"{size:,} pairs ({corpus.stat().st_size / 2 ** 20:.0f} MB): chatbot train --epochs 1")
            run = {"pairs": size, "corpus_mb": round(corpus.stat().st_size / 2 ** 20, 1),
                   **train_once(corpus, folder / f"model_{size}")}
            run["ms_per_pair"] = round(run["seconds"] * 1000 / size, 3)
            log(f"{size:,} pairs: {run}")
            runs.append(run)
            corpus.unlink()
    small, large = runs[0], runs[-1]
    memory_ratio = round(large["peak_rss_mb"] / small["peak_rss_mb"], 3)
    time_ratio = round(large["ms_per_pair"] / small["ms_per_pair"], 3)
    result = {"model": TINY, "runs": runs, "memory_ratio_largest_over_smallest": memory_ratio,
              "time_per_pair_ratio_largest_over_smallest": time_ratio,
              "targets": {"memory_ratio_max": 1.5, "time_per_pair_ratio_max": 1.5},
              "pass": {"memory_flat": memory_ratio <= 1.5, "time_linear": time_ratio <= 1.5}}
    if args.quick:
        result["partial"] = True
    emit(result, args.name)


if __name__ == "__main__":
    main()
