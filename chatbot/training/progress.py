"""Where a whole training run stands, once per epoch (``chatbot train``'s overall line).

Keras' progress bar shows one epoch at a time; ``TrainingProgress`` adds what it cannot: epoch k
of n, the time spent, an estimate of the time left, the best monitored loss so far and the
learning rate. The library prints nothing: each epoch's ``EpochProgress`` goes to the
``on_epoch`` function the caller gives (the CLI writes ``line()`` to stderr).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras


@dataclass(frozen=True)
class EpochProgress:
    epoch: int  # 1-based, counted from the start of the training, also across a resume
    epochs: int  # the planned total (training.epochs)
    elapsed: float  # seconds since this process started fitting
    remaining: float | None  # estimated seconds left; None when training stops after this epoch
    resumed: bool  # whether this process continued a training (elapsed then counts since the resume)
    monitor: str  # the loss that picks the best weights ("loss" when there is no validation)
    best: float | None  # its best value so far, before a resume included
    learning_rate: float | None  # the rate this epoch trained with
    next_learning_rate: float | None  # the rate the next epoch starts with (after any plateau decay)
    early_stopping: bool  # whether training.early_stopping may end the run before ``epochs``
    stopping: bool = False  # a callback (early stopping, a NaN loss) ends training after this epoch

    def line(self) -> str:
        """One line for people, e.g. ``epoch 3/26: 2m31s elapsed, about 19m40s left (less if it
        stops early), best loss 0.8123, lr 0.003 -> 0.0015``."""
        parts = [f"{_duration(self.elapsed)} {'since resuming' if self.resumed else 'elapsed'}"]
        if self.stopping:
            parts.append("stopping here")
        elif self.remaining is not None and self.epoch < self.epochs:
            parts.append(f"about {_duration(self.remaining)} left"
                         + (" (less if it stops early)" if self.early_stopping else ""))
        else:
            parts.append("last epoch")
        if self.best is not None:
            parts.append(f"best {self.monitor} {self.best:.4g}")
        if self.learning_rate is not None:
            lr = f"lr {self.learning_rate:.3g}"
            following = not self.stopping and self.epoch < self.epochs
            if (following and self.next_learning_rate is not None
                    and not math.isclose(self.next_learning_rate, self.learning_rate)):
                lr += f" -> {self.next_learning_rate:.3g}"
            parts.append(lr)
        return f"epoch {self.epoch}/{self.epochs}: " + ", ".join(parts)


class TrainingProgress(keras.callbacks.Callback):
    """Calls ``on_epoch(EpochProgress)`` at the end of every epoch.

    The time left is the mean epoch time of this process so far times the epochs left (the
    first epoch includes tracing, so early estimates run high). Epochs are numbered as Keras
    runs them: a run resumed from a checkpoint starts at its epoch, so the
    count continues where the interrupted run stopped. Put it after every callback that may
    change the learning rate or stop training (``train`` appends ``extra_callbacks`` last), so
    that the line reports what they decided. It defines no batch hooks, which would make Keras
    wait for every step's logs.
    """

    def __init__(self, on_epoch: Callable[[EpochProgress], None], monitor: str = "loss",
                 early_stopping: bool = False, best_before: float | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        super().__init__()
        self.on_epoch = on_epoch
        self.monitor = monitor
        self.early_stopping = early_stopping
        self.best = best_before
        self.clock = clock
        self._first_epoch: int | None = None

    def on_train_begin(self, logs=None):
        self._began = self.clock()
        self._first_epoch = None
        self._durations: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch is None:
            self._first_epoch = epoch
        self._epoch_began = self.clock()
        self._rate = self._learning_rate()

    def on_epoch_end(self, epoch, logs=None):
        now = self.clock()
        logs = logs or {}
        params = self.params or {}
        resumed_epoch, steps_done = params.get("resumed_at") or (None, 0)
        duration = now - self._epoch_began
        if epoch == resumed_epoch and steps_done and (params.get("steps") or 0) > steps_done:
            duration *= params["steps"] / (params["steps"] - steps_done)  # the rest of an epoch: as a whole one
        self._durations.append(duration)
        # train() falls back to "loss" when there is no validation set; so does this.
        key = self.monitor if self.monitor in logs else "loss"
        value = logs.get(key)
        if value is not None and not math.isnan(float(value)):
            self.best = float(value) if self.best is None else min(self.best, float(value))
        epochs = int(params.get("epochs") or epoch + 1)
        mean = sum(self._durations) / len(self._durations)
        stopping = bool(getattr(self.model, "stop_training", False))
        self.on_epoch(EpochProgress(
            epoch=epoch + 1, epochs=epochs, elapsed=now - self._began,
            remaining=None if stopping else mean * max(epochs - epoch - 1, 0),
            resumed=bool(self._first_epoch or steps_done), monitor=key, best=self.best,
            learning_rate=self._rate, next_learning_rate=self._learning_rate(),
            early_stopping=self.early_stopping, stopping=stopping))

    def _learning_rate(self) -> float | None:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return None
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def best_logged(out: str | Path, monitor: str) -> float | None:
    """The best monitored loss in the log of the unfinished training of ``out`` (``"loss"``
    when the log has no ``monitor`` column, as ``train`` falls back without validation), so
    that a resumed run's "best so far" includes the epochs before the interruption."""
    from chatbot.training.pipeline import best_in_log, work_dir_for

    log_file = work_dir_for(Path(out)) / "training_log.csv"
    best = best_in_log(log_file, monitor)
    return best if best is not None else best_in_log(log_file, "loss")


def _duration(seconds: float) -> str:
    """42s, 2m31s, 1h05m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
