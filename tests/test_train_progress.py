"""``chatbot train``'s overall line per epoch: epoch k of n, elapsed, time left, best loss, lr."""

from __future__ import annotations

import re
from types import SimpleNamespace

import keras

import chatbot.cli.main as cli
from chatbot.training import pipeline
from chatbot.training.pipeline import train
from chatbot.training.progress import TrainingProgress
from conftest import TINY_PAIRS

TINY = ["--units", "16", "--embedding-dim", "8", "--vocab-size", "100", "--set", "data.retrieved_pairs=0",
        "--set", "data.noisy_copies=0", "--set", "data.spelling=false", "--set", "decoding.max_length=8"]
LINE = re.compile(r"^\[chatbot\] epoch (\d+)/(\d+): ", re.M)


class FakeRun:
    """Drives the callback as ``model.fit`` would, with a clock and optimizer of our own."""

    def __init__(self, epochs: int, params: dict | None = None, **kwargs):
        self.now = 100.0
        self.records = []
        self.model = SimpleNamespace(optimizer=SimpleNamespace(learning_rate=0.003), stop_training=False)
        self.callback = TrainingProgress(self.records.append, clock=lambda: self.now, **kwargs)
        self.callback.set_params({"epochs": epochs, "steps": None, "verbose": 1, **(params or {})})
        self.callback.set_model(self.model)
        self.callback.on_train_begin()

    def epoch(self, index: int, seconds: float, logs: dict, new_lr: float | None = None, stop: bool = False):
        self.callback.on_epoch_begin(index)
        self.now += seconds
        if new_lr is not None:  # ReduceLROnPlateau runs before us in the epoch's end
            self.model.optimizer.learning_rate = new_lr
        self.model.stop_training = stop
        self.callback.on_epoch_end(index, logs)
        return self.records[-1].line()


def test_lines_for_a_sequence_of_epochs():
    run = FakeRun(4, monitor="loss", early_stopping=True)
    assert run.epoch(0, 30, {"loss": 2.0}) == (
        "epoch 1/4: 30s elapsed, about 1m30s left (less if it stops early), best loss 2, lr 0.003")
    # Left: the mean epoch so far (20 s) times the 2 epochs to go; the best is the lowest so far,
    # and the rate the epoch trained with is shown with the one the next starts with.
    assert run.epoch(1, 10, {"loss": 2.5}, new_lr=0.0015) == (
        "epoch 2/4: 40s elapsed, about 40s left (less if it stops early), best loss 2, "
        "lr 0.003 -> 0.0015")
    assert run.epoch(2, 20, {"loss": 1.25}) == (
        "epoch 3/4: 1m00s elapsed, about 20s left (less if it stops early), best loss 1.25, lr 0.0015")
    # No next epoch, so no next rate.
    assert run.epoch(3, 20, {"loss": float("nan")}, new_lr=0.00075) == (
        "epoch 4/4: 1m20s elapsed, last epoch, best loss 1.25, lr 0.0015")


def test_validation_monitor_early_stop_and_no_early_stopping_note():
    run = FakeRun(10, monitor="val_loss", early_stopping=False)
    assert run.epoch(0, 5, {"loss": 1.0, "val_loss": 3.0}) == (
        "epoch 1/10: 5s elapsed, about 45s left, best val_loss 3, lr 0.003")
    line = run.epoch(1, 5, {"loss": 0.5, "val_loss": 3.5}, stop=True)
    assert line == "epoch 2/10: 10s elapsed, stopping here, best val_loss 3, lr 0.003"
    assert run.records[-1].remaining is None
    # Without a validation set train() monitors "loss"; so does the line.
    run = FakeRun(3, monitor="val_loss")
    assert "best loss 0.7" in run.epoch(0, 1, {"loss": 0.7})


def test_a_resumed_run_counts_on_from_its_initial_epoch():
    # A resumed fit starts at the checkpoint's epoch: here 4 of 8 were done.
    run = FakeRun(8, monitor="loss", best_before=0.5)
    assert run.epoch(4, 60, {"loss": 0.6}) == (
        "epoch 5/8: 1m00s since resuming, about 3m00s left, best loss 0.5, lr 0.003")
    assert run.records[-1].resumed and run.records[-1].best == 0.5


def test_the_rest_of_an_epoch_counts_as_a_whole_one_in_the_time_left():
    # Resumed after 90 of the first epoch's 100 steps (``OneTraining``'s params): its last 10
    # steps took 10 s, so an epoch takes about 100 s; it was not the first epoch of the run,
    # yet the run resumed.
    run = FakeRun(10, params={"steps": 100, "resumed_at": [0, 90]}, monitor="loss")
    assert run.epoch(0, 10, {"loss": 2.0}).startswith("epoch 1/10: 10s since resuming, about 15m00s left")
    assert run.epoch(1, 100, {"loss": 1.9}).startswith("epoch 2/10: 1m50s since resuming, about 13m20s left")


