"""Issue 19, item 1: ``chatbot train --resume`` applies the flags that may change on resume (and
says so) and refuses, in one line naming them, those that may not; it no longer ignores them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import pytest

import chatbot.cli.main as cli
from chatbot.config import Config
from chatbot.errors import ConfigError, TrainingError
from chatbot.training.pipeline import (STATE, resumable, resume_changes, saved_config, train,
                                       work_dir_for)
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


def test_a_checkpoint_within_an_epoch_says_which_batches_are_trained_again(tmp_path, caplog):
    """Keras restores a step checkpoint's weights and epoch, not its step: the resumed epoch
    runs all its batches, and the warning says how many of them are trained a second time."""
    import logging

    class StopAtThirdStepOfSecondEpoch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 2:
                raise KeyboardInterrupt

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    class Steps(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.counted = {}

        def on_train_batch_end(self, batch, logs=None):
            self.counted[self.epoch] = batch + 1

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    config, out = tiny_config(**SMALL, **{"training.checkpoint_every_steps": 1}), tmp_path / "model"
    first = Steps()
    with pytest.raises(KeyboardInterrupt):
        train(TINY_PAIRS, config, out, verbose=0, extra_callbacks=[StopAtThirdStepOfSecondEpoch(), first])
    resumed = Steps()
    with caplog.at_level(logging.WARNING, logger="chatbot.training"):
        train(TINY_PAIRS, config, out, resume=True, verbose=0, extra_callbacks=[resumed])
    assert ("the last checkpoint was taken after step 3 of epoch 2: the epoch starts over, "
            "and its first 3 batches are trained a second time") in caplog.text
    assert resumed.counted == {1: first.counted[0], 2: first.counted[0]}  # epoch 2 whole again, then 3


def test_resume_changes_lists_resumable_keys_and_refuses_the_rest(tmp_path):
    saved = tiny_config(**SMALL).to_dict()
    same = Config.from_dict(saved)
    assert resume_changes(saved, same, tmp_path) == []
    changed = same.with_overrides({"training.epochs": 9, "training.patience": 2, "decoding.beam": 3,
                                   "training.checkpoint_every_steps": 5})
    assert resume_changes(saved, changed, tmp_path) == [
        "training.epochs 3 -> 9", "training.patience 15 -> 2", "training.checkpoint_every_steps 0 -> 5",
        "decoding.beam 1 -> 3"]
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
