"""Training writes a valid bundle; bundles reload to identical replies and refuse damage."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from chatbot.dialogue.bot import ChatBot
from chatbot.model.bundle import FORMAT_VERSION, MANIFEST, WEIGHTS, Bundle
from chatbot.errors import BundleError, TrainingError
from chatbot.training.pipeline import dry_run, train, work_dir_for
from conftest import TINY_PAIRS, tiny_config


def test_bundle_contents(tiny_bundle_path):
    names = {p.name for p in tiny_bundle_path.iterdir()}
    assert {"bundle.json", "config.json", "tokenizer.json", "model.weights.h5", "metrics.json",
            "validation.jsonl", "training_log.csv"} <= names
    manifest = json.loads((tiny_bundle_path / MANIFEST).read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert len(manifest["corpus"]["sha256"]) == 64
    assert manifest["corpus"]["train"] == 20
    metrics = json.loads((tiny_bundle_path / "metrics.json").read_text())
    assert metrics["train_exact_match"] == 1.0
    # no staging or work directories are left behind
    assert [p.name for p in tiny_bundle_path.parent.iterdir()] == ["tiny"]


def test_reloaded_bundle_gives_identical_replies(tiny_bot, tiny_bundle_path, tiny_pairs, tmp_path):
    copy = tmp_path / "copy"
    Bundle.load(tiny_bundle_path).save(copy)
    again = ChatBot.load(copy)
    questions = [q for q, _ in tiny_pairs] + ["something it never saw"]
    first, second = tiny_bot.generate(questions), again.generate(questions)
    assert [r.text for r in first] == [r.text for r in second]
    assert [r.score for r in first] == pytest.approx([r.score for r in second], abs=1e-6)


@pytest.fixture
def damaged(tiny_bundle_path, tmp_path) -> Path:
    path = tmp_path / "damaged"
    shutil.copytree(tiny_bundle_path, path)
    return path


def _edit_manifest(path: Path, **changes) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.update(changes)
    (path / MANIFEST).write_text(json.dumps(manifest))


def _unlist_and_edit(path: Path, name: str) -> None:
    """A file read at loading, dropped from the manifest and then changed: its checksum is gone."""
    manifest = json.loads((path / MANIFEST).read_text())
    del manifest["files"][name]
    (path / MANIFEST).write_text(json.dumps(manifest))
    (path / name).write_text((path / name).read_text().replace("Tiny", "TAMPERED"))


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / WEIGHTS).unlink(), "missing file"),
    (lambda p: (p / MANIFEST).unlink(), "missing file"),
    (lambda p: (p / WEIGHTS).write_bytes((p / WEIGHTS).read_bytes()[:1000]), "corrupt file"),
    (lambda p: (p / "config.json").write_text("{"), "corrupt file"),
    (lambda p: (p / MANIFEST).write_text("not json"), "corrupt JSON"),
    (lambda p: _edit_manifest(p, format_version=FORMAT_VERSION + 1), "newer"),
    (lambda p: _edit_manifest(p, vocab_size=3), "tokenizer has"),
    (lambda p: (p / "evil.pkl").write_bytes(b"cos\nsystem\n(S'echo owned'\ntR."), "refusing"),
    (lambda p: _unlist_and_edit(p, "train.jsonl"), "not listed"),
])
def test_damaged_bundles_are_refused_with_a_clear_error(damaged, damage, message):
    damage(damaged)
    with pytest.raises(BundleError, match=message):
        Bundle.load(damaged)


def _edit_config(bundle, **model):
    from chatbot.model.bundle import file_sha256

    config = json.loads((bundle / "config.json").read_text())
    config["model"].update(model)
    (bundle / "config.json").write_text(json.dumps(config))
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"]["config.json"] = file_sha256(bundle / "config.json")
    (bundle / MANIFEST).write_text(json.dumps(manifest))


def test_a_config_far_bigger_than_its_weights_is_refused_before_building(damaged):
    """Building allocates every variable: 4,096 units made a 6 MB bundle take 3.6 GB first."""
    import tracemalloc

    _edit_config(damaged, units=16_384, embedding_dim=16_384, layers=8)  # hundreds of GB if built
    tracemalloc.start()
    with pytest.raises(BundleError, match="cannot hold: the config and the weights do not belong together"):
        Bundle.load(damaged)
    assert tracemalloc.get_traced_memory()[1] < 200 * 2**20
    tracemalloc.stop()


def test_weights_that_do_not_match_the_config_are_refused(damaged):
    _edit_config(damaged, units=32)
    with pytest.raises(BundleError, match="cannot load weights"):
        Bundle.load(damaged)


def test_missing_bundle_is_a_clear_error(tmp_path):
    with pytest.raises(BundleError, match="no such model"):
        ChatBot.load(tmp_path / "nowhere")


def test_saving_over_a_bundle_replaces_it_whole(tiny_bundle_path, tmp_path):
    target = tmp_path / "target"
    bundle = Bundle.load(tiny_bundle_path)
    bundle.save(target)
    (target / "stale.txt").write_text("from the old bundle")
    bundle.save(target)
    assert not (target / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]
    Bundle.load(target)


def test_a_failed_swap_leaves_the_old_bundle_in_place(tiny_bundle_path, tmp_path, monkeypatch):
    """Where the directories cannot be exchanged in one step, the old bundle is renamed aside
    and, when the new one cannot take its place, renamed back: never no bundle at the path."""
    import chatbot.model.bundle as bundle_module

    target = tmp_path / "target"
    bundle = Bundle.load(tiny_bundle_path)
    bundle.save(target)
    (target / "mark.txt").write_text("the old bundle")
    monkeypatch.setattr(bundle_module, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def failing(src, dst):
        if Path(src).name.startswith(".target.tmp-"):  # the staged new bundle
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(bundle_module.os, "rename", failing)
    with pytest.raises(BundleError, match="cannot write the bundle"):
        bundle.save(target)
    assert (target / "mark.txt").read_text() == "the old bundle"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]
    monkeypatch.setattr(bundle_module.os, "rename", real_rename)
    bundle.save(target)  # the fallback's normal path
    assert not (target / "mark.txt").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_training_refuses_an_output_that_is_not_a_bundle_and_a_second_training_of_the_same(tmp_path):
    """--out naming a folder of one's own (or ".") used to be emptied and replaced by the bundle;
    a second training of the same --out discarded the first one's work directory under it."""
    import fcntl

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("important")
    with pytest.raises(BundleError, match="not a model bundle"):
        train(TINY_PAIRS, tiny_config(), precious, verbose=0)
    assert [p.name for p in precious.iterdir()] == ["notes.txt"]
    out = tmp_path / "model"
    with open(tmp_path / ".model.lock", "a+b") as held:  # what a running training holds
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(TrainingError, match="another training is writing"):
            train(TINY_PAIRS, tiny_config(), out, verbose=0)
    assert not out.exists() and not work_dir_for(out).exists()


