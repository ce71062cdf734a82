"""Issue 19, item 1: ``chatbot train --resume`` applies the flags that may change on resume (and
says so) and refuses, in one line naming them, those that may not; it no longer ignores them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

import chatbot.cli.main as cli
from chatbot.config import Config
from chatbot.errors import ConfigError, TrainingError
from chatbot.training.backup import Backup
from chatbot.training.pipeline import (STATE, checkpoint_seconds, resumable, resume_changes, saved_config,
                                       train, work_dir_for)
from conftest import TINY_PAIRS, tiny_config

SMALL = {"model.units": 16, "model.embedding_dim": 8, "tokenizer.vocab_size": 120, "training.epochs": 3}


class Interrupt(keras.callbacks.Callback):
    """Ctrl-C at the end of the first epoch."""

    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt


@pytest.fixture(scope="module")
def interrupted_once(tmp_path_factory) -> Path:
    """An unfinished training: one epoch of three done. Made once; each test resumes a copy."""
    out = tmp_path_factory.mktemp("interrupted") / "model"
    with pytest.raises(KeyboardInterrupt):
        train(TINY_PAIRS, tiny_config(**SMALL), out, verbose=0, extra_callbacks=[Interrupt()])
    assert (work_dir_for(out) / STATE).exists() and not out.exists()
    return out


@pytest.fixture
def interrupted(interrupted_once, tmp_path) -> Path:
    """An unfinished training of ``tmp_path/model``: a copy of ``interrupted_once``'s work
    directory, all that an interrupted run leaves (its state names the corpus, not itself)."""
    out = tmp_path / "model"
    shutil.copytree(work_dir_for(interrupted_once), work_dir_for(out))
    return out


def resume(capsys, out: Path, *flags) -> tuple[int, str, str]:
    code = cli.main(["train", "--corpus", str(TINY_PAIRS), "--out", str(out), "--quiet", "--resume",
                     *map(str, flags)])
    out_text, err = capsys.readouterr()
    return code, out_text, err


def test_resume_applies_the_flags_that_may_change_and_says_so(interrupted, capsys):
    code, out, err = resume(capsys, interrupted, "--epochs", 4, "--set", "decoding.max_length=7",
                            "--set", "dialogue.min_confidence=0.5", "--dropout", 0.1)
    assert code == 0, err
    assert "[chatbot] resuming training in" in err
    changed = next(line for line in err.splitlines() if "resuming with changed settings" in line)
    for change in ("training.epochs 3 -> 4", "decoding.max_length 40 -> 7", "dialogue.min_confidence 0.0 -> 0.5",
                   "model.dropout 0.0 -> 0.1"):
        assert change in changed
    config = json.loads((interrupted / "config.json").read_text())
    assert config["decoding"]["max_length"] == 7 and config["training"]["epochs"] == 4
    assert config["dialogue"]["min_confidence"] == 0.5 and config["model"]["units"] == 16  # saved, kept
    summary = json.loads(out.splitlines()[-1])
    assert summary["epochs"] == 4 and summary["epochs_this_run"] == 3  # epochs 2-4: the first was not redone


def test_resume_refuses_what_may_not_change_in_one_line_and_keeps_the_state(interrupted, capsys):
    code, out, err = resume(capsys, interrupted, "--units", 32, "--learning-rate", 0.5,
                            "--set", "data.max_input_tokens=10", "--epochs", 5)
    assert (code, out) == (1, "")
    error = [line for line in err.splitlines() if line.startswith("chatbot: error:")]
    assert len(error) == 1 and "Traceback" not in err
    assert "--resume cannot change" in error[0]
    for key in ("model.units (16 -> 32)", "training.learning_rate (0.02 -> 0.5)", "data.max_input_tokens (64 -> 10)"):
        assert key in error[0]
    assert "training.epochs" not in error[0]  # that one may change
    assert (work_dir_for(interrupted) / STATE).exists() and not interrupted.exists()  # still resumable
    code, _, err = resume(capsys, interrupted)  # the same command without the refused flags finishes
    assert code == 0, err
    assert "changed settings" not in err


def test_resume_with_the_original_flags_changes_nothing(interrupted, capsys):
    """The documented recovery: the same command again, with --resume."""
    code, _, err = resume(capsys, interrupted, "--units", 16, "--embedding-dim", 8, "--vocab-size", 120,
                          "--epochs", 3)
    assert code == 0, err
    assert "resuming training" in err and "changed settings" not in err
    assert "a second time" not in err  # checkpointed at the epoch's end


class StopAt(keras.callbacks.Callback):
    """Ctrl-C after batch ``batch`` (from 0) of epoch ``epoch`` (from 0), or at its end (``batch`` None)."""

    def __init__(self, epoch: int, batch: int | None):
        super().__init__()
        self.at = (epoch, batch)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise KeyboardInterrupt

    def on_epoch_end(self, epoch, logs=None):
        if (epoch, None) == self.at:
            raise KeyboardInterrupt


class Batches(keras.callbacks.Callback):
    """The batches each epoch trained, as the callbacks were told them."""

    def __init__(self):
        super().__init__()
        self.seen: dict[int, list[int]] = {}

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.seen.setdefault(self.epoch, []).append(batch)


def test_a_training_resumed_within_an_epoch_is_the_uninterrupted_one(tmp_path, caplog):
    """A checkpoint taken within an epoch brings back its step: the resumed run trains the rest of
    that epoch's batches, in the same order, with the epoch's running loss put back, so the
    weights and every logged figure are the uninterrupted run's, to the bit, also with the
    moving average of the weights swapped in and out at each epoch's end. (Keras'
    BackupAndRestore trained the epoch's first batches a second time, and the step checkpoints
    of a resumed epoch named the wrong epoch, so a second interruption went back to the first.)

    The dropout layers' random states travel with each checkpoint (``save_weights`` leaves them
    out: resumed, the weights came out 0.29 apart). The checkpoints here are taken by time
    (``checkpoint_every_minutes``, the default way within an epoch): a batch takes longer than
    this interval, so every batch is checkpointed, as with ``checkpoint_every_steps`` 1."""
    import logging

    config = tiny_config(**SMALL, **{"training.checkpoint_every_minutes": 1e-6, "training.ema_momentum": 0.9,
                                     "model.dropout": 0.2})
    assert config.training.checkpoint_every_steps == 0
    uninterrupted = Batches()
    whole = train(TINY_PAIRS, config, tmp_path / "whole", verbose=0, extra_callbacks=[uninterrupted])
    steps = uninterrupted.seen[0]
    assert len(steps) > 6 and uninterrupted.seen == {0: steps, 1: steps, 2: steps}

    out, runs = tmp_path / "model", [Batches() for _ in range(4)]
    with pytest.raises(KeyboardInterrupt):  # at the first epoch's end, then twice within the second
        train(TINY_PAIRS, config, out, verbose=0, extra_callbacks=[runs[0], StopAt(0, None)])
    with pytest.raises(KeyboardInterrupt):
        train(TINY_PAIRS, config, out, resume=True, verbose=0, extra_callbacks=[runs[1], StopAt(1, 2)])
    state = json.loads((work_dir_for(out) / "backup" / "state.json").read_text())
    assert (state["epoch"], state["steps"]) == (1, 3)
    with pytest.raises(KeyboardInterrupt), caplog.at_level(logging.INFO, logger="chatbot.training"):
        train(TINY_PAIRS, config, out, resume=True, verbose=0, extra_callbacks=[runs[2], StopAt(1, 5)])
    assert "at step 4 of epoch 2" in caplog.text
    bundle = train(TINY_PAIRS, config, out, resume=True, verbose=0, extra_callbacks=[runs[3]])
    assert [run.seen for run in runs] == [{0: steps}, {1: steps[:3]}, {1: steps[3:6]}, {1: steps[6:], 2: steps}]
    for a, b in zip(whole.model.get_weights(), bundle.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert bundle.metrics["history"] == whole.metrics["history"]  # the resumed epoch's loss: all its batches
    assert bundle.metrics["epochs"] == 3 and bundle.metrics["epochs_run"] == 2


class Clock(keras.callbacks.Callback):
    """A clock that moves ``seconds`` at each batch's end (placed before the backup)."""

    def __init__(self, seconds: float):
        super().__init__()
        self.now, self.seconds = 0.0, seconds

    def __call__(self) -> float:
        return self.now

    def on_train_batch_end(self, batch, logs=None):
        self.now += self.seconds