def progress_lines(err: str) -> list[tuple[int, int]]:
    return [(int(k), int(n)) for k, n in LINE.findall(err)]


class Interrupt(keras.callbacks.Callback):
    """Ctrl-C after the second step of the second epoch."""

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == (1, 1):
            raise KeyboardInterrupt


def test_cli_train_one_line_per_epoch_none_when_quiet_and_resumed_counts_on(tmp_path, capsys, monkeypatch):
    def interrupted(*a, extra_callbacks=None, **kw):
        return train(*a, extra_callbacks=[*(extra_callbacks or []), Interrupt()], **kw)

    args = ["train", "--corpus", str(TINY_PAIRS), "--out", str(tmp_path / "model"), *TINY,
            "--set", "training.checkpoint_every_steps=1"]
    # A --quiet run, interrupted (Ctrl-C) within its second epoch of three: no overall line.
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "train", interrupted)
        assert cli.main([*args, "--epochs", "3", "--quiet"]) == cli.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert progress_lines(err) == [] and "[chatbot] model:" in err, err
    assert "chatbot: interrupted (the same command with --resume continues it)" in err
    # Resumed with progress: one line per epoch it runs, counted on from the interrupted one,
    # the rest of the second epoch too, under one bar that counts the training's epochs and the
    # epoch's steps (the rest of an epoch is a fit of its own).
    assert cli.main([*args, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "resuming training in" in err and "at step 3 of epoch 2" in err, err
    assert progress_lines(err) == [(2, 3), (3, 3)], err
    assert "since resuming" in err
    assert err.count("Epoch 2/3") == 1 and re.findall(r"Epoch \d+/\d+", err) == ["Epoch 2/3", "Epoch 3/3"], err


def test_a_run_killed_just_before_its_checkpoint_loses_no_epoch_from_the_log(tmp_path, capsys, monkeypatch):
    """The checkpoint is the epoch's last step: killed between the log and the checkpoint, the
    resumed run repeats the epoch and counts it once. (It came first: such a kill lost the
    epoch's row, and the summary counted one epoch fewer than were run.)"""
    import json

    from chatbot.training.pipeline import work_dir_for

    from chatbot.training.backup import Backup

    save = Backup.on_epoch_end

    def killed_before_the_second_checkpoint(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt
        return save(self, epoch, logs)

    out = tmp_path / "model"
    args = ["train", "--corpus", str(TINY_PAIRS), "--out", str(out), *TINY, "--epochs", "3", "--quiet"]
    with monkeypatch.context() as patch:
        patch.setattr(Backup, "on_epoch_end", killed_before_the_second_checkpoint)
        assert cli.main(args) == cli.EXIT_INTERRUPTED
    logged = (work_dir_for(out) / "training_log.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in logged] == ["0", "1"]  # the second epoch was logged first
    assert cli.main([*args, "--resume"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs"] == 3 and summary["epochs_this_run"] == 2


def test_a_training_another_version_started_is_not_resumed_and_its_state_is_left_alone(tmp_path, capsys,
                                                                                      monkeypatch):
    """An older version's unfinished training took today's defaults for the keys it never had,
    crashed restoring its checkpoint ("a bug: please report it") and rewrote its state.json so
    that the old version could not resume it either."""
    import json

    from chatbot.training.pipeline import STATE, work_dir_for

    out = tmp_path / "model"
    args = ["train", "--corpus", str(TINY_PAIRS), "--out", str(out), *TINY, "--epochs", "3", "--quiet"]
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "train", lambda *a, extra_callbacks=None, **kw: train(
            *a, extra_callbacks=[*(extra_callbacks or []), Interrupt()], **kw))
        assert cli.main(args) == cli.EXIT_INTERRUPTED
    state_file = work_dir_for(out) / STATE
    state = json.loads(state_file.read_text())
    assert state["format_version"] >= 5
    for older in ({**state, "format_version": 3},
                  {**{k: v for k, v in state.items() if k != "format_version"},
                   "config": {**state["config"], "data": {k: v for k, v in state["config"]["data"].items()
                                                          if k != "spelling"}}}):
        state_file.write_text(json.dumps(older))
        before = state_file.read_bytes()
        capsys.readouterr()
        assert cli.main([*args, "--resume"]) == 1
        err = capsys.readouterr().err
        assert "this training was started by another chatbot version" in err and err.count("\n") == 1, err
        assert state_file.read_bytes() == before
    assert "settings without data.spelling" in err
