"""Training speed of ``chatbot train`` as users run it, where its time goes, and how soon it
learns the corpus; against the classic Keras character-level seq2seq example on the same pairs.

    python bench/train_speed.py                 # 3 epochs of the default recipe + the classic example
    python bench/train_speed.py --profile       # ... and the top 25 functions by cumulative time
    python bench/train_speed.py --to-quality    # the whole default recipe from scratch, probed
    python bench/train_speed.py --quick         # smoke run (tiny corpus and model), no results file

The project side is the real training path, ``chatbot.training.pipeline.train(corpus, config,
out)`` with ``models/default.toml`` (retrieved pairs, noisy copies, spelling, copy attention)
and ``training.epochs`` set to ``--epochs``: the tokenizer, the answer memory and its sentence
embeddings, the augmented and encoded inputs, ``model.fit`` with the pipeline's own callbacks
(backup, best checkpoint, CSV and TensorBoard logs, NaN check, LR decay, early stopping), the
end-of-training evaluation and the bundle save. Nothing in it is changed: the pipeline's steps,
the callbacks' hooks and a few inner functions are wrapped in place to time them (``Timings``,
``FitTimer``). Each epoch's wall time is split into train steps, callback hooks (by callback)
and validation; the first epoch, which traces the train function, is left out of the rates.

samples/s is given two ways: training inputs per second (what the model trains on per epoch:
each pair as written and in noisy copies, each alone and beside what retrieval finds, e.g.
9,408 inputs from 1,176 pairs) and corpus pairs per second. The speed target (``TARGETS``) is
judged on training inputs/s over whole epochs, callbacks included: one training input is one
source/target sequence pair through a forward and backward pass, the same unit as one sample
of the classic example, and an epoch with its callbacks is what ``chatbot train`` costs. How
many inputs the recipe makes of a pair is a choice made for quality, which ``--to-quality``
judges by the time it takes to learn the corpus; pairs/s and its ratio are reported beside it.

The classic side is the keras-io ``lstm_seq2seq`` recipe on the same pairs (one-hot inputs
padded to the longest question and answer, LSTM 256, batch 64): ``--warmup-batches`` untimed
batches, then ``--steps`` timed ones. Each side runs in a subprocess of its own (this script
re-invoked with a hidden ``--child`` flag), so that each reports the peak resident memory of a
process that only ever held that model and its data; the memory target is judged on the whole
``train`` call.

``--to-quality`` trains the full default recipe from scratch (all its epochs, early stopping as
configured) and every ``--probe-every`` epochs measures exact match on a fixed seeded sample of
200 training questions, greedy, through the public reply path (``evaluation.exact_match`` on a
``ChatBot`` whose ``Generator`` decodes with the model being trained, as ``assemble`` does at
the end). It reports the wall time since the start of ``train``, probes excluded, at which the
sample first reaches ``QUALITY_TARGETS``' exact match, and the final figures; it writes
``bench/results/train_speed_to_quality.json``, leaving the speed figures alone.

Progress goes to stderr; the figures are one JSON object on the last line of stdout, also
written to ``bench/results/train_speed.json`` by a full run (``--profile``: the profile goes
to ``bench/results/train_speed_profile.txt``; its run's times include cProfile's overhead).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before anything imports TensorFlow

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from pathlib import Path

from _common import DEFAULT_CONFIG, DEFAULT_CORPUS, RESULTS, emit, log, peak_rss_mb, training_pairs

TARGETS = {"speedup_min": 20, "peak_mb_max": 2048}  # speed-up judged on training inputs/s
QUALITY_TARGETS = {"train_exact_min": 0.99, "seconds_max": 600}  # from scratch, on 2 cores
CLASSIC_BATCH = 64  # keras-io lstm_seq2seq
CLASSIC_UNITS = 256  # keras-io lstm_seq2seq latent_dim
PROBE_QUESTIONS = 200
# --quick: a smoke run of the same code paths, not a measurement. The default recipe on a few
# pairs with a tiny network; short decoding so the untrained model's evaluation ends soon.
QUICK_PAIRS = 24
QUICK_OVERRIDES = {"model.units": 32, "model.embedding_dim": 16, "tokenizer.vocab_size": 300,
                   "data.max_output_tokens": 64, "decoding.max_length": 24}
# Callback hooks timed by FitTimer (each only where the callback defines it).
HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_train_batch_begin",
         "on_train_batch_end", "on_batch_begin", "on_batch_end", "on_test_begin", "on_test_end",
         "on_test_batch_begin", "on_test_batch_end")


# --- timing the pipeline in place -------------------------------------------------------------
class Timings:
    """Seconds spent in named functions, by path of nested timed calls ("build > augmentation >
    retrieval"), measured by replacing the functions with timed wrappers for the duration of
    ``patched``: ``train`` runs its own code, only slower by a call per timed function."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._local = threading.local()

    @contextmanager
    def patched(self, owner, name: str, label: str, after=None):
        """Time ``owner.name`` (a module function or a class's method) as ``label``; ``after(args,
        result)`` sees each call's arguments and result."""
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            stack = self._local.__dict__.setdefault("stack", [])
            if stack and stack[-1] == label:  # retrieve_each calls retrieve: time the outer call only
                return original(*args, **kwargs)
            path = " > ".join([*stack, label])
            stack.append(label)
            began = time.perf_counter()
            try:
                result = original(*args, **kwargs)
            finally:
                self.seconds[path] += time.perf_counter() - began
                self.calls[path] += 1
                stack.pop()
            if after is not None:
                after(args, result)
            return result

        setattr(owner, name, timed)
        try:
            yield
        finally:
            setattr(owner, name, original)

    def get(self, *paths: str) -> float:
        return sum(self.seconds.get(p, 0.0) for p in paths)


def _make_fit_timer():
    """Built on demand: the marker callbacks need Keras, which is imported lazily."""
    import keras

    class Mark(keras.callbacks.Callback):
        """First and last in the callback list: an epoch runs from the first mark's
        ``on_epoch_begin`` to the last one's ``on_epoch_end``, validation likewise."""

        async_safe = True  # its batch hook only counts, so it does not make Keras wait for logs

        def __init__(self, timer, first: bool):
            super().__init__()
            self.timer, self.first = timer, first

        def on_epoch_begin(self, epoch, logs=None):
            if self.first:
                self.timer.epoch_began(epoch)

        def on_epoch_end(self, epoch, logs=None):
            if not self.first:
                self.timer.epoch_ended(logs or {})

        def on_test_begin(self, logs=None):
            if self.first:
                self.timer.validating_since = time.perf_counter()

        def on_test_end(self, logs=None):
            if not self.first and self.timer.validating_since is not None:
                self.timer.current["validation_s"] += time.perf_counter() - self.timer.validating_since
                self.timer.validating_since = None

        def on_train_batch_end(self, batch, logs=None):
            if not self.first and self.timer.current is not None:
                self.timer.current["batches"] += 1

    class FitTimer:
        """Wraps the hooks each callback defines (``HOOKS``) with timers and brackets the list
        with two ``Mark``s. A hook Keras treats as a default one (``_is_default``) is left
        alone: Keras only dispatches batch ends asynchronously when every callback leaves them
        so, and timing must not change that."""

        def __init__(self):
            self.epochs: list[dict] = []
            self.current: dict | None = None
            self.validating_since: float | None = None
            self.outside: dict[str, float] = defaultdict(float)  # hooks outside epochs, by hook name
            self.traces = lambda: None  # set by run_pipeline: train_step traces so far

        def wrap(self, callbacks: list) -> list:
            for callback in callbacks:
                for hook in HOOKS:
                    method = getattr(callback, hook, None)
                    if method is not None and not getattr(method, "_is_default", False):
                        setattr(callback, hook, self._timed(type(callback).__name__, hook, method))
            return [Mark(self, True), *callbacks, Mark(self, False)]

        def _timed(self, name: str, hook: str, method):
            depth = [0]  # on_train_batch_end calls on_batch_end: count the outer call only

            def timed(*args, **kwargs):
                depth[0] += 1
                began = time.perf_counter()
                try:
                    return method(*args, **kwargs)
                finally:
                    depth[0] -= 1
                    if depth[0] == 0:
                        self._add(name, hook, time.perf_counter() - began)

            return timed

        def _add(self, name: str, hook: str, seconds: float) -> None:
            if self.current is None:
                self.outside[hook] += seconds
            elif self.validating_since is not None:
                pass  # within the validation window, which is timed as a whole
            else:
                self.current["callbacks"][name] += seconds

        def epoch_began(self, epoch: int) -> None:
            self.current = {"epoch": epoch + 1, "began": time.perf_counter(), "validation_s": 0.0,
                            "batches": 0, "callbacks": defaultdict(float)}

        def epoch_ended(self, logs: dict) -> None:
            e = self.current
            wall = time.perf_counter() - e.pop("began")
            callbacks = sum(e["callbacks"].values())
            record = {"epoch": e["epoch"], "wall_s": round(wall, 3),
                      "steps_s": round(wall - callbacks - e["validation_s"], 3),
                      "callbacks_s": round(callbacks, 3), "validation_s": round(e["validation_s"], 3),
                      "batches": e["batches"], "loss": round(float(logs.get("loss", float("nan"))), 5),
                      "train_step_traces": self.traces(),
                      "by_callback": {k: round(v, 3) for k, v in sorted(e["callbacks"].items(),
                                                                         key=lambda kv: -kv[1])}}
            self.epochs.append(record)
            self.current = None
            top = ", ".join(f"{k} {v:.2f}" for k, v in list(record["by_callback"].items())[:4])
            log(f"default: epoch {record['epoch']}: {wall:.1f}s = steps {record['steps_s']:.1f} + callbacks "
                f"{callbacks:.2f} ({top}) + validation {e['validation_s']:.1f}; {record['batches']} batches, "
                f"loss {record['loss']:.4f}, train function traced {record['train_step_traces']} times so far")

    return FitTimer()


@contextmanager
def instrumented(timings: Timings, fit_timer, captured: dict):
    """Time ``train``'s steps and the inner work of ``build`` (answer memory, spelling,
    augmentation with its embeddings, retrieval lookups and noise, encoding); keep the plan,
    the inputs count and the model as they pass; wrap the callbacks ``fit`` hands to Keras."""
    import chatbot.data.dataset as dataset
    import chatbot.training.pipeline as pipeline
    from chatbot.data.spelling import Speller
    from chatbot.inference.retrieval import AnswerMemory
    from chatbot.inference.sentence_encoder import SentenceEncoder

    def built(args, result):
        captured["plan"] = args[0]
        model = result[0]
        captured["model"] = model
        step, traces = model.train_step, [0]

        def counted_train_step(data):  # its Python body only runs while Keras traces it
            traces[0] += 1
            return step(data)

        model.train_step = counted_train_step
        fit_timer.traces = lambda: traces[0]
        fit = model.fit

        def timed_fit(*fit_args, callbacks=None, **kwargs):
            return fit(*fit_args, callbacks=fit_timer.wrap(list(callbacks or [])), **kwargs)

        model.fit = timed_fit

    def augmented(args, result):
        captured["inputs"] = len(result[0])

    with ExitStack() as stack:
        for owner, name, label, after in (
                (pipeline, "plan_run", "plan_run", None), (pipeline, "prepare_tokenizer", "tokenizer", None),
                (pipeline, "build", "build", built), (pipeline, "fit", "fit", None),
                (pipeline, "assemble", "evaluation", None), (pipeline, "install", "bundle save", None),
                (pipeline, "memory_for", "answer memory", None), (pipeline, "speller_for", "speller", None),
                (pipeline, "augment", "augmentation", augmented), (pipeline, "noisy", "noise", None),
                (dataset, "encode_examples", "encoding", None), (dataset, "make_dataset", "tf.data", None),
                (SentenceEncoder, "encode", "sentence embeddings", None),
                (AnswerMemory, "retrieve", "retrieval", None), (AnswerMemory, "retrieve_each", "retrieval", None),
                (Speller, "correct", "spelling", None)):
            stack.enter_context(timings.patched(owner, name, label, after))
        yield


def phases(t: Timings, total: float, fit_timer) -> dict:
    """Where the time of ``train`` went, in the order it is spent (seconds)."""
    build = t.get("build")
    memory = t.get("build > answer memory")
    speller = t.get("build > speller")
    augmentation = t.get("build > augmentation")
    encoding = t.get("build > encoding", "build > tf.data")
    epochs = sum(e["wall_s"] for e in fit_timer.epochs)
    return {
        "corpus_and_tokenizer": round(t.get("plan_run", "tokenizer"), 2),
        "answer_memory": round(memory, 2),  # loading the sentence encoder, embedding the questions
        "answer_memory_embeddings": round(t.get("build > answer memory > sentence embeddings"), 2),
        "spelling_setup": round(speller, 2),
        "augmentation": round(augmentation, 2),
        "augmentation_embeddings": round(t.get("build > augmentation > sentence embeddings"), 2),
        "augmentation_retrieval": round(t.get("build > augmentation > retrieval"), 2),
        "augmentation_spelling": round(t.get("build > augmentation > spelling"), 2),
        "augmentation_noise": round(t.get("build > augmentation > noise"), 2),
        "encoding": round(encoding, 2),  # token ids (training and validation) and the tf.data pipelines
        "validation_inputs": round(t.get("build > retrieval", "build > spelling"), 2),
        "model_build": round(build - memory - speller - augmentation - encoding
                             - t.get("build > retrieval", "build > spelling"), 2),
        "fit": round(t.get("fit"), 2),
        "fit_callbacks_before_first_epoch": round(fit_timer.outside.get("on_train_begin", 0.0), 2),
        "fit_epochs": round(epochs, 2),
        "fit_callbacks_after_last_epoch": round(fit_timer.outside.get("on_train_end", 0.0), 2),
        # Keras' own set-up before the callbacks start (train function, iterators), reloading the best weights
        "fit_other": round(t.get("fit") - epochs - sum(fit_timer.outside.values()), 2),
        "evaluation": round(t.get("evaluation"), 2),  # end-of-training exact match ("measuring the trained model")
        "bundle_save": round(t.get("bundle save"), 2),
        "total": round(total, 2),
    }


# --- (a) the project's own pipeline ----------------------------------------------------------
def project_config(args, epochs: int | None):
    from chatbot.config import Config

    overrides = dict(QUICK_OVERRIDES) if args.quick else {}
    if epochs is not None:
        overrides["training.epochs"] = epochs
    return Config.load(args.config).with_overrides(overrides)


def run_pipeline(args, config, extra_callbacks=(), probe=None) -> dict:
    """``train(corpus, config, out)`` into a temporary directory, timed; ``--profile`` wraps it
    in cProfile."""
    from chatbot.training.pipeline import train

    timings, fit_timer, captured = Timings(), _make_fit_timer(), {}
    if probe is not None:
        probe.captured = captured
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory(prefix="train_speed.") as tmp, instrumented(timings, fit_timer, captured):
        began = time.perf_counter()
        if probe is not None:
            probe.began = began
        if profiler is not None:
            profiler.enable()
        bundle = train(args.corpus, config, Path(tmp) / "model", verbose=0, extra_callbacks=list(extra_callbacks),
                       on_stage=lambda message: log(f"default: {message}"))
        if profiler is not None:
            profiler.disable()
        total = time.perf_counter() - began
        if args.keep:  # the trained bundle, kept to be measured further (bench/robustness.py)
            shutil.copytree(Path(tmp) / "model", args.keep, dirs_exist_ok=False)
    if profiler is not None:
        write_profile(profiler, Path(args.profile_out))
    plan = captured["plan"]
    return {"bundle": bundle, "plan": plan, "inputs": captured["inputs"], "epochs": fit_timer.epochs,
            "phases_s": phases(timings, total, fit_timer),
            "timed_calls": {path: [round(s, 3), timings.calls[path]] for path, s in timings.seconds.items()},
            "parameters": int(captured["model"].count_params())}


def write_profile(profiler, out: Path) -> None:
    import io
    import pstats

    text = io.StringIO()
    text.write(f"# python {' '.join(['bench/train_speed.py', *sys.argv[1:]])}\n"
               "# cProfile of the whole train() call, top 25 by cumulative time. Work that TensorFlow runs "
               "in its own threads (the compiled train step, tf.data) is counted in the Python call that "
               "waits for it.\n")
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text.getvalue(), encoding="utf-8")
    log(f"profile written to {out}")


