"""Retraining: fine-tuning (`train(..., base=...)`, `chatbot train --from`) from a bundle's
weights and tokenizer, golden checks that guard the installed bundle, and the training logs
and plot written into every bundle."""

from __future__ import annotations

import logging
import shutil

import pytest

from chatbot.model.bundle import TOKENIZER, WEIGHTS, Bundle
from chatbot.data.corpus import Example
from chatbot.errors import BundleError, TrainingError
from chatbot.evaluation.evaluate import exact_match
from chatbot.training.pipeline import GoldenCheckFailed, dry_run, train
from conftest import TINY_PAIRS, tiny_config
from helpers import chatbot, run_cli

NEW_PAIRS = [
    ("What is your favourite food?", "I like pizza with olives."),
    ("Where is the moon?", "The moon is in the sky."),
    ("Do you like cats?", "Cats are great company."),
    ("What is the weather like?", "It is sunny and warm."),
    ("Who are your friends?", "My friends are the other models."),
]


def exact(bundle: Bundle, pairs) -> float:
    examples = [Example((), q, a) for q, a in pairs]
    return exact_match(bundle, examples, examples)


@pytest.fixture
def new_corpus(tmp_path):
    path = tmp_path / "new.tsv"
    path.write_text("".join(f"{q}\t{a}\n" for q, a in NEW_PAIRS), encoding="utf-8")
    return path


def test_fine_tuning_learns_the_new_pairs_and_keeps_the_old_ones(tiny_bundle_path, tiny_pairs, new_corpus,
                                                                 tmp_path):
    base = Bundle.load(tiny_bundle_path)
    assert exact(base, NEW_PAIRS) <= 0.2  # the base model does not know them
    config = tiny_config(**{"training.epochs": 15, "training.learning_rate": 0.01})  # 1.0 and 1.0 measured
    tuned = train(new_corpus, config, tmp_path / "tuned", verbose=0, base=tiny_bundle_path, mix_base_corpus=True)

    assert exact(tuned, NEW_PAIRS) >= 0.8
    assert exact(tuned, tiny_pairs) >= 0.9
    # The tokenizer is the base model's, unchanged; the bundle says where it came from.
    assert (tmp_path / "tuned" / TOKENIZER).read_text() == (tiny_bundle_path / TOKENIZER).read_text()
    origin = tuned.corpus["base_model"]
    assert origin["name"] == "tiny" and origin["mixed_in"] is True and origin["rebuilt_vocab"] is False
    assert tuned.corpus["train"] == len(NEW_PAIRS) + len(tiny_pairs)
    assert 0 <= tuned.metrics["unknown_token_rate"] < 0.02
    assert Bundle.load(tmp_path / "tuned").manifest["corpus"]["base_model"]["path"] == str(tiny_bundle_path)


def test_fine_tuning_keeps_the_base_architecture(tiny_bundle_path, new_corpus, tmp_path):
    with pytest.raises(TrainingError, match=r"model\.units is 32 here and 64 in the base model"):
        train(new_corpus, tiny_config(**{"model.units": 32}), tmp_path / "x", verbose=0, base=tiny_bundle_path)
    with pytest.raises(TrainingError, match=r"tokenizer\.vocab_size is 500 here and 300"):
        train(new_corpus, tiny_config(**{"tokenizer.vocab_size": 500}), tmp_path / "x", verbose=0,
              base=tiny_bundle_path)
    assert not (tmp_path / "x").exists() and not (tmp_path / ".x.training").exists()  # nothing left to "resume"


def test_unknown_tokens_are_reported_and_rebuild_vocab_fits_a_new_vocabulary(tiny_bundle_path, tmp_path, caplog):
    greek = tmp_path / "greek.tsv"
    greek.write_text("Τι κάνεις;\tΚαλά, ευχαριστώ.\nΠού μένεις;\tΣτην Αθήνα.\n", encoding="utf-8")
    config = tiny_config(**{"training.epochs": 2})
    with caplog.at_level(logging.WARNING, logger="chatbot.training"):
        kept = dry_run(greek, config, tmp_path / "kept", base=tiny_bundle_path)  # the training's first steps
    assert kept.unknown_token_rate > 0.5
    assert "unknown to tiny's vocabulary: consider --rebuild-vocab" in caplog.text

    rebuilt = train(greek, config, tmp_path / "rebuilt", verbose=0, base=tiny_bundle_path, rebuild_vocab=True)
    assert rebuilt.metrics["unknown_token_rate"] == 0
    assert rebuilt.corpus["base_model"]["rebuilt_vocab"] is True