class SavesOf(Backup):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.saves: list[tuple[int, int]] = []

    def _save(self, epoch: int, steps: int, sums: list) -> None:
        self.saves.append((epoch, steps))
        super()._save(epoch, steps, sums)


def test_checkpoints_by_time_are_taken_once_the_interval_passed_since_the_last_save(tmp_path):
    """A batch of 30 s and checkpoints every 100 s: saved after batches 4 and 8 (counted from
    the save before), not after the epoch's last (its end is saved next), and the epoch's end
    starts the interval again. By steps too, the first rule due saves."""
    clock = Clock(30.0)
    backup = SavesOf(tmp_path / "backup", every_seconds=100.0, clock=clock)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    data = (np.ones((10, 2), "float32"), np.ones((10, 1), "float32"))
    model.fit(*data, batch_size=1, epochs=2, verbose=0, shuffle=False, callbacks=[clock, backup])
    assert backup.saves == [(0, 4), (0, 8), (1, 0), (1, 4), (1, 8), (2, 0)]
    assert json.loads((tmp_path / "backup" / "state.json").read_text())["epoch"] == 2
    assert len(list((tmp_path / "backup").glob("*.weights.h5"))) == 1  # the older files removed
    both = SavesOf(tmp_path / "both", every_steps=3, every_seconds=100.0, clock=Clock(30.0))
    model.fit(*data, batch_size=1, epochs=1, verbose=0, shuffle=False, callbacks=[both.clock, both])
    assert both.saves == [(0, 3), (0, 6), (0, 9), (1, 0)]  # time never came due: each step save restarts it
    never = SavesOf(tmp_path / "never", clock=Clock(1e9))
    model.fit(*data, batch_size=1, epochs=1, verbose=0, callbacks=[never.clock, never])
    assert never.saves == [(1, 0)]