def rates(epochs: list[dict], inputs: int, pairs: int) -> dict:
    """Inputs and pairs per second over the measured epochs (all but the first, which traces;
    the only one when there is one), on whole epochs and on train steps alone."""
    measured = epochs[1:] or epochs
    wall = sum(e["wall_s"] for e in measured)
    steps = sum(e["steps_s"] for e in measured)
    n = len(measured)
    return {"inputs_per_s": round(inputs * n / wall, 2), "pairs_per_s": round(pairs * n / wall, 2),
            "steps_only_inputs_per_s": round(inputs * n / steps, 2),
            "steps_only_pairs_per_s": round(pairs * n / steps, 2),
            "measured_epochs": [e["epoch"] for e in measured]}


def run_default(args) -> dict:
    config = project_config(args, args.epochs)
    log(f"default: the default recipe for {args.epochs} epochs through pipeline.train")
    run = run_pipeline(args, config)
    pairs = len(run["plan"].train)
    return {**rates(run["epochs"], run["inputs"], pairs), "peak_mb": peak_rss_mb(), "train_pairs": pairs,
            "inputs_per_epoch": run["inputs"], "phases_s": run["phases_s"], "epochs": run["epochs"],
            "timed_calls": run["timed_calls"], "parameters": run["parameters"],
            "vocab_size": run["plan"].tokenizer.vocab_size,
            "train_exact_match": run["bundle"].metrics.get("train_exact_match")}


