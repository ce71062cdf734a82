"""Markdown tables for the docs, printed from committed benchmark output (never typed by hand).

    python bench/tables.py robustness     # the ablation table of bench/results/robustness.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SETS = {"training": "training questions", "reworded": "reworded (dev)", "reworded_test": "reworded (test)",
        "typos": "typos (dev)", "typos_test": "typos (test)"}
SYSTEMS = {"model": "(a) shipped: retrieval feeds the decoder", "decoder_alone": "(b) decoder alone, no retrieval",
           "retrieval_alone": "(c) retrieval alone, no model", "untrained": "(d) shipped, untrained weights",
           "fuzzy": "difflib nearest question", "chatterbot": "ChatterBot 1.2"}


def robustness() -> str:
    record = json.loads((RESULTS / "robustness.json").read_text(encoding="utf-8"))
    result = record["result"]
    exact = result["exact"]
    systems = [s for s in SYSTEMS if any(s in exact[name] for name in SETS)]
    lines = ["| exact match | " + " | ".join(SETS[n] for n in SETS) + " |",
             "|---|" + "---:|" * len(SETS)]
    for system in systems:
        cells = [exact[name].get(system) for name in SETS]
        lines.append(f"| {SYSTEMS[system]} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
    sizes = ", ".join(f"{SETS[n]} {result['sets'][n]}" for n in SETS)
    auc = result["confidence"]["auc"]
    lines += ["", f"Questions: {sizes}. Confidence ROC AUC (right vs wrong reply): dev {auc['dev']:.3f}, "
                  f"test {auc['test']:.3f}. From `{record['command']}`, {record['date'][:10]}, "
                  f"{record['machine']['cores']} cores ({record['machine']['cpu']})."]
    off = result.get("unanswerable")
    if off:  # figures from before the unanswerable set have none
        threshold = result["confidence"]["bundle_threshold_dev"]["threshold"]
        lines[-1] += (f" Off-corpus questions (`bench/data/unanswerable.jsonl`) still answered at "
                      f"`dialogue.min_confidence` {threshold}: "
                      f"{off['dev']['replied_at_min_confidence']:.0%} (dev), "
                      f"{off['test']['replied_at_min_confidence']:.0%} (test); confidence AUC right vs off-corpus "
                      f"{off['dev']['auc_right_vs_unanswerable']:.3f} (dev), "
                      f"{off['test']['auc_right_vs_unanswerable']:.3f} (test).")
    return "\n".join(lines)


if __name__ == "__main__":
    print({"robustness": robustness}[sys.argv[1] if len(sys.argv) > 1 else "robustness"]())