def test_settings_that_cannot_apply_are_said_not_silently_changed(tmp_path, caplog):
    """A validation fraction too small to hold out a pair, a val_ monitor without validation
    pairs, and answers longer than the model may generate are warnings naming the key."""
    import logging

    config = tiny_config(**{"data.validation_fraction": 0.01, "training.monitor": "val_loss", "training.epochs": 1,
                            "data.max_output_tokens": 6})
    with caplog.at_level(logging.WARNING, logger="chatbot.training"):
        dry_run(TINY_PAIRS, config, tmp_path / "m")  # a training's steps up to its first batch
    assert "data.validation_fraction 0.01 of 20 pairs holds out none" in caplog.text
    assert "training.monitor val_loss needs validation pairs; monitoring loss instead" in caplog.text
    assert "longer than data.max_output_tokens (6 tokens with [END]) and learned cut there (first: " in caplog.text


def test_answers_replies_cannot_reach_are_said(tmp_path, caplog):
    """Answers the decoding's max_length cuts (raising max_output_tokens alone silenced the
    warning while every reply still stopped at 128 tokens), and held-out answers that no
    training pair has: with retrieval on, the bot can never give them (an FAQ's held-out 10%)."""
    import logging

    config = tiny_config(**{"data.validation_fraction": 0.2, "training.epochs": 1, "data.max_output_tokens": 40,
                            "decoding.max_length": 5, "data.retrieved_pairs": 1})
    with caplog.at_level(logging.WARNING, logger="chatbot.training"):
        dry_run(TINY_PAIRS, config, tmp_path / "m")
    assert "longer than decoding.max_length (5 tokens): replies stop there (first: " in caplog.text
    assert "raise decoding.max_length to 39" in caplog.text
    assert "4 of 4 held-out pairs have an answer no training pair has (first: " in caplog.text
    assert "--validation-fraction 0" in caplog.text
    caplog.clear()
    config = tiny_config(**{"data.validation_fraction": 0.2, "training.epochs": 1, "data.retrieved_pairs": 0})
    with caplog.at_level(logging.WARNING, logger="chatbot.training"):
        dry_run(TINY_PAIRS, config, tmp_path / "chat")
    assert "held-out pairs" not in caplog.text  # a bot that does not answer from its pairs: not its concern


