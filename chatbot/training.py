"""``train(corpus, config, out)``: corpus -> tokenizer -> dataset -> fitted model -> bundle.

Training state lives in a hidden work directory beside the output (``.NAME.training/``):
the tokenizer and split fixed at the start, Keras ``BackupAndRestore`` checkpoints, the best
weights and the CSV log. A kill at any moment leaves that directory resumable with
``resume=True`` and leaves the bundle at ``out`` untouched; the bundle is only written, atomically,
once training has finished.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Callable

from .bundle import Bundle
from .config import Config
from .corpus import Corpus, Example, load_corpus, split_examples
from .errors import TrainingError
from .tokenizer import TextTokenizer

log = logging.getLogger(__name__)

STATE = "state.json"


def work_dir_for(out: Path) -> Path:
    return out.parent / f".{out.name}.training"


def train(corpus: str | Path | Corpus, config: Config, out: str | Path, resume: bool = False,
          verbose: int = 1, extra_callbacks: list | None = None,
          on_stage: Callable[[str], None] | None = None) -> Bundle:
    """Train a model and save it as a bundle at ``out``; returns the saved bundle."""
    import keras  # deferred so that importing the package stays fast

    from .dataset import encode_examples, make_dataset
    from .generator import Generator
    from .model import Seq2Seq, compile_model

    stage = on_stage or (lambda message: log.info(message))
    out = Path(out)
    work = work_dir_for(out)
    config = config.validate()

    corpus_obj = corpus if isinstance(corpus, Corpus) else load_corpus(corpus)
    corpus_path = str(corpus_obj.root)
    examples = corpus_obj.examples(config.data.context_turns, config.data.deduplicate)

    if resume:
        state = _read_state(work)
        if state["corpus_sha256"] != corpus_obj.sha256:
            raise TrainingError(f"{work}: the corpus changed since this training started; "
                                "train again without --resume")
        config = Config.from_dict(state["config"])
        tokenizer = TextTokenizer.load(work / "tokenizer.json")
        stage(f"resuming training in {work}")
    else:
        if work.exists():
            log.warning("discarding the unfinished training in %s", work)
            shutil.rmtree(work)
        work.mkdir(parents=True)
        tokenizer = None

    keras.utils.set_random_seed(config.training.seed)
    train_examples, val_examples = split_examples(examples, config.data.validation_fraction,
                                                  config.training.seed)
    if tokenizer is None:
        stage(f"fitting a {config.tokenizer.level} tokenizer on {len(train_examples)} training pairs")
        tokenizer = TextTokenizer.fit(_texts(train_examples), config.tokenizer.level,
                                      config.tokenizer.vocab_size, config.tokenizer.min_frequency)
        tokenizer.save(work / "tokenizer.json")
        (work / STATE).write_text(json.dumps({"config": config.to_dict(), "corpus_sha256": corpus_obj.sha256,
                                              "corpus_path": corpus_path}, indent=2), encoding="utf-8")

    data = config.data
    train_src, train_tgt = encode_examples(train_examples, tokenizer, data.max_input_tokens, data.max_output_tokens)
    train_set = make_dataset(train_src, train_tgt, config.training.batch_size, shuffle=True,
                             seed=config.training.seed)
    val_set = None
    if val_examples:
        val_src, val_tgt = encode_examples(val_examples, tokenizer, data.max_input_tokens, data.max_output_tokens)
        val_set = make_dataset(val_src, val_tgt, config.training.batch_size)
    monitor = config.training.monitor if val_set is not None else "loss"

    model = Seq2Seq(tokenizer.vocab_size, config.model)
    model.build_for_inference()
    compile_model(model, config.training.learning_rate, config.training.clipnorm)
    stage(f"model: {config.model.cell.upper()} {config.model.units} x{config.model.layers}, "
          f"attention {config.model.attention}, {model.count_params():,} parameters, "
          f"vocabulary {tokenizer.vocab_size}")

    best_weights = work / "best.weights.h5"
    log_file = work / "training_log.csv"
    best_so_far = _best_logged(log_file, monitor) if resume else None
    save_freq = config.training.checkpoint_every_steps or "epoch"
    callbacks = [
        keras.callbacks.BackupAndRestore(str(work / "backup"), save_freq=save_freq, double_checkpoint=True),
        keras.callbacks.ModelCheckpoint(str(best_weights), monitor=monitor, save_best_only=True,
                                        save_weights_only=True, initial_value_threshold=best_so_far),
        keras.callbacks.CSVLogger(str(log_file), append=resume),
        keras.callbacks.TerminateOnNaN(),
    ]
    if config.training.lr_decay_patience:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, factor=0.5, patience=config.training.lr_decay_patience, min_lr=1e-5))
    if config.training.early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=config.training.patience))
    callbacks.extend(extra_callbacks or [])

    began = time.perf_counter()
    history = model.fit(train_set, validation_data=val_set, epochs=config.training.epochs,
                        callbacks=callbacks, verbose=verbose, shuffle=False)  # tf.data shuffles
    seconds = time.perf_counter() - began
    if best_weights.exists():
        model.load_weights(best_weights)

    # A clean copy without optimizer state: the bundle holds only what inference needs.
    final = Seq2Seq(tokenizer.vocab_size, config.model)
    final.build_for_inference()
    final.set_weights(model.get_weights())

    stage("measuring the trained model")
    metrics = {
        "epochs_run": len(history.history.get("loss", [])),
        "train_seconds": round(seconds, 1),
        "history": {k: [round(float(v), 5) for v in vs] for k, vs in history.history.items()},
    }
    if val_set is not None:
        val_loss, val_acc = model.evaluate(val_set, verbose=0)
        metrics["validation"] = {"loss": round(float(val_loss), 5),
                                 "perplexity": round(math.exp(min(val_loss, 50.0)), 3),
                                 "token_accuracy": round(float(val_acc), 5)}
    generator = Generator(final, tokenizer, config.data, config.decoding)
    metrics["train_exact_match"] = round(exact_match(generator, train_examples, examples), 5)
    if val_examples:
        metrics["validation"]["exact_match"] = round(exact_match(generator, val_examples, examples), 5)

    bundle = Bundle(config, tokenizer, final, metrics,
                    corpus={"path": corpus_path, "sha256": corpus_obj.sha256, "examples": len(examples),
                            "train": len(train_examples), "validation": len(val_examples),
                            "skipped_entries": len(corpus_obj.skipped)},
                    validation=val_examples)
    bundle.save(out, training_log=log_file)
    shutil.rmtree(work, ignore_errors=True)
    return bundle


def exact_match(generator, examples: list[Example], reference: list[Example]) -> float:
    """Share of distinct inputs whose reply equals one of their answers in ``reference``
    (compared after stripping surrounding whitespace)."""
    accepted: dict[tuple, set[str]] = {}
    for ex in reference:
        accepted.setdefault(ex.context + (ex.question,), set()).add(ex.answer.strip())
    inputs = sorted({ex.context + (ex.question,) for ex in examples})
    if not inputs:
        return 0.0
    replies = generator.generate([list(i) for i in inputs])
    hits = sum(1 for i, r in zip(inputs, replies) if r.text.strip() in accepted.get(i, ()))
    return hits / len(inputs)


def _texts(examples: list[Example]):
    for ex in examples:
        yield from ex.context
        yield ex.question
        yield ex.answer


def _read_state(work: Path) -> dict:
    try:
        return json.loads((work / STATE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainingError(f"nothing to resume: no unfinished training in {work}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainingError(f"{work / STATE}: unreadable training state ({exc})") from None


def _best_logged(log_file: Path, monitor: str) -> float | None:
    """Best monitored value logged before an interruption, so checkpoints keep improving on it."""
    if not log_file.exists():
        return None
    with open(log_file, newline="") as f:
        values = [float(row[monitor]) for row in csv.DictReader(f) if row.get(monitor)]
    return min(values) if values else None