def test_cli_fine_tuning_flags(tiny_bundle_path, new_corpus, tmp_path, capsys, monkeypatch):
    misuse = chatbot("train", "--corpus", new_corpus, "--mix-old", "--out", tmp_path / "m")
    assert misuse.returncode == 2 and "--mix-old and --rebuild-vocab go with --from MODEL" in misuse.stderr
    code, _, err = run_cli(capsys, monkeypatch, "train", "--corpus", new_corpus, "--from", tiny_bundle_path,
                           "--out", tmp_path / "m", "--epochs", "2", "--quiet", "--validation-fraction", "0")
    assert code == 0, err
    assert f"fine-tuning tiny ({tiny_bundle_path}); unknown tokens in the new training pairs: 0.0%" in err
    assert (tmp_path / "m" / TOKENIZER).read_text() == (tiny_bundle_path / TOKENIZER).read_text()


def test_a_model_failing_its_golden_checks_does_not_replace_the_bundle(tiny_bundle_path, tiny_bot, tiny_pairs,
                                                                       tmp_path):
    """The gate judges whatever training made; the new models here are one-epoch fine-tunings of
    the tiny model at a small learning rate, which answer as it does (11 s each, not 35)."""
    out = tmp_path / "installed"
    shutil.copytree(tiny_bundle_path, out)
    before = (out / WEIGHTS).read_bytes()
    config = tiny_bot.bundle.config.with_overrides({"training.epochs": 1, "training.learning_rate": 1e-4})
    golden = tmp_path / "golden.tsv"
    golden.write_text("# the bot must know this\nWhat is your name?\tMy name is Tiny.\n"
                      "Goodbye\tThis answer was never in the corpus.\n", encoding="utf-8")

    with pytest.raises(GoldenCheckFailed, match=rf"fails 1 of 2 golden checks \(first: {golden}:3: 'Goodbye'"):
        train(TINY_PAIRS, config, out, verbose=0, golden=golden, base=tiny_bundle_path)
    assert (out / WEIGHTS).read_bytes() == before  # the installed bundle is untouched
    rejected = Bundle.load(tmp_path / "installed.rejected")
    assert rejected.metrics["golden"] == {"file": str(golden), "passed": 1, "failed": 1}

    golden.write_text("".join(f"{q}\t{a}\n" for q, a in tiny_pairs[:5]), encoding="utf-8")
    bundle = train(TINY_PAIRS, config, out, verbose=0, golden=golden, base=tiny_bundle_path)
    assert bundle.metrics["golden"]["failed"] == 0 and (out / WEIGHTS).read_bytes() != before

    # Every bundle carries its TensorBoard logs and a plot of the run, checksummed like the rest.
    events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(name.startswith("tensorboard/") for name in Bundle.load(out).manifest["files"])
    events[0].write_bytes(events[0].read_bytes() + b"x")
    with pytest.raises(BundleError, match="corrupt file"):
        Bundle.load(out)


def test_a_bad_golden_file_fails_before_training(tmp_path, capsys, monkeypatch):
    golden = tmp_path / "golden.tsv"
    golden.write_text("What is your name?\tMy name is Tiny.\nno tab on this line\n", encoding="utf-8")
    code, _, err = run_cli(capsys, monkeypatch, "train", "--corpus", TINY_PAIRS, "--golden", golden,
                           "--out", tmp_path / "m")
    assert code == 1
    assert err.strip().endswith(f"{golden}:2: expected 'question<TAB>expected answer', found no tab")
    assert not (tmp_path / "m").exists() and not (tmp_path / ".m.training").exists()