def _make_probe(every: int, questions: int, seed: int):
    """Built on demand: the callback class needs Keras, which is imported lazily."""
    import keras

    class QualityProbe(keras.callbacks.Callback):
        """Every ``every`` epochs (and at the last), exact match on a fixed seeded sample of
        distinct training questions, through ``exact_match`` on a ``ChatBot`` built once around
        the training model (its ``Generator`` decodes greedily with the current weights)."""

        def __init__(self):
            super().__init__()
            self.records: list[dict] = []
            self.probe_seconds = 0.0
            self.reached: dict | None = None
            self.captured: dict = {}
            self.sample: list = []
            self.began = time.perf_counter()
            self._bot = None

        def on_epoch_end(self, epoch, logs=None):
            last = epoch + 1 == self.params["epochs"] or self.model.stop_training
            if (epoch + 1) % every and not last:
                return
            from chatbot.evaluation.evaluate import exact_match
            from chatbot.training.pipeline import reference_for

            began = time.perf_counter()
            plan = self.captured["plan"]
            if self._bot is None:
                self._bot, self.sample = self._build(plan)
                self.reference = reference_for(plan, self.sample)
            # Greedy whatever the recipe's decoding, as the training summary: the probe follows what
            # the network learned, and a half-trained network's beams run to max_length (beam 8:
            # 200 s a probe).
            exact = exact_match(self._bot, self.sample, self.reference, {"strategy": "greedy"})
            seconds = time.perf_counter() - began
            at = began - self.began - self.probe_seconds  # wall time of train() so far, probes excluded
            self.probe_seconds += seconds
            record = {"epoch": epoch + 1, "train_exact_sample": round(exact, 4), "at_s": round(at, 1),
                      "loss": round(float((logs or {}).get("loss", float("nan"))), 5), "probe_s": round(seconds, 1)}
            self.records.append(record)
            if self.reached is None and exact >= QUALITY_TARGETS["train_exact_min"]:
                self.reached = record
            log(f"probe: epoch {epoch + 1}: exact {exact:.3f} on {len(self.sample)} training questions at "
                f"{at:.0f}s (probe {seconds:.1f}s)")

        def _build(self, plan):
            from chatbot.dialogue.bot import ChatBot
            from chatbot.model.bundle import Bundle

            vectors = None
            if plan.memory is not None and plan.memory.vectors is not None:
                vectors = (plan.memory.vectors, plan.memory.fingerprint)
            bundle = Bundle(plan.config, plan.tokenizer, self.model, train=list(plan.train), question_vectors=vectors)
            distinct = {}
            for example in plan.train:
                distinct.setdefault((example.context, example.question), example)
            keys = sorted(distinct)
            chosen = random.Random(seed).sample(keys, min(questions, len(keys)))
            return ChatBot(bundle, warm_up=False), [distinct[k] for k in chosen]

    return QualityProbe()


