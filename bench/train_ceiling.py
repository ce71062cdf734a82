"""How fast could the default recipe train on this machine? Its arithmetic against the matrix
products these cores can do, at the shapes the model actually multiplies.

Issue 16 asks for 20x the classic example's samples/s (``train_speed.py``). This bench says
whether that is within reach of the recipe's network, whatever the code around it does:

1. The arithmetic of one training input, from the batches ``chatbot train`` builds for the recipe
   (padded lengths as trained): the GRU steps of the encoder and the decoder, and per decoder
   position the attention, its combination, the output projection and the copy mixture; the
   backward pass counted as twice the forward.
2. Matrix-product rates on this machine, measured: a large square product (the best case), one
   GRU step at the recipe's batch size (the recurrences are a chain of these, one per token, and
   cannot be merged), the output projection over a whole batch.
3. The ceilings: inputs/s if every operation ran at the large-product rate, and if the
   recurrences ran at the rate of their own shape and everything else were free.

    python bench/train_ceiling.py [--config models/default.toml] [--classic SAMPLES_PER_S]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_CONFIG, DEFAULT_CORPUS, RESULTS, emit, log  # noqa: E402

TARGET_RATIO = 20


def arithmetic(config_path: str, corpus: str) -> dict:
    """FLOPs per training input (forward + backward), split into the recurrences and the rest."""
    import tempfile

    from chatbot.config import Config
    from chatbot.training import pipeline

    config = Config.load(config_path)
    if config.model.cell != "gru" or config.model.layers != 1 or config.model.bidirectional:
        raise SystemExit("train_ceiling.py counts a one-layer, one-way GRU (the default recipe's network)")
    with tempfile.TemporaryDirectory() as tmp:
        plan = pipeline.plan_run(corpus, config, Path(tmp) / "model", False, None, False, False, log)
        pipeline.prepare_tokenizer(plan, log)
        _, train_set, _ = pipeline.build(plan, log)
        embedding, units, vocab = config.model.embedding_dim, config.model.units, plan.tokenizer.vocab_size
        gru_step = 3 * (embedding + units) * units * 2  # three gates over [input, state]
        inputs = recurrent = rest = source_tokens = target_tokens = 0
        for (source, decoder_input), _ in train_set:
            batch, width, steps = (int(n) for n in (source.shape[0], source.shape[1], decoder_input.shape[1]))
            inputs += batch
            source_tokens += batch * width
            target_tokens += batch * steps
            recurrent += batch * gru_step * (width + steps)
            per_position = (2 * units * width * 2      # attention scores and context
                            + 2 * units * units * 2     # combining the context with the state
                            + units * vocab * 2         # output projection
                            + 4 * vocab + 2 * width)    # softmax, copy mixture, scatter
            rest += batch * steps * per_position
    backward = 3  # forward + a backward pass of about twice the forward
    return {"inputs_per_epoch": inputs, "mean_padded_source": round(source_tokens / inputs, 1),
            "mean_padded_target": round(target_tokens / inputs, 1),
            "gflop_per_input": round(backward * (recurrent + rest) / inputs / 1e9, 4),
            "recurrent_gflop_per_input": round(backward * recurrent / inputs / 1e9, 4),
            "batch_size": config.training.batch_size, "units": units, "embedding_dim": embedding,
            "vocab_size": vocab}


def matmul_gflops(rows: int, inner: int, cols: int, seconds: float = 2.0) -> float:
    """Sustained GFLOP/s of float32 products of these shapes, run back to back inside one
    compiled loop (as a recurrence runs them: no Python between two)."""
    import tensorflow as tf

    a, b = tf.random.normal([rows, inner]), tf.random.normal([inner, cols])
    repeats = max(1, int(2e9 // (2 * rows * inner * cols)))  # about 2 GFLOP per call

    @tf.function
    def products(x, y):
        total = tf.constant(0.0)
        for step in tf.range(repeats):  # the step changes the input, so no product is hoisted
            total += tf.reduce_sum(tf.matmul(x + tf.cast(step, tf.float32) * 1e-9, y))
        return total

    products(a, b).numpy()
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        products(a, b).numpy()
        count += repeats
    return 2 * rows * inner * cols * count / (time.perf_counter() - began) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="the recipe [models/default.toml]")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="its corpus [corpora/english]")
    parser.add_argument("--classic", type=float, default=None,
                        help="the classic example's samples/s [from results/train_speed.json]")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    speed = {}
    if (RESULTS / "train_speed.json").is_file():
        import json

        speed = json.loads((RESULTS / "train_speed.json").read_text())["result"]
    classic = args.classic or speed.get("classic_samples_per_s")
    if not classic:
        raise SystemExit("no classic samples/s: run bench/train_speed.py first or pass --classic")
    work = arithmetic(args.config, args.corpus)
    log(f"arithmetic: {work}")
    batch, units, embedding, vocab = work["batch_size"], work["units"], work["embedding_dim"], work["vocab_size"]
    rates = {"large_2048": matmul_gflops(2048, 2048, 2048),
             "gru_step": matmul_gflops(batch, embedding + units, 3 * units),
             "output_projection": matmul_gflops(batch * int(work["mean_padded_target"]), units, vocab)}
    rates = {k: round(v, 1) for k, v in rates.items()}
    log(f"matrix products, GFLOP/s: {rates}")
    needed = TARGET_RATIO * classic
    all_at_best = rates["large_2048"] / work["gflop_per_input"]
    recurrences_only = rates["gru_step"] / work["recurrent_gflop_per_input"]
    measured = speed.get("default_inputs_per_s")
    emit({**work, "matmul_gflops": rates, "classic_samples_per_s": classic,
          "needed_inputs_per_s": round(needed, 1),
          "ceiling_everything_at_large_product_rate": round(all_at_best, 1),
          "ceiling_recurrences_alone_at_their_rate": round(recurrences_only, 1),
          "measured_inputs_per_s": measured,
          "measured_gflops": round(measured * work["gflop_per_input"], 1) if measured else None,
          "needed_share_of_large_product_rate": round(needed / all_at_best, 3),
          "target_under_arithmetic_ceiling": needed <= min(all_at_best, recurrences_only)})


if __name__ == "__main__":
    main()