def test_a_dry_run_prepares_the_training_and_writes_nothing(tiny_bundle_path, tmp_path, capsys, monkeypatch, caplog):
    """``chatbot train --dry-run`` says what the training would be, from the same steps, and
    leaves the model at --out, an unfinished training beside it, and everything else as it was."""
    from helpers import run_cli

    out = tmp_path / "model"
    shutil.copytree(tiny_bundle_path, out)
    unfinished = work_dir_for(out)
    unfinished.mkdir()
    (unfinished / "state.json").write_text("{}")
    def tree() -> list:
        return sorted((p.relative_to(tmp_path), p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))

    before = tree()
    code, stdout, stderr = run_cli(capsys, monkeypatch, "train", "--corpus", TINY_PAIRS, "--out", out, "--dry-run",
                                   "--vocab-size", "300", "--units", "64", "--embedding-dim", "32",
                                   "--validation-fraction", "0.2", "--set", "data.retrieved_pairs=1",
                                   "--set", "data.noisy_copies=2")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary == {"dry_run": True, "model": str(out), "pairs": 20, "train": 16, "validation": 4,
                       "skipped_entries": 0, "vocabulary": 300, "unknown_token_rate": summary["unknown_token_rate"],
                       "training_inputs": 16 * 3 * 2,  # the pair and 2 noisy copies, each alone and with retrieval
                       "parameters": summary["parameters"]}
    assert 0 <= summary["unknown_token_rate"] < 0.02 and summary["parameters"] > 50_000
    assert f"a training of {out} would discard the unfinished training in {unfinished}" in caplog.text
    assert "[chatbot] model: GRU 64 x1" in stderr
    assert tree() == before
    code, _, stderr = run_cli(capsys, monkeypatch, "train", "--corpus", TINY_PAIRS, "--out", out, "--dry-run",
                              "--resume")
    assert code == 2 and "--dry-run checks a new training; --resume continues one" in stderr
    # What the training would refuse at once, the dry run refuses too: a training writing --out
    # now, a folder that cannot be written, a multi-worker run without its TF_CONFIG.
    import fcntl

    with open(tmp_path / ".model.lock", "wb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(TrainingError, match="another training is writing this model now"):
            dry_run(TINY_PAIRS, tiny_config(), out)
    with pytest.raises(TrainingError, match="/proc/nope: cannot write there \\(No such file or directory\\)"):
        dry_run(TINY_PAIRS, tiny_config(), "/proc/nope/model")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(TrainingError, match="multi-worker needs TF_CONFIG"):
        dry_run(TINY_PAIRS, tiny_config(**{"training.distribute": "multi-worker"}), tmp_path / "other")


def test_resume_without_an_interrupted_training_is_an_error(tmp_path):
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(TINY_PAIRS, tiny_config(), tmp_path / "m", resume=True, verbose=0)


def test_interrupted_training_resumes_and_keeps_the_old_bundle(tiny_bundle_path, tmp_path):
    """An interruption mid-training leaves the previous bundle intact and a resumable state."""
    import keras

    out = tmp_path / "model"
    shutil.copytree(tiny_bundle_path, out)
    before = (out / WEIGHTS).read_bytes()

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt

    config = tiny_config(**{"training.epochs": 6})
    with pytest.raises(KeyboardInterrupt):
        train(TINY_PAIRS, config, out, verbose=0, extra_callbacks=[Interrupt()])
    assert (out / WEIGHTS).read_bytes() == before
    assert (work_dir_for(out) / "backup").is_dir()

    bundle = train(TINY_PAIRS, config, out, resume=True, verbose=0)
    assert bundle.metrics["epochs_run"] == 3  # epochs 4-6: the first three were not redone
    assert not work_dir_for(out).exists()
    Bundle.load(out)


def test_a_moving_average_of_the_weights_is_what_the_bundle_keeps(tmp_path):
    """training.ema_momentum: the bundle holds the averaged weights, not the last step's. At a
    momentum of 0.9999 the average barely moves from where the first step left the weights
    (Keras starts it there), while the same training without it moves them far."""
    import keras
    import numpy as np

    class Start(keras.callbacks.Callback):
        weights = None

        def on_train_batch_end(self, batch, logs=None):
            if self.weights is None:
                self.weights = self.model.get_weights()

    def distance_moved(momentum: float) -> float:
        start = Start()
        config = tiny_config(**{"training.epochs": 3, "training.ema_momentum": momentum})
        bundle = train(TINY_PAIRS, config, tmp_path / f"ema{momentum}", verbose=0, extra_callbacks=[start])
        kept = Bundle.load(tmp_path / f"ema{momentum}").model.get_weights()
        assert bundle.config.training.ema_momentum == momentum  # serialised with the model
        return float(np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(kept, start.weights))))

    assert distance_moved(0.9999) < 0.01 * distance_moved(0.0)


