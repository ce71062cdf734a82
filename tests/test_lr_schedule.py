"""``training.lr_schedule``: the plateau rule (the default) or a cosine over the epochs, which a
resumed training continues where it was."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from chatbot.config import Config
from chatbot.errors import ConfigError
from chatbot.model.bundle import Bundle
from chatbot.training.pipeline import COSINE_FLOOR, cosine_learning_rate, train, work_dir_for
from conftest import TINY_PAIRS, tiny_config

SMALL = {"model.units": 16, "model.embedding_dim": 8, "tokenizer.vocab_size": 120, "training.epochs": 4,
         "training.learning_rate": 0.02, "training.lr_schedule": "cosine", "training.early_stopping": False}


class Rates(keras.callbacks.Callback):
    """The learning rate each epoch trained with; with ``stop_after``, Ctrl-C after that epoch."""

    def __init__(self, stop_after: int | None = None):
        super().__init__()
        self.seen: dict[int, float] = {}
        self.stop_after = stop_after

    def on_epoch_end(self, epoch, logs=None):
        self.seen[epoch] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        if epoch == self.stop_after:
            raise KeyboardInterrupt


def test_the_cosine_starts_at_the_rate_and_falls_to_a_hundredth_of_it():
    rates = [cosine_learning_rate(epoch, 10, 0.003) for epoch in range(11)]
    assert rates[0] == pytest.approx(0.003)
    assert rates[5] == pytest.approx(0.003 * (1 + COSINE_FLOOR) / 2)  # half-way: the middle of the range
    assert rates[10] == pytest.approx(0.003 * COSINE_FLOOR)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert cosine_learning_rate(12, 10, 0.003) == pytest.approx(0.003 * COSINE_FLOOR)  # resumed with fewer epochs


def test_an_unknown_schedule_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="training.lr_schedule"):
        Config().with_overrides({"training.lr_schedule": "linear"})
    assert Config().training.lr_schedule == "plateau"


def test_training_follows_the_cosine_and_a_resumed_training_goes_on_with_it(tmp_path):
    out = tmp_path / "model"
    shuffled = {**SMALL, "training.batch_size": 3}  # 7 batches an epoch, in an order each epoch draws
    first = Rates(stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        train(TINY_PAIRS, tiny_config(**shuffled), out, verbose=0, extra_callbacks=[first])
    assert work_dir_for(out).exists() and not out.exists()
    resumed = Rates()
    train(TINY_PAIRS, tiny_config(**shuffled), out, verbose=0, resume=True, extra_callbacks=[resumed])
    trained = {**first.seen, **resumed.seen}
    assert sorted(trained) == [0, 1, 2, 3] and sorted(resumed.seen) == [2, 3]
    for epoch, rate in trained.items():
        assert rate == pytest.approx(cosine_learning_rate(epoch, 4, 0.02), rel=1e-5)
    assert trained[3] < trained[0] / 5 and not math.isclose(trained[2], trained[1])
    # The resumed epochs read the batches in the uninterrupted training's order (drawn from the
    # epoch, not from how many times this process read the data), so the weights are the same
    # (they differed by up to 0.57 when each resumed epoch was shuffled as a first one).
    whole = train(TINY_PAIRS, tiny_config(**shuffled), tmp_path / "whole", verbose=0)
    for a, b in zip(whole.model.get_weights(), Bundle.load(out).model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_a_resumed_training_restores_its_plateau_and_early_stopping_counters(tmp_path):
    """The checkpoint brings back the weights, the optimizer and the epoch, not these counters:
    a resumed run waited ``patience`` epochs anew before cutting its rate or stopping. They are
    rebuilt from the log's epochs, and the rate the checkpoint restored is left as it is."""
    from chatbot.training.counters import ResumedCounters

    losses = [1.0, 0.9, 0.95, 0.97, 0.96, 0.99, 0.98]
    log = tmp_path / "training_log.csv"
    log.write_text("epoch,loss,val_loss\n" + "".join(f"{n},{v},NA\n" for n, v in enumerate(losses)))

    def model(rate):
        net = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        net.compile(keras.optimizers.Adam(rate), "mse")
        return net

    def counters(net):
        made = [keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2, min_lr=1e-5),
                keras.callbacks.EarlyStopping(monitor="loss", patience=10)]
        for counter in made:
            counter.set_model(net)
            counter.on_train_begin()
        return made

    live_model = model(0.02)
    live = counters(live_model)
    for epoch, loss in enumerate(losses):
        for counter in live:
            counter.on_epoch_end(epoch, {"loss": loss})
    restored = model(0.005)  # what the checkpoint holds: the rate after the live run's two cuts
    resumed = counters(restored)
    replay = ResumedCounters(log, resumed, learning_rate=0.02)
    replay.set_model(restored)
    replay.on_epoch_begin(len(losses))
    assert float(keras.ops.convert_to_numpy(live_model.optimizer.learning_rate)) == pytest.approx(0.005)
    for a, b in zip(live, resumed):
        assert (a.wait, a.best) == (b.wait, b.best)
    assert (resumed[0].wait, resumed[1].wait) == (1, 5) and resumed[0].cooldown_counter == live[0].cooldown_counter
    assert float(keras.ops.convert_to_numpy(restored.optimizer.learning_rate)) == pytest.approx(0.005)  # not cut again
    assert resumed[0].model is restored and not restored.stop_training