def test_a_multi_worker_training_checkpoints_by_steps_only():
    """Its workers must save at the same steps: the chief alone saving by time stalled the cluster."""
    from chatbot.training.distribute import Cluster

    training = tiny_config(**{"training.checkpoint_every_minutes": 2}).training
    assert checkpoint_seconds(training, None) == checkpoint_seconds(training, Cluster("mirrored")) == 120
    assert checkpoint_seconds(training, Cluster("multi-worker")) == 0


class KilledBeforeTheBundle(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        raise KeyboardInterrupt


def test_a_training_that_stopped_early_is_not_trained_further_on_resume(tmp_path, caplog):
    """Killed after early stopping ended it, before its bundle was written (measuring a big
    model takes a while): the resume measures and installs it, as the run would have; it
    trained one epoch more, the stop having been replayed on a stand-in."""
    import logging

    config = tiny_config(**{**SMALL, "training.epochs": 30, "training.patience": 1, "training.lr_decay_patience": 0,
                            "training.learning_rate": 0.5})  # a rate this high stops it at once
    whole = train(TINY_PAIRS, config, tmp_path / "whole", verbose=0)
    assert whole.metrics["epochs"] < 30  # it stopped early
    out = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt):
        train(TINY_PAIRS, config, out, verbose=0, extra_callbacks=[KilledBeforeTheBundle()])
    with caplog.at_level(logging.INFO, logger="chatbot.training"):
        bundle = train(TINY_PAIRS, config, out, resume=True, verbose=0)
    assert f"stopped early after epoch {whole.metrics['epochs']}: measuring it" in caplog.text
    assert bundle.metrics["epochs"] == whole.metrics["epochs"] and bundle.metrics["epochs_run"] == 0
    assert bundle.metrics["history"] == whole.metrics["history"]
    for a, b in zip(whole.model.get_weights(), bundle.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_an_unreadable_checkpoint_is_named_and_an_earlier_versions_is_resumed(tmp_path, caplog):
    """A checkpoint of Keras' BackupAndRestore (what earlier commits wrote: its epoch, no step)
    is resumed, its epoch started over and said, the one before it when it is damaged; a
    damaged one of ours is one line naming it."""
    import logging

    config, out = tiny_config(**SMALL, **{"training.checkpoint_every_steps": 1}), tmp_path / "model"
    with pytest.raises(KeyboardInterrupt):
        train(TINY_PAIRS, config, out, verbose=0, extra_callbacks=[StopAt(1, 2)])
    backup = work_dir_for(out) / "backup"
    state = json.loads((backup / "state.json").read_text())
    assert (state["epoch"], state["steps"]) == (1, 3) and len(state["metrics"]) == 4
    (backup / "state.json").write_text(json.dumps({**state, "weights": "../../elsewhere.weights.h5"}))
    with pytest.raises(TrainingError, match=r"backup: unreadable training checkpoint .*not a file name"):
        train(TINY_PAIRS, config, out, resume=True, verbose=0)
    # Keras' layout, its latest checkpoint cut short by a kill as it wrote it in place: the one
    # before it (double_checkpoint's .bkp pair) is resumed.
    (backup / state["weights"]).rename(backup / "latest.weights.h5.bkp")
    (backup / "state.json").unlink()
    (backup / "training_metadata.json.bkp").write_text(json.dumps({"epoch": 1, "batch": 2}))
    (backup / "latest.weights.h5").write_bytes((backup / "latest.weights.h5.bkp").read_bytes()[:1000])
    (backup / "training_metadata.json").write_text(json.dumps({"epoch": 1, "batch": 3}))
    batches = Batches()
    with caplog.at_level(logging.INFO, logger="chatbot.training"):
        bundle = train(TINY_PAIRS, config, out, resume=True, verbose=0, extra_callbacks=[batches])
    assert "at epoch 2" in caplog.text
    assert "latest.weights.h5 is damaged (" in caplog.text and "resuming from the checkpoint before it" in caplog.text
    assert ("the last checkpoint (written by an earlier version) was taken after step 3 of epoch 2: the epoch "
            "starts over, and its first 3 batches are trained a second time") in caplog.text
    assert sorted(batches.seen) == [1, 2] and batches.seen[1][0] == 0 and bundle.metrics["epochs"] == 3


def test_resume_changes_lists_resumable_keys_and_refuses_the_rest(tmp_path):
    saved = tiny_config(**SMALL).to_dict()
    same = Config.from_dict(saved)
    assert resume_changes(saved, same, tmp_path) == []
    changed = same.with_overrides({"training.epochs": 9, "training.patience": 2, "decoding.beam": 3,
                                   "training.checkpoint_every_steps": 5, "training.checkpoint_every_minutes": 2})
    assert resume_changes(saved, changed, tmp_path) == [
        "training.epochs 3 -> 9", "training.patience 15 -> 2", "training.checkpoint_every_steps 0 -> 5",
        "training.checkpoint_every_minutes 10.0 -> 2.0", "decoding.beam 1 -> 3"]
    for key, value in {"tokenizer.level": "char", "model.cell": "lstm", "training.batch_size": 4,
                       "training.seed": 1, "training.monitor": "val_loss", "data.context_turns": 1}.items():
        assert not resumable(key)
        with pytest.raises(TrainingError, match=rf"cannot change {key} \("):
            resume_changes(saved, same.with_overrides({key: value}), tmp_path)


def test_a_key_the_saved_state_lacks_compares_with_its_default(tmp_path):
    """A training saved by an older version: keys added since read as their defaults, not as changes."""
    saved = tiny_config(**SMALL).to_dict()
    del saved["data"]["retriever"]
    assert resume_changes(saved, Config.from_dict(tiny_config(**SMALL).to_dict()), tmp_path) == []


def test_saved_config_takes_overrides_before_validation(interrupted):
    state_file = work_dir_for(interrupted) / STATE
    state = json.loads(state_file.read_text())
    state["config"]["decoding"]["max_length"] = 5_000_000_000  # saved before bounds existed
    state_file.write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="decoding.max_length"):
        saved_config(interrupted)
    assert saved_config(interrupted, {"decoding.max_length": 50}).decoding.max_length == 50
    with pytest.raises(ConfigError, match="unknown config key 'nosuch.key'"):
        saved_config(interrupted, {"nosuch.key": 1})


def test_resume_cannot_turn_into_another_fine_tuning(interrupted, tiny_bundle_path):
    with pytest.raises(TrainingError, match="was not a fine-tuning"):
        train(TINY_PAIRS, tiny_config(**SMALL), interrupted, resume=True, verbose=0, base=tiny_bundle_path)


def test_the_best_logged_value_skips_na_cells_and_counts_every_run_of_an_epoch(tmp_path):
    """A resumed training starts its checkpoints from the best value logged; an "NA" cell (an
    epoch without validation) crashed that read with a ValueError. An epoch's first run counts:
    the best-weights file is written before the log row, so it may hold those weights."""
    from chatbot.training.pipeline import best_in_log

    log = tmp_path / "training_log.csv"
    log.write_text("epoch,loss,val_loss\n0,2.0,NA\n1,1.5,1.8\n1,1.6,1.9\n2,1.7,NA\n", encoding="utf-8")
    assert best_in_log(log, "loss") == 1.5  # epoch 1's first run (killed after its row, run again)
    assert best_in_log(log, "val_loss") == 1.8
    assert best_in_log(tmp_path / "none.csv", "loss") is None
