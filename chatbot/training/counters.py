"""What a resumed training restores beyond its checkpoint: the learning-rate plateau and
early-stopping counters.

The checkpoint (``backup``) brings back the weights, the optimizer (its decayed learning rate too) and
the epoch, but ``ReduceLROnPlateau`` and ``EarlyStopping`` start again from nothing: a resumed
run waited ``patience`` epochs anew before cutting its rate or stopping, and so trained other
epochs than the uninterrupted run. The training log holds every epoch's figures, so the counters
are rebuilt by showing them the logged epochs again.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import keras

from chatbot.training.pipeline import logged_epochs


class _StandIn:
    """The model as the replayed callbacks see it: their learning-rate cuts and stop requests
    land here, not on the model (the checkpoint already restored the rate they led to)."""

    def __init__(self, model, learning_rate: float):
        self._model = model
        self.optimizer = SimpleNamespace(learning_rate=learning_rate)
        self.stop_training = False

    def __getattr__(self, name):  # metrics, to choose a monitor's direction
        return getattr(self._model, name)


class ResumedCounters(keras.callbacks.Callback):
    """Shows ``counters`` (plateau, early stopping) the epochs logged before the first one this
    run trains, so they wait as long as the uninterrupted run would have. Must come after them:
    their ``on_train_begin`` resets them. ``learning_rate`` is the rate training started with:
    the replayed cuts start from it, as the live ones did."""

    def __init__(self, log_file: Path, counters: list[keras.callbacks.Callback], learning_rate: float):
        super().__init__()
        self.log_file = log_file
        self.counters = counters
        self.learning_rate = learning_rate
        self._replayed = False

    def on_epoch_begin(self, epoch, logs=None):
        if self._replayed:
            return
        self._replayed = True
        earlier = sorted((n, figures) for n, figures in logged_epochs(self.log_file).items() if n < epoch)
        for counter in self.counters:
            model = counter.model
            counter.set_model(_StandIn(model, self.learning_rate))
            try:
                for n, figures in earlier:
                    counter.on_epoch_end(n, {k: v for k, v in figures.items() if not math.isnan(v)})
            finally:
                counter.set_model(model)
