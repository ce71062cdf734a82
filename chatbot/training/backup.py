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
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

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
    epoch's end, ``MovingAverageSwap``). ``trained_again``: batches of an earlier version's
    checkpoint that its epoch trains a second time."""

    epoch: int
    steps: int
    weights: Path
    sums: list
    average_in_model: bool = False
    trained_again: int = 0


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
                              list(saved.get("metrics") or []), bool(saved.get("average_in_model")))
        if (folder / KERAS_STATE).exists():  # Keras saves an epoch's end as batch 0, and no step
            saved = loads_bounded((folder / KERAS_STATE).read_text(encoding="utf-8"))
            batch = int(saved["batch"])
            return Checkpoint(int(saved["epoch"]), 0, folder / KERAS_WEIGHTS, [], trained_again=batch + 1 if batch > 0 else 0)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise TrainingError(f"{folder}: unreadable training checkpoint ({type(exc).__name__}: {exc}); "
                            "train again without --resume") from None
    return None


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
    """Saves the training state at every epoch's end and, with ``every_steps``, after every that
    many batches of an epoch; ``restore`` loads the latest into the model. It must come after
    every other callback of the epoch's end, so that a run killed before it repeats the epoch
    and logs it again, where a kill after it and before the log would lose the epoch's row (the
    plateau and early-stopping counters are rebuilt from it) and its chance at the best weights.
    With the moving average on, give it the ``swap``: the epoch's end then holds the average in
    the model, and the checkpoint says so.

    Each save writes a new weights file, then ``state.json`` naming it (an atomic rename), then
    removes the older file: a kill at any moment leaves a state whose weights are whole."""

    def __init__(self, folder: Path, every_steps: int = 0, swap: MovingAverageSwap | None = None):
        super().__init__()
        self.folder = Path(folder)
        self.every_steps = every_steps
        self.swap = swap
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
        try:
            model.load_weights(checkpoint.weights)
        except (OSError, ValueError) as exc:
            raise TrainingError(f"{checkpoint.weights}: unreadable training checkpoint "
                                f"({str(exc).strip().splitlines()[0]}); train again without --resume") from None
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

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._sums is not None:  # the resumed epoch's first batch is counted: add the ones before it
            _add_sums(self.model, self._sums)
            self._sums = None
        last = batch + 1 == (self.params or {}).get("steps")  # its end is saved next, as the epoch's
        if self.every_steps and (batch + 1) % self.every_steps == 0 and not last:
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
        write_atomically(self.folder / STATE, json.dumps({"format": FORMAT, "epoch": epoch, "steps": steps,
                                                          "weights": weights.name, "metrics": sums,
                                                          "average_in_model": average_in_model}))
        for old in self.folder.iterdir():
            if old != weights and (old.name.endswith(".weights.h5") or old.name.startswith(KERAS_STATE)
                                   or old.name.startswith(KERAS_WEIGHTS)):
                old.unlink(missing_ok=True)


def _sums_of(model) -> list:
    """Every metric's running state, in the model's order: the loss's and the accuracy's total
    and count (Keras' mean metrics; their paths carry per-process numbers)."""
    return [np.asarray(variable).tolist() for variable in model.metrics_variables]


def _add_sums(model, sums: list) -> None:
    """Adds the sums of an epoch's batches before a resume to those of the batch after it, which
    hold that batch alone: x + saved is the uninterrupted run's saved + x, to the bit."""
    variables = model.metrics_variables
    if len(variables) != len(sums) or any(np.shape(value) != tuple(v.shape) for v, value in zip(variables, sums)):
        log.warning("the checkpoint's metrics are not the model's: the resumed epoch's logged figures count only "
                    "its remaining batches")
        return
    for variable, value in zip(variables, sums):
        variable.assign(np.asarray(variable) + np.asarray(value, dtype=variable.dtype))


class OneTraining(keras.callbacks.Callback):
    """``callbacks`` through consecutive ``fit`` calls as through one training of ``epochs``:
    begun once (no counter, log or clock starts again), ended by ``finish``, and the batches of
    the epoch resumed at ``first_epoch`` numbered from ``steps_done``, as the uninterrupted run
    numbered them. The fits run with ``verbose=0``; a ``ProgbarLogger`` among ``callbacks`` shows
    the progress at ``verbose``."""

    def __init__(self, callbacks: list, first_epoch: int, steps_done: int, epochs: int, steps_per_epoch: int | None,
                 verbose: int):
        super().__init__()
        self.callbacks = callbacks
        self.first_epoch, self.steps_done = first_epoch, steps_done
        self.epochs, self.steps_per_epoch, self.verbose = epochs, steps_per_epoch, verbose
        self._begun = False
        self._epoch = first_epoch

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
                                  "verbose": self.verbose})

    def on_train_begin(self, logs=None):
        if not self._begun:
            self._begun = True
            self._each("on_train_begin", logs)

    def on_train_end(self, logs=None):
        pass  # ``finish``, after the last fit

    def finish(self, logs=None) -> None:
        self._each("on_train_end", logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._each("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
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
