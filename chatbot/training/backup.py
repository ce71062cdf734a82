"""The training state a killed run resumes from, to the step.

Keras' ``BackupAndRestore`` restores a checkpoint's weights and epoch, not its step: a run killed
within an epoch trained that epoch's first batches a second time, and the step checkpoints it
wrote while a resumed epoch ran named the wrong epoch (it counts epochs from its own start).
``Backup`` saves the weights with the optimizer, the epoch, how many of its batches were trained
and the epoch's running metric sums. A resumed run trains the rest of that epoch, from the next
batch of the same order (``make_dataset`` draws it from the epoch), with the sums put back, so its
weights and logged figures are those of the uninterrupted run; ``fit`` does it in two ``fit``
calls (the rest of the epoch, then the epochs after it) that ``OneTraining`` makes one for the
callbacks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from chatbot.data.corpus import loads_bounded
from chatbot.errors import TrainingError
from chatbot.files import write_atomically

log = logging.getLogger(__name__)

STATE = "state.json"  # names the weights file it goes with: written after it, atomically
FORMAT = 1
# What Keras' BackupAndRestore left (earlier commits of this package): its epoch, no step.
KERAS_STATE, KERAS_WEIGHTS = "training_metadata.json", "latest.weights.h5"


@dataclass(frozen=True)
class Checkpoint:
    """Where a restored training goes on: ``epoch`` (from 0), of which ``steps`` batches are
    trained, from the ``weights`` file (with the optimizer's state) and the epoch's metric ``sums``.
    ``average_in_model``: the weights file holds the moving average in the model's place (an
    epoch's end, ``MovingAverageSwap``); ``stopped``: the training stopped there (early stopping);
    ``seeds``: the dropout layers' random states. ``trained_again``: batches of an earlier
    version's checkpoint that its epoch trains a second time; ``previous``: its checkpoint before
    that one, should that one be damaged."""

    epoch: int
    steps: int
    weights: Path
    sums: list
    average_in_model: bool = False
    stopped: bool = False
    seeds: list | None = None
    trained_again: int = 0
    previous: Checkpoint | None = None


def checkpoint_in(folder: Path) -> Checkpoint | None:
    """The latest checkpoint in ``folder`` (weights not read), or None; ``TrainingError`` for one
    that cannot be read."""
    folder = Path(folder)
    try:
        if (folder / STATE).exists():
            saved = loads_bounded((folder / STATE).read_text(encoding="utf-8"))
            if saved.get("format") != FORMAT:
                raise ValueError(f"format {saved.get('format')!r}; this version reads format {FORMAT}")
            weights = saved["weights"]
            if not isinstance(weights, str) or Path(weights).name != weights or not weights.endswith(".weights.h5"):
                raise ValueError(f"weights {weights!r} is not a file name in the folder")
            return Checkpoint(int(saved["epoch"]), int(saved["steps"]), folder / weights,
                              list(saved.get("metrics") or []), bool(saved.get("average_in_model")),
                              bool(saved.get("stopped")), saved.get("seeds"))
        if (folder / KERAS_STATE).exists():
            previous = _keras_checkpoint(folder, ".bkp") if (folder / f"{KERAS_STATE}.bkp").exists() else None
            return dataclasses.replace(_keras_checkpoint(folder), previous=previous)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise TrainingError(f"{folder}: unreadable training checkpoint ({type(exc).__name__}: {exc}); "
                            "train again without --resume") from None
    return None


def _keras_checkpoint(folder: Path, suffix: str = "") -> Checkpoint:
    """Keras' (``double_checkpoint``: the one before has the suffix ``.bkp``). It saves an
    epoch's end as batch 0, and no step: the epoch starts over."""
    saved = loads_bounded((folder / f"{KERAS_STATE}{suffix}").read_text(encoding="utf-8"))
    batch = int(saved["batch"])
    return Checkpoint(int(saved["epoch"]), 0, folder / f"{KERAS_WEIGHTS}{suffix}", [],
                      trained_again=batch + 1 if batch > 0 else 0)


class MovingAverageSwap(keras.callbacks.SwapEMAWeights):
    """Keras' swap of the weights' moving average (``use_ema``) into the model at each epoch's end,
    for the validation and the best weights, and back as the next epoch begins; it says and is
    told whether the average is in the model, so that a run resumed from an epoch's end swaps
    back as the uninterrupted run did, with the same arithmetic (Keras swaps by adding and
    subtracting, which moves the weights by a rounding error)."""

    def __init__(self):
        super().__init__(swap_on_epoch=True)

    @property
    def average_in_model(self) -> bool:
        return self._ema_weights_in_model

    @average_in_model.setter
    def average_in_model(self, value: bool) -> None:
        self._ema_weights_in_model = value


class Backup(keras.callbacks.Callback):
    """Saves the training state at every epoch's end and, within an epoch, after every
    ``every_steps`` batches and after the first batch that ends ``every_seconds`` after the last
    save (``clock``: seconds); ``restore`` loads the latest into the model. It must come after
    every other callback of the epoch's end, so that a run killed before it repeats the epoch
    and logs it again, where a kill after it and before the log would lose the epoch's row (the
    plateau and early-stopping counters are rebuilt from it) and its chance at the best weights.
    With the moving average on, give it the ``swap``: the epoch's end then holds the average in
    the model, and the checkpoint says so.

    Each save writes a new weights file, then ``state.json`` naming it (an atomic rename), then
    removes the older file: a kill at any moment leaves a state whose weights are whole."""

    def __init__(self, folder: Path, every_steps: int = 0, swap: MovingAverageSwap | None = None, *,
                 every_seconds: float = 0.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.folder = Path(folder)
        self.every_steps, self.every_seconds, self.clock = every_steps, every_seconds, clock
        self.swap = swap
        self._saved_at = clock()
        self._epoch = 0
        self._sums: list | None = None  # the resumed epoch's metric sums before its first batch

    def restore(self, model) -> Checkpoint | None:
        """The latest checkpoint's weights and optimizer into ``model`` (built and compiled); None
        when there is none. One taken within an epoch also brings back that epoch's metric sums."""
        checkpoint = checkpoint_in(self.folder)
        if checkpoint is None:
            return None
        if model.optimizer is not None and not model.optimizer.built:  # its variables are in the file too
            model.optimizer.build(model.trainable_variables)
        while True:
            try:
                _load_weights(model, checkpoint.weights)
                break
            except (OSError, ValueError) as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if checkpoint.previous is None:
                    raise TrainingError(f"{checkpoint.weights}: unreadable training checkpoint ({reason}); "
                                        "train again without --resume") from None
                log.warning("%s is damaged (%s): resuming from the checkpoint before it", checkpoint.weights, reason)
                checkpoint = checkpoint.previous
        return self._restored(model, checkpoint)

    def _restored(self, model, checkpoint: Checkpoint) -> Checkpoint:
        """What else a checkpoint brings back once its weights are loaded."""
        if checkpoint.seeds is not None:
            _assign(_seed_states(model), checkpoint.seeds, "dropout's random states")
        if checkpoint.trained_again:
            log.warning("the last checkpoint (written by an earlier version) was taken after step %d of epoch %d: "
                        "the epoch starts over, and its first %d batches are trained a second time",
                        checkpoint.trained_again, checkpoint.epoch + 1, checkpoint.trained_again)
        if checkpoint.average_in_model:
            if self.swap is None:
                raise TrainingError(f"{self.folder}: the checkpoint holds the weights' moving average, and this "
                                    "training has none (training.ema_momentum); train again without --resume")
            self.swap.average_in_model = True  # swapped back as the next epoch begins
        self._sums = checkpoint.sums if checkpoint.steps else None
        return checkpoint

    def on_train_begin(self, logs=None):
        self._saved_at = self.clock()  # not the set-up before it (tracing, a restore)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._sums is not None:
            # The metrics hold the resumed epoch's first batch alone: the sums of the batches before
            # it are added (x + saved is the uninterrupted run's saved + x, to the bit).
            _assign(self.model.metrics_variables, self._sums,
                    "metric sums (the resumed epoch's figures count only its remaining batches)", add=True)
            self._sums = None
        last = batch + 1 == (self.params or {}).get("steps")  # its end is saved next, as the epoch's
        if last:
            return
        if ((self.every_steps and (batch + 1) % self.every_steps == 0)
                or (self.every_seconds and self.clock() - self._saved_at >= self.every_seconds)):
            self._save(self._epoch, batch + 1, _sums_of(self.model))

    def on_epoch_end(self, epoch, logs=None):
        self._save(epoch + 1, 0, [])

    def _save(self, epoch: int, steps: int, sums: list) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        weights = self.folder / f"epoch{epoch}-step{steps}-{uuid.uuid4().hex[:8]}.weights.h5"
        self.model.save_weights(weights)
        with open(weights, "rb") as f:
            os.fsync(f.fileno())
        average_in_model = self.swap is not None and self.swap.average_in_model
        write_atomically(self.folder / STATE, json.dumps({
            "format": FORMAT, "epoch": epoch, "steps": steps, "weights": weights.name, "metrics": sums,
            "average_in_model": average_in_model, "stopped": bool(steps == 0 and self.model.stop_training),
            "seeds": [np.asarray(state).tolist() for state in _seed_states(self.model)]}))
        self._saved_at = self.clock()
        for old in self.folder.iterdir():
            if old != weights and (old.name.endswith(".weights.h5") or old.name.startswith(KERAS_STATE)
                                   or old.name.startswith(KERAS_WEIGHTS)):
                old.unlink(missing_ok=True)


def _load_weights(model, weights: Path) -> None:
    """``load_weights`` wants a name ending ``.weights.h5``: Keras' ``.bkp`` is read through a copy."""
    if weights.name.endswith(".weights.h5"):
        model.load_weights(weights)
        return
    readable = weights.with_name("previous-keras.weights.h5")  # removed by the next save
    shutil.copyfile(weights, readable)
    model.load_weights(readable)


def _seed_states(model) -> list:
    """The random states of the dropout layers (Keras' seed generators): ``save_weights`` leaves
    them out, and a resumed run without them drew other dropout masks than the uninterrupted one."""
    kept = {id(v) for v in model.weights} | {id(v) for v in model.metrics_variables}
    return [v for v in model.variables if id(v) not in kept]


def _matches(variables: list, values: list) -> bool:
    return len(variables) == len(values) and all(np.shape(value) == tuple(v.shape) for v, value in zip(variables, values))


def _assign(variables: list, values: list, what: str, *, add: bool = False) -> None:
    """``values`` into ``variables`` (``add``: added to what they hold), or a warning that they
    are not the model's."""
    if not _matches(variables, values):
        log.warning("the checkpoint's %s are not the model's: they are not restored", what)
        return
    for variable, value in zip(variables, values):
        value = np.asarray(value, dtype=variable.dtype)
        variable.assign(np.asarray(variable) + value if add else value)


def _sums_of(model) -> list:
    """Every metric's running state, in the model's order: the loss's and the accuracy's total
    and count (Keras' mean metrics; their paths carry per-process numbers)."""
    return [np.asarray(variable).tolist() for variable in model.metrics_variables]


class OneTraining(keras.callbacks.Callback):
    """``callbacks`` through consecutive ``fit`` calls as through one training of ``epochs``:
    begun once (no counter, log or clock starts again), ended by ``finish``, and the batches of
    the epoch resumed at ``first_epoch`` numbered from ``steps_done``, as the uninterrupted run
    numbered them (``params["resumed_at"]``: that epoch and its steps done before). The fits run with
    ``verbose=0``; a ``ProgbarLogger`` among ``callbacks`` shows the progress at ``verbose``."""

    def __init__(self, callbacks: list, first_epoch: int, steps_done: int, epochs: int, steps_per_epoch: int | None,
                 verbose: int):
        super().__init__()
        self.callbacks = callbacks
        self.first_epoch, self.steps_done = first_epoch, steps_done
        self.epochs, self.steps_per_epoch, self.verbose = epochs, steps_per_epoch, verbose
        self._begun = False
        self._epoch = first_epoch
        self._last_logs: dict | None = None

    def _each(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def set_model(self, model):
        super().set_model(model)
        self._each("set_model", model)

    def set_params(self, params):
        super().set_params(params)
        # The training's end and the epoch's whole length, also during the fit that trains the
        # rest of an epoch (``SwapEMAWeights`` takes that fit's end for the training's), and the
        # verbosity for a ``ProgbarLogger`` among them (the fits run quiet, else Keras adds its own).
        self._each("set_params", {**params, "epochs": self.epochs, "steps": self.steps_per_epoch or params.get("steps"),
                                  "verbose": self.verbose, "resumed_at": [self.first_epoch, self.steps_done]})

    def on_train_begin(self, logs=None):
        if not self._begun:
            self._begun = True
            self._each("on_train_begin", logs)

    def on_train_end(self, logs=None):
        pass  # ``finish``, after the last fit

    def finish(self) -> None:
        self._each("on_train_end", self._last_logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._each("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._last_logs = logs  # for the training's end, as Keras gives it
        self._each("on_epoch_end", epoch, logs)

    def _step(self, batch: int) -> int:
        return batch + self.steps_done if self._epoch == self.first_epoch else batch

    def on_train_batch_begin(self, batch, logs=None):
        self._each("on_train_batch_begin", self._step(batch), logs)

    def on_train_batch_end(self, batch, logs=None):
        self._each("on_train_batch_end", self._step(batch), logs)

    def on_test_begin(self, logs=None):
        self._each("on_test_begin", logs)

    def on_test_end(self, logs=None):
        self._each("on_test_end", logs)

    def on_test_batch_begin(self, batch, logs=None):
        self._each("on_test_batch_begin", batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        self._each("on_test_batch_end", batch, logs)

    def on_predict_begin(self, logs=None):
        self._each("on_predict_begin", logs)

    def on_predict_end(self, logs=None):
        self._each("on_predict_end", logs)

    def on_predict_batch_begin(self, batch, logs=None):
        self._each("on_predict_batch_begin", batch, logs)

    def on_predict_batch_end(self, batch, logs=None):
        self._each("on_predict_batch_end", batch, logs)


@contextlib.contextmanager
def unfinished(model):
    """A ``fit`` that is not the training's last: Keras ends every ``fit`` by writing the weights'
    moving average over them (``use_ema``), which must happen once, at the very end."""
    optimizer = model.optimizer
    optimizer.finalize_variable_values = lambda variables: None
    try:
        yield
    finally:
        del optimizer.finalize_variable_values
