"""Helpers shared by the benchmark scripts (no TensorFlow import here).

Both scripts follow one output contract: progress goes to stderr, and the figures are one
JSON object on the last line of stdout, so a caller can run ``... | tail -n 1 | jq``.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
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


RESULTS = ROOT / "bench" / "results"


def results_name(model: str, default: str = "models/default") -> str | None:
    """Where a bench run on ``model`` keeps its figures: the script's own file for the default
    model, ``SCRIPT_MODELNAME`` for another, so that measuring a candidate never overwrites the
    shipped model's committed figures."""
    if Path(model).resolve() == (ROOT / default).resolve() or model in ("default", default):
        return None
    return f"{Path(sys.argv[0]).stem}_{Path(model).name}"


def emit(result: dict, name: str | None = None) -> None:
    """The figures: one JSON object, the last line on stdout, also written (with the command,
    date and machine) to ``bench/results/NAME.json`` so that docs quote committed output.
    ``name`` defaults to the script's name; a ``--quick`` or otherwise partial run should pass
    ``name=None`` and set ``result["partial"] = True`` to leave the committed file alone."""
    sys.stdout.flush()
    print(json.dumps(result, sort_keys=False), flush=True)
    if result.get("partial"):
        return
    name = name or Path(sys.argv[0]).stem
    record = {"command": "python " + shlex.join([f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(),
              "result": result}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def machine() -> dict:
    """What the figures were measured on."""
    import platform

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu or platform.processor(), "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "platform": platform.platform()}


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