def run_quality(args) -> dict:
    epochs = args.epochs if args.quick else None  # the whole recipe, early stopping as configured
    config = project_config(args, epochs)
    probe = _make_probe(args.probe_every, PROBE_QUESTIONS, config.training.seed)
    log(f"quality: the default recipe from scratch ({config.training.epochs} epochs at most), exact match on "
        f"{PROBE_QUESTIONS} training questions every {args.probe_every} epochs")
    run = run_pipeline(args, config, [probe], probe)
    metrics = run["bundle"].metrics
    reached = probe.reached
    total = run["phases_s"]["total"] - probe.probe_seconds
    return {"reached_at_s": reached and reached["at_s"], "reached_at_epoch": reached and reached["epoch"],
            "final_train_exact_match": metrics.get("train_exact_match"), "epochs_run": metrics["epochs_run"],
            "total_s_without_probes": round(total, 1), "fit_s_with_probes": metrics["train_seconds"],
            "probes": probe.records, "probe_questions": len(probe.sample), "probe_s": round(probe.probe_seconds, 1),
            "peak_mb": peak_rss_mb(), "train_pairs": len(run["plan"].train), "inputs_per_epoch": run["inputs"],
            "phases_s": run["phases_s"], "epochs": run["epochs"]}


# --- (b) the classic keras-io lstm_seq2seq example --------------------------------------------
def run_classic(args) -> dict:
    """The keras-io ``lstm_seq2seq`` recipe, unchanged except for the data.

    One-hot float32 arrays padded to the longest question/answer of the whole training set
    are the example's memory cost, so they are built for the full set. Under ``--quick`` only
    enough rows for the measured batches are built (cycling over the few pairs), still padded
    to their full widths, so the peak memory is not representative (``classic_full_arrays``).
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
    if batches > available and not args.quick:
        raise SystemExit(f"--warmup-batches + --steps = {batches} exceeds the {available} batches of data")
    rows = batches * CLASSIC_BATCH if args.quick else len(train)
    log(f"classic: {len(train)} pairs, one-hot arrays for {rows} rows: encoder {max_encoder_len} x "
        f"{num_encoder_tokens}, decoder {max_decoder_len} x {num_decoder_tokens} "
        f"(~{rows * 4 * (max_encoder_len * num_encoder_tokens + 2 * max_decoder_len * num_decoder_tokens) / 2**20:,.0f} MiB)")

    encoder_input = np.zeros((rows, max_encoder_len, num_encoder_tokens), dtype="float32")
    decoder_input = np.zeros((rows, max_decoder_len, num_decoder_tokens), dtype="float32")
    decoder_target = np.zeros((rows, max_decoder_len, num_decoder_tokens), dtype="float32")
    for i in range(rows):
        input_text, target_text = input_texts[i % len(train)], target_texts[i % len(train)]
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


# --- parent: one subprocess per side ----------------------------------------------------------
def quick_corpus(corpus: str, folder: Path, seed: int) -> Path:
    """A seeded sample of ``QUICK_PAIRS`` of the corpus' pairs, as JSONL (answers may span lines)."""
    from chatbot.data.corpus import load_corpus

    examples = load_corpus(corpus).examples(0, True)
    chosen = random.Random(seed).sample(examples, min(QUICK_PAIRS, len(examples)))
    path = folder / "quick.jsonl"
    path.write_text("".join(json.dumps({"question": e.question, "answer": e.answer}) + "\n" for e in chosen),
                    encoding="utf-8")
    return path