def test_models_list_reads_manifests_without_loading_weights(tiny_bundle_path, tmp_path):
    from chatbot.model.bundle import list_bundles
    from test_cli import chatbot

    shutil.copytree(tiny_bundle_path, tmp_path / "good")
    shutil.copytree(tiny_bundle_path, tmp_path / "newer")
    manifest = json.loads((tmp_path / "newer" / MANIFEST).read_text())
    (tmp_path / "newer" / MANIFEST).write_text(json.dumps({**manifest, "format_version": FORMAT_VERSION + 1}))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / MANIFEST).write_text("{not json")
    (tmp_path / "configs").mkdir()  # not a bundle: skipped
    shutil.copytree(tiny_bundle_path, tmp_path / ".good.tmp-1234")  # a half-written save: skipped
    (tmp_path / "good" / WEIGHTS).write_bytes(b"not read by the listing")
    shutil.copytree(tiny_bundle_path, tmp_path / "weightless")
    (tmp_path / "weightless" / WEIGHTS).unlink()  # listed in the manifest: loading would refuse it

    found = {b.name: b for b in list_bundles(tmp_path)}
    assert sorted(found) == ["broken", "good", "newer", "weightless"]
    assert found["weightless"].problem == f"{WEIGHTS}: missing file"
    good = found["good"]
    assert good.problem is None and good.created == manifest["created"]
    assert good.parameters == manifest["parameters"] and good.corpus == manifest["corpus"]["path"]
    assert good.metrics["train_exact_match"] == 1.0  # the tiny model has no validation split
    assert "newer than this chatbot supports" in found["newer"].problem
    assert "unreadable or corrupt JSON" in found["broken"].problem

    table = chatbot("models", "list", "--dir", tmp_path)
    assert table.returncode == 0 and table.stderr == ""
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "SIZE", "CREATED"]
    assert lines[1].startswith("broken") and "unusable:" in lines[1]
    assert lines[2].startswith("good ") and f"{good.metrics['train_exact_match']:.1%}" in lines[2]
    as_json = [json.loads(line) for line in chatbot("models", "list", "--dir", tmp_path, "--json").stdout.splitlines()]
    assert [b["name"] for b in as_json] == ["broken", "good", "newer", "weightless"]
    assert lines[4].startswith("weightless") and f"unusable: {WEIGHTS}: missing file" in lines[4]
    missing = chatbot("models", "list", "--dir", tmp_path / "nowhere")
    assert missing.returncode == 1 and "not a directory" in missing.stderr


