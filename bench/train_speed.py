"""Training throughput and peak memory: the project's default model vs the classic Keras
character-level seq2seq example, on the same question/answer pairs, in the same run.

    python bench/train_speed.py            # full measurement (several minutes on 2 cores)
    python bench/train_speed.py --quick    # a smoke run: fewer epochs/steps, small one-hot arrays

Each model is trained in a subprocess of its own (this script re-invoked with a hidden
``--child`` flag), so that each reports the peak resident memory of a process that only ever
held that model and its data. Progress goes to stderr; the figures are one JSON object on
the last line of stdout.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before anything imports TensorFlow

import argparse
import json
import subprocess
import sys
import time

from _common import DEFAULT_CONFIG, DEFAULT_CORPUS, emit, log, peak_rss_mb, training_pairs

TARGETS = {"speedup_min": 20, "peak_mb_max": 2048}
CLASSIC_BATCH = 64  # keras-io lstm_seq2seq
CLASSIC_UNITS = 256  # keras-io lstm_seq2seq latent_dim


# --- (a) the project's own pipeline ----------------------------------------------------------
def run_default(args) -> dict:
    """Train the default config through the same calls ``chatbot.training.pipeline.train`` makes.

    Validation and checkpoint callbacks are left out: this measures training steps only, the
    same work the classic example does. The first epoch includes tracing of the train
    function (and retracing while bucket shapes are first seen), so it is excluded.
    """
    import keras

    from chatbot.config import Config
    from chatbot.data.dataset import encode_examples, make_dataset
    from chatbot.model.network import Seq2Seq, compile_model
    from chatbot.data.tokenizer import TextTokenizer

    config = Config.load(args.config)
    keras.utils.set_random_seed(config.training.seed)
    train, _ = training_pairs(args.corpus, config)
    texts = [t for e in train for t in (*e.context, e.question, e.answer)]
    tokenizer = TextTokenizer.fit(texts, config.tokenizer.level, config.tokenizer.vocab_size,
                                  config.tokenizer.min_frequency)
    src, tgt = encode_examples(train, tokenizer, config.data.max_input_tokens, config.data.max_output_tokens)
    dataset = make_dataset(src, tgt, config.training.batch_size, shuffle=True, seed=config.training.seed)
    model = Seq2Seq(tokenizer.vocab_size, config.model)
    model.build_for_inference()
    compile_model(model, config.training.learning_rate, config.training.clipnorm)
    log(f"default: {len(train)} training pairs, vocabulary {tokenizer.vocab_size}, "
        f"{model.count_params():,} parameters; {args.epochs} epochs")

    _count_train_step_traces(model)
    timer = _make_epoch_timer()
    model.fit(dataset, epochs=args.epochs, verbose=0, callbacks=[timer])
    measured = timer.seconds[1:]
    return {
        "samples_per_s": round(len(train) * len(measured) / sum(measured), 2),
        "peak_mb": peak_rss_mb(),
        "train_pairs": len(train),
        "epoch_seconds": [round(s, 2) for s in timer.seconds],
        "traces_by_epoch": timer.traces,
        "parameters": int(model.count_params()),
        "vocab_size": tokenizer.vocab_size,
    }


def _count_train_step_traces(model) -> None:
    """Count how often Keras traces ``train_step``: its Python body only runs while the
    train function is being traced, so this shows which epochs paid for (re)tracing as new
    bucket shapes arrived. The compiled computation is unchanged."""
    model.train_step_traces = 0
    step = model.train_step

    def counted_train_step(data):
        model.train_step_traces += 1
        return step(data)

    model.train_step = counted_train_step


def _make_epoch_timer():
    """Built on demand: the callback class needs Keras, which is imported lazily."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """Wall time and train-step traces per epoch, logged as they go."""

        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []
            self.traces: list[int] = []  # train_step traces so far, at each epoch's end

        def on_epoch_begin(self, epoch, logs=None):
            self._began = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._began)
            self.traces.append(self.model.train_step_traces)
            log(f"default: epoch {epoch + 1} {self.seconds[-1]:.1f}s loss {float(logs['loss']):.3f} "
                f"(train function traced {self.traces[-1]} times so far)")

    return EpochTimer()


# --- (b) the classic keras-io lstm_seq2seq example --------------------------------------------
def run_classic(args) -> dict:
    """The keras-io ``lstm_seq2seq`` recipe, unchanged except for the data.

    One-hot float32 arrays padded to the longest question/answer of the whole training set
    are the example's memory cost, so they are built for the full set. Under ``--quick`` only
    enough rows for the measured batches are built, still padded to the full widths, so the
    time per batch (which depends on the padded length) stays representative while the peak
    memory does not (``classic_full_arrays`` says which).
    """
    import numpy as np
    import keras

    from chatbot.config import Config

    config = Config.load(args.config)
    keras.utils.set_random_seed(config.training.seed)
    train, _ = training_pairs(args.corpus, config)
    input_texts = [e.question for e in train]
    target_texts = ["\t" + e.answer + "\n" for e in train]
    input_chars = sorted(set("".join(input_texts)) | {" "})
    target_chars = sorted(set("".join(target_texts)) | {" "})
    num_encoder_tokens, num_decoder_tokens = len(input_chars), len(target_chars)
    max_encoder_len = max(len(t) for t in input_texts)
    max_decoder_len = max(len(t) for t in target_texts)
    input_index = {c: i for i, c in enumerate(input_chars)}
    target_index = {c: i for i, c in enumerate(target_chars)}

    batches = args.warmup_batches + args.steps
    available = -(-len(train) // CLASSIC_BATCH)
    if batches > available:
        raise SystemExit(f"--warmup-batches + --steps = {batches} exceeds the {available} batches of data")
    rows = min(len(train), batches * CLASSIC_BATCH) if args.quick else len(train)
    log(f"classic: {len(train)} pairs, one-hot arrays for {rows} rows: encoder {max_encoder_len} x "
        f"{num_encoder_tokens}, decoder {max_decoder_len} x {num_decoder_tokens} "
        f"(~{rows * 4 * (max_encoder_len * num_encoder_tokens + 2 * max_decoder_len * num_decoder_tokens) / 2**20:,.0f} MiB)")

    encoder_input = np.zeros((rows, max_encoder_len, num_encoder_tokens), dtype="float32")
    decoder_input = np.zeros((rows, max_decoder_len, num_decoder_tokens), dtype="float32")
    decoder_target = np.zeros((rows, max_decoder_len, num_decoder_tokens), dtype="float32")
    for i, (input_text, target_text) in enumerate(zip(input_texts[:rows], target_texts[:rows])):
        for t, char in enumerate(input_text):
            encoder_input[i, t, input_index[char]] = 1.0
        encoder_input[i, t + 1:, input_index[" "]] = 1.0
        for t, char in enumerate(target_text):
            decoder_input[i, t, target_index[char]] = 1.0
            if t > 0:
                decoder_target[i, t - 1, target_index[char]] = 1.0
        decoder_input[i, t + 1:, target_index[" "]] = 1.0
        decoder_target[i, t:, target_index[" "]] = 1.0

    encoder_inputs = keras.Input(shape=(None, num_encoder_tokens))
    _, state_h, state_c = keras.layers.LSTM(CLASSIC_UNITS, return_state=True)(encoder_inputs)
    decoder_inputs = keras.Input(shape=(None, num_decoder_tokens))
    decoder_outputs, _, _ = keras.layers.LSTM(CLASSIC_UNITS, return_sequences=True, return_state=True)(
        decoder_inputs, initial_state=[state_h, state_c])
    decoder_outputs = keras.layers.Dense(num_decoder_tokens, activation="softmax")(decoder_outputs)
    model = keras.Model([encoder_inputs, decoder_inputs], decoder_outputs)
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    log(f"classic: {model.count_params():,} parameters; {args.warmup_batches} warm-up + "
        f"{args.steps} timed batches of {CLASSIC_BATCH}")

    timer = _make_batch_timer()
    model.fit([encoder_input, decoder_input], decoder_target, batch_size=CLASSIC_BATCH, epochs=1,
              steps_per_epoch=batches, verbose=0, callbacks=[timer])
    timed_from = timer.ends[args.warmup_batches - 1] if args.warmup_batches else timer.began
    seconds = timer.ends[-1] - timed_from
    return {
        "samples_per_s": round(args.steps * CLASSIC_BATCH / seconds, 2),
        "peak_mb": peak_rss_mb(),
        "train_pairs": len(train),
        "full_arrays": rows == len(train),
        "timed_batches": args.steps,
        "seconds_per_batch": round(seconds / args.steps, 3),
        "padded_lengths": [max_encoder_len, max_decoder_len],
        "tokens": [num_encoder_tokens, num_decoder_tokens],
        "parameters": int(model.count_params()),
    }


def _make_batch_timer():
    """Built on demand: the callback class needs Keras, which is imported lazily."""
    import keras

    class BatchTimer(keras.callbacks.Callback):
        """End time of each training batch, logged as it goes."""

        def on_train_begin(self, logs=None):
            self.began = time.perf_counter()
            self.ends: list[float] = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())
            previous = self.ends[-2] if len(self.ends) > 1 else self.began
            log(f"classic: batch {batch + 1} {self.ends[-1] - previous:.2f}s")

    return BatchTimer()


# --- parent: one subprocess per model ---------------------------------------------------------
def child_result(name: str, args) -> dict:
    """Run one model in a fresh interpreter; its last stdout line is its JSON result."""
    command = [sys.executable, os.path.abspath(__file__), "--child", name,
               "--config", str(args.config), "--corpus", str(args.corpus),
               "--epochs", str(args.epochs), "--steps", str(args.steps),
               "--warmup-batches", str(args.warmup_batches)] + (["--quick"] if args.quick else [])
    log(f"starting the {name} run")
    began = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # stderr passes through
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise SystemExit(f"the {name} run failed (exit {done.returncode})")
    result = json.loads(lines[-1])
    log(f"{name}: {result['samples_per_s']} samples/s, peak {result['peak_mb']} MB "
        f"({time.perf_counter() - began:.0f}s)")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="config of model (a) [models/default.toml]")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="training corpus [corpora/english]")
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs of model (a); the first is excluded from the figure [3]")
    parser.add_argument("--steps", type=int, default=8, help="timed batches of model (b) [8]")
    parser.add_argument("--warmup-batches", type=int, default=1, help="untimed first batches of (b) [1]")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 epochs of (a), 2 timed batches of (b), (b)'s arrays only "
                             "as big as those batches")
    parser.add_argument("--child", choices=("default", "classic"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick and args.child is None:
        args.epochs, args.steps = min(args.epochs, 2), min(args.steps, 2)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is excluded)")
    if args.steps < 1 or args.warmup_batches < 0:
        parser.error("--steps must be >= 1 and --warmup-batches >= 0")

    if args.child:
        emit((run_default if args.child == "default" else run_classic)(args))
        return

    default = child_result("default", args)
    classic = child_result("classic", args)
    speedup = default["samples_per_s"] / classic["samples_per_s"]
    emit({
        "default_samples_per_s": default["samples_per_s"],
        "default_peak_mb": default["peak_mb"],
        "classic_samples_per_s": classic["samples_per_s"],
        "classic_peak_mb": classic["peak_mb"],
        "speedup": round(speedup, 2),
        "targets": TARGETS,
        "pass": speedup >= TARGETS["speedup_min"] and default["peak_mb"] <= TARGETS["peak_mb_max"],
        "quick": args.quick,
        "train_pairs": default["train_pairs"],
        "default_epochs": args.epochs,
        "default_epoch_seconds": default["epoch_seconds"],
        "default_traces_by_epoch": default["traces_by_epoch"],
        "default_parameters": default["parameters"],
        "classic_timed_batches": classic["timed_batches"],
        "classic_seconds_per_batch": classic["seconds_per_batch"],
        "classic_full_arrays": classic["full_arrays"],
        "classic_padded_lengths": classic["padded_lengths"],
        "classic_parameters": classic["parameters"],
    })


if __name__ == "__main__":
    main()