def child_result(name: str, args, corpus: str) -> dict:
    """Run one side in a fresh interpreter; its last stdout line is its JSON result."""
    if Path(corpus).resolve().is_relative_to(Path.cwd()):  # bundles record the path as given
        corpus = os.path.relpath(corpus)
    command = [sys.executable, os.path.abspath(__file__), "--child", name, "--config", str(args.config),
               "--corpus", corpus, "--epochs", str(args.epochs), "--steps", str(args.steps),
               "--warmup-batches", str(args.warmup_batches), "--probe-every", str(args.probe_every),
               "--profile-out", str(args.profile_out)]
    command += ["--quick"] * args.quick + ["--profile"] * (args.profile and name != "classic")
    command += ["--keep", str(Path(args.keep).resolve())] if args.keep and name != "classic" else []
    log(f"starting the {name} run")
    began = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # stderr passes through
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise SystemExit(f"the {name} run failed (exit {done.returncode})")
    log(f"{name} run done in {time.perf_counter() - began:.0f}s")
    return json.loads(lines[-1])


def speed_result(args, default: dict, classic: dict) -> dict:
    by_inputs = default["inputs_per_s"] / classic["samples_per_s"]
    by_pairs = default["pairs_per_s"] / classic["samples_per_s"]
    log(f"default: {default['inputs_per_s']} training inputs/s ({default['inputs_per_epoch']:,} per epoch), "
        f"{default['pairs_per_s']} pairs/s ({default['train_pairs']:,}); classic {classic['samples_per_s']} "
        f"samples/s; ratio {by_inputs:.2f}x by inputs (judged), {by_pairs:.2f}x by pairs; peak "
        f"{default['peak_mb']} MB / {classic['peak_mb']} MB")
    return {
        "speedup": round(by_inputs, 2),  # judged: training inputs/s (see the docstring)
        "speedup_by_pairs": round(by_pairs, 2),
        "default_inputs_per_s": default["inputs_per_s"],
        "default_pairs_per_s": default["pairs_per_s"],
        "default_peak_mb": default["peak_mb"],
        "classic_samples_per_s": classic["samples_per_s"],
        "classic_peak_mb": classic["peak_mb"],
        "targets": TARGETS,
        "pass": by_inputs >= TARGETS["speedup_min"] and default["peak_mb"] <= TARGETS["peak_mb_max"],
        "quick": args.quick,
        "profiled": args.profile,  # cProfile slows the Python parts: do not quote a profiled run's times
        "profile": str(args.profile_out) if args.profile else None,
        "train_pairs": default["train_pairs"],
        "default_inputs_per_epoch": default["inputs_per_epoch"],
        "default_epochs": args.epochs,
        "default_measured_epochs": default["measured_epochs"],
        "default_steps_only_inputs_per_s": default["steps_only_inputs_per_s"],
        "default_steps_only_pairs_per_s": default["steps_only_pairs_per_s"],
        "default_phases_s": default["phases_s"],
        "default_epoch_detail": default["epochs"],
        "default_timed_calls": default["timed_calls"],  # path -> [seconds, calls]
        "default_parameters": default["parameters"],
        "default_vocab_size": default["vocab_size"],
        "default_train_exact_match": default["train_exact_match"],  # after only --epochs epochs
        "classic_timed_batches": classic["timed_batches"],
        "classic_seconds_per_batch": classic["seconds_per_batch"],
        "classic_full_arrays": classic["full_arrays"],
        "classic_padded_lengths": classic["padded_lengths"],
        "classic_parameters": classic["parameters"],
    }


