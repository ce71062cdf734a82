"""Helpers shared by the benchmark scripts (no TensorFlow import here).

Both scripts follow one output contract: progress goes to stderr, and the figures are one
JSON object on the last line of stdout, so a caller can run ``... | tail -n 1 | jq``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

# Must be set before TensorFlow is imported anywhere in the process.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "models" / "default.toml"
DEFAULT_CORPUS = ROOT / "corpora" / "english"

_START = time.perf_counter()


def log(message: str) -> None:
    """Progress for humans, on stderr so stdout stays machine-readable."""
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


def emit(result: dict) -> None:
    """The figures: one JSON object, the last line on stdout."""
    sys.stdout.flush()
    print(json.dumps(result, sort_keys=False), flush=True)


def peak_rss_mb() -> float:
    """This process's peak resident memory (``ru_maxrss`` is KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without importing numpy."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def training_pairs(corpus: str | Path, config):
    """The training examples exactly as ``chatbot.training.pipeline.train`` builds them:
    load -> examples (context window, dedup) -> seeded split; returns (train, validation)."""
    from chatbot.data.corpus import load_corpus, split_examples

    examples = load_corpus(corpus).examples(config.data.context_turns, config.data.deduplicate)
    return split_examples(examples, config.data.validation_fraction, config.training.seed)
