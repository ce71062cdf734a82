"""Kill a real `chatbot train` (SIGKILL) at random moments and resume it each time: the model
must come out as the uninterrupted run's, to the weight.

    python bench/resume_kills.py              # 10 kills (about 4 minutes on 2 cores)
    python bench/resume_kills.py --kills 3    # quicker

The tests' tiny recipe (``tests/conftest.py``: 20 pairs, a GRU of 16 units) with a checkpoint
after every step, dropout and the moving average of the weights on, so that kills land within epochs,
during checkpoint writes and between the callbacks that write the log and the best weights. It
is trained twice uninterrupted (the second gives the floor: TensorFlow's threads may add in
another order), then started and killed ``--kills`` times, each restart with ``--resume``: a
share of the runs (``--start-up-share``) at a moment drawn (seeded) from the start-up (reading the
corpus, fitting and saving the tokenizer, encoding the inputs, tracing), the others at one drawn
within the rest of the training once the run has written a checkpoint; then once more to the end. Reported: where each kill left the training (the checkpoint's epoch and
step, from ``backup/state.json``), the largest difference between the two models' weights, and
whether every logged figure of every epoch is the same. The last stdout line is JSON, also
written to ``bench/results/resume_kills.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, emit, log

sys.path.insert(0, str(ROOT / "tests"))
from conftest import TINY_PAIRS, tiny_config  # noqa: E402  (the tests' recipe)

RECIPE = {"model.units": 16, "model.embedding_dim": 8, "tokenizer.vocab_size": 120, "training.epochs": 30,
          "training.batch_size": 4, "training.checkpoint_every_steps": 1, "training.ema_momentum": 0.9,
          "model.dropout": 0.1}


def command(config: Path, out: Path, *flags: str) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "train", "--corpus", str(TINY_PAIRS), "--config", str(config),
            "--out", str(out), "--quiet", *flags]


def checkpoint_of(out: Path) -> dict | None:
    try:
        state = json.loads((out.parent / f".{out.name}.training" / "backup" / "state.json").read_text())
        return {"epoch": state["epoch"] + 1, "step": state["steps"]}
    except (OSError, ValueError, KeyError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--start-up-share", type=float, default=0.3,
                        help="the share of runs killed before they train (default 0.3)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="resume-kills-"))
    config = folder / "config.json"
    config.write_text(json.dumps(tiny_config(**RECIPE).to_dict()))

    began = time.perf_counter()
    process = subprocess.Popen(command(config, folder / "whole"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    while process.poll() is None and checkpoint_of(folder / "whole") is None:
        time.sleep(0.02)
    start_up = time.perf_counter() - began  # until the first checkpoint: reading, encoding, building, tracing
    stdout, stderr = process.communicate(timeout=600)
    seconds = time.perf_counter() - began
    if process.returncode != 0:
        raise SystemExit(f"the uninterrupted training failed: {stderr.strip()[-2000:]}")
    log(f"uninterrupted: {seconds:.1f} s, {start_up:.1f} s of it before the first checkpoint")
    again = subprocess.run(command(config, folder / "again"), capture_output=True, text=True, timeout=600)
    if again.returncode != 0:
        raise SystemExit(f"the second uninterrupted training failed: {again.stderr.strip()[-2000:]}")

    epoch_s = json.loads(stdout.strip().splitlines()[-1])["seconds"] / RECIPE["training.epochs"]
    out, kills = folder / "killed", []
    for number in range(args.kills):
        flags = ("--resume",) if (folder / ".killed.training" / "state.json").exists() else ()
        before = checkpoint_of(out)
        process = subprocess.Popen(command(config, out, *flags), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True)
        if rng.random() < args.start_up_share:  # killed before it trains: reading, encoding, tracing
            try:
                process.wait(timeout=rng.uniform(0, start_up))
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
        while process.poll() is None and checkpoint_of(out) == before:  # until this run trains
            time.sleep(0.02)
        now = checkpoint_of(out)
        if process.poll() is None and now is not None:  # killed within the rest of the training
            left = max(RECIPE["training.epochs"] - now["epoch"] + 1, 1) * epoch_s
            time.sleep(rng.uniform(0, 2 * left / (args.kills - number + 1)))  # spread over what is left
            process.send_signal(signal.SIGKILL)
        err = process.communicate()[1]
        if process.returncode == 0:
            log(f"run {number + 1} finished before its kill")
            break
        if process.returncode != -signal.SIGKILL:
            raise SystemExit(f"run {number + 1} failed: {err.strip()[-2000:]}")
        kills.append({"left_at": checkpoint_of(out), "during": "training" if checkpoint_of(out) != before else "start-up"})
        log(f"kill {number + 1}: {kills[-1]}")
    last = subprocess.run(command(config, out, "--resume"), capture_output=True, text=True, timeout=600)
    if last.returncode != 0 and not out.exists():
        raise SystemExit(f"the last resume failed: {last.stderr.strip()[-2000:]}")

    import numpy as np

    from chatbot.model.bundle import Bundle

    def difference(a: Bundle, b: Bundle) -> float:
        return max(float(np.abs(x - y).max()) for x, y in zip(a.model.get_weights(), b.model.get_weights()))

    whole_bundle, killed, again = (Bundle.load(folder / name) for name in ("whole", "killed", "again"))
    result = {"kills": len(kills), "uninterrupted_s": round(seconds, 1), "where": kills,
              "epochs": [whole_bundle.metrics["epochs"], killed.metrics["epochs"]],
              "max_weight_difference": difference(whole_bundle, killed),
              "history_equal": whole_bundle.metrics["history"] == killed.metrics["history"],
              # the floor: two uninterrupted runs (TensorFlow's threads may sum in another order)
              "max_weight_difference_uninterrupted_twice": difference(whole_bundle, again),
              "history_equal_uninterrupted_twice": whole_bundle.metrics["history"] == again.metrics["history"]}
    # Target: the killed and resumed training is the uninterrupted one, as closely as two uninterrupted runs are.
    result["pass"] = (result["max_weight_difference"] <= result["max_weight_difference_uninterrupted_twice"]
                      and result["history_equal"] and result["epochs"][0] == result["epochs"][1])
    emit(result)


if __name__ == "__main__":
    main()