def quality_result(args, quality: dict) -> dict:
    reached = quality["reached_at_s"]
    ok = reached is not None and reached <= QUALITY_TARGETS["seconds_max"]
    log(f"quality: exact >= {QUALITY_TARGETS['train_exact_min']} on the sample "
        + (f"at {reached:.0f}s (epoch {quality['reached_at_epoch']})" if reached is not None else "never")
        + f"; final train exact {quality['final_train_exact_match']} after {quality['epochs_run']} epochs, "
        f"{quality['total_s_without_probes']:.0f}s without probes")
    return {"reached_at_s": reached, "reached_at_epoch": quality["reached_at_epoch"],
            "targets": QUALITY_TARGETS, "pass": ok, "quick": args.quick, "profiled": args.profile,
            "profile": str(args.profile_out) if args.profile else None,
            **{k: v for k, v in quality.items() if k not in ("reached_at_s", "reached_at_epoch")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="the recipe of (a) [models/default.toml]")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="training corpus [corpora/english]")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of (a); the first is left out of the rates [3; --quick: 1, "
                             "--quick --to-quality: 2]")
    parser.add_argument("--steps", type=int, default=8, help="timed batches of (b) [8; --quick: 2]")
    parser.add_argument("--warmup-batches", type=int, default=1, help="untimed first batches of (b) [1]")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile (a): top 25 functions by cumulative time, in bench/results/"
                             "train_speed_profile.txt (--quick: a temporary file)")
    parser.add_argument("--to-quality", action="store_true",
                        help="train the whole recipe from scratch, probing training exact match; no classic run")
    parser.add_argument("--probe-every", type=int, default=2,
                        help="--to-quality: epochs between probes [2; --quick: 1]")
    parser.add_argument("--keep", metavar="DIR", help="copy the bundle trained by (a) to DIR (must not exist)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_PAIRS} pairs, a tiny network, 1 epoch of (a), 2 timed batches "
                             "of (b); writes no results file")
    parser.add_argument("--child", choices=("default", "classic", "quality"), help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = {"default": run_default, "classic": run_classic, "quality": run_quality}[args.child](args)
        print(json.dumps(result), flush=True)  # for the parent only: not emit(), which would write results
        return

    if args.epochs is None:
        args.epochs = (2 if args.to_quality else 1) if args.quick else 3
    if args.quick:
        args.steps, args.probe_every = min(args.steps, 2), min(args.probe_every, 1)
    if args.epochs < (1 if args.quick else 2):
        parser.error("--epochs must be >= 2 (the first epoch is left out of the rates)")
    if args.steps < 1 or args.warmup_batches < 0 or args.probe_every < 1:
        parser.error("--steps and --probe-every must be >= 1, --warmup-batches >= 0")
    name = "train_speed_to_quality" if args.to_quality else "train_speed"
    if Path(args.config).resolve() != Path(DEFAULT_CONFIG).resolve():  # another recipe: its own file
        name += f"_{Path(args.config).stem}"
    with tempfile.TemporaryDirectory(prefix="train_speed.") as tmp:
        args.profile_out = (Path(tmp).parent / f"{name}_profile.quick.txt" if args.quick
                            else RESULTS / f"{name}_profile.txt")
        corpus = str(quick_corpus(args.corpus, Path(tmp), 1234)) if args.quick else str(args.corpus)
        if args.to_quality:
            result = quality_result(args, child_result("quality", args, corpus))
        else:
            result = speed_result(args, child_result("default", args, corpus), child_result("classic", args, corpus))
    if args.quick:
        result["partial"] = True  # a smoke run does not replace the committed figures
    emit(result, name)


if __name__ == "__main__":
    main()