def test_the_history_reads_every_epoch_of_the_log_once(tmp_path):
    """A resumed run's bundle keeps every epoch's figures, also those before the resume; an
    epoch logged twice (killed after its row, before its checkpoint) counts once, as last run."""
    from chatbot.training.pipeline import logged_history

    log_file = tmp_path / "training_log.csv"
    log_file.write_text("epoch,loss,val_loss\n0,3.0,NA\n1,2.0,NA\n1,1.9,NA\n2,1.5,NA\n", encoding="utf-8")
    assert logged_history(log_file) == {"loss": [3.0, 1.9, 1.5]}  # no "epoch", no all-NA column
    assert logged_history(tmp_path / "missing.csv") == {}


def test_a_model_name_is_looked_up_in_the_working_directorys_models_first(tiny_bundle_path, tmp_path,
                                                                           monkeypatch, capsys):
    """``chatbot train`` writes to ./models/mine by default, so a user outside the checkout must
    be able to name that model; the bundled ones stay reachable by name too."""
    from chatbot.model.bundle import MODELS_DIR, resolve_model_path
    from helpers import run_cli

    shutil.copytree(tiny_bundle_path, tmp_path / "models" / "mine")
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("mine") == Path("models") / "mine"
    assert resolve_model_path("default") == MODELS_DIR / "default"
    with pytest.raises(BundleError, match=r"nothing: no such model .*name under models or .*: .*default, mine\)$"):
        resolve_model_path("nothing")  # the names it could have been

    assert resolve_model_path(None) == MODELS_DIR / "default"
    status, out, err = run_cli(capsys, monkeypatch, "models", "list", "--json")
    names = [json.loads(line)["name"] for line in out.splitlines()]
    assert status == 0 and names[0] == "mine" and "default" in names, err
    # A models/default here shadows the bundled one the same way, named or left out.
    shutil.copytree(tiny_bundle_path, tmp_path / "models" / "default")
    assert resolve_model_path("default") == resolve_model_path(None) == Path("models") / "default"
    status, out, err = run_cli(capsys, monkeypatch, "ask", "--model", "mine", "--json", "hello")
    assert status == 0 and json.loads(out)["reply"], err


CODE_PAIRS = [
    ("Show me a loop in Python", "Here:\n\n```\nfor i in range(3):\n    if i:\n        print(i)\n```"),
    ("Write a function that adds", "```\ndef add(a, b):\n    return a + b\n```"),
    ("Nested blocks please", "```\nwhile True:\n    for x in items:\n        if x:\n            break\n```"),
    ("Hello", "Hi there!"),
    ("How are you?", "Fine,  thanks."),
]


def test_a_tiny_model_answers_code_with_its_indentation_exactly(tmp_path):
    # Line breaks, runs of spaces and double spaces survive the corpus reader, the tokenizer,
    # training and the decode loop: code answers come back as written.
    corpus = tmp_path / "code.jsonl"
    corpus.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in CODE_PAIRS))
    config = tiny_config(**{"data.max_output_tokens": 60, "decoding.max_length": 60})
    train(corpus, config, tmp_path / "code", verbose=0)
    replies = ChatBot.load(tmp_path / "code").generate([q for q, _ in CODE_PAIRS])
    assert [r.text for r in replies] == [a for _, a in CODE_PAIRS]
