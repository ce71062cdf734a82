"""The gates judge the model: a model trained one epoch fails the training summary's exact
match, the golden checks and ``chatbot evaluate``, even though retrieval finds the right pair
for every question (retrieval only feeds the decoder; it cannot answer for it)."""

from __future__ import annotations

import json

import pytest

from chatbot.cli.main import _comparison_lines
from chatbot.evaluation.compare import Comparison
from chatbot.evaluation.evaluate import evaluate, evaluation_set
from chatbot.evaluation.golden import check_golden, load_golden
from chatbot.training.pipeline import train
from conftest import TINY_PAIRS, tiny_config
from helpers import run_cli


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    out = tmp_path_factory.mktemp("gates") / "one-epoch"
    config = tiny_config(**{"training.epochs": 1, "decoding.max_length": 12, "data.retrieved_pairs": 2,
                            "data.noisy_copies": 2})
    return train(TINY_PAIRS, config, out, verbose=0)


def test_one_epoch_fails_the_training_summary(one_epoch):
    assert one_epoch.metrics["train_exact_match"] < 0.2
    # Retrieval alone would have been right: every training question retrieves its own pair first.
    from chatbot.inference.retrieval import AnswerMemory

    memory = AnswerMemory(one_epoch.train)
    assert all(memory.retrieve(e.question, 1)[0][1] == e.answer for e in one_epoch.train)


def test_one_epoch_fails_golden_checks_and_evaluate(one_epoch, tmp_path):
    golden = tmp_path / "golden.tsv"
    golden.write_text(TINY_PAIRS.read_text(encoding="utf-8"), encoding="utf-8")
    assert not check_golden(one_epoch, load_golden(golden)).ok
    report = evaluate(one_epoch, evaluation_set(one_epoch, split="train").examples)
    assert report.exact_match < 0.2


def test_one_epoch_fails_cli_evaluate_golden(one_epoch, tmp_path, capsys, monkeypatch):
    """``chatbot evaluate`` in-process (test_evaluate.py runs it as a real process)."""
    golden = tmp_path / "golden.tsv"
    golden.write_text(TINY_PAIRS.read_text(encoding="utf-8"), encoding="utf-8")
    code, out, err = run_cli(capsys, monkeypatch, "evaluate", "--model", one_epoch.path, "--split", "train",
                             "--golden", golden, "--json")
    assert code == 1, err
    assert "golden cases failed" in err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["exact_match"] < 0.2


def test_evaluate_against_tells_a_real_difference_from_chance(one_epoch, tiny_bundle_path, tmp_path, capsys,
                                                              monkeypatch):
    """The trained tiny model against the one-epoch one, on the same pairs, question by question."""
    code, out, err = run_cli(capsys, monkeypatch, "evaluate", "--model", tiny_bundle_path, "--against", one_epoch.path,
                             "--corpus", TINY_PAIRS, "--json")
    assert code == 0, err
    against = json.loads(out.strip().splitlines()[-1])["against"]
    assert against["only_model"] >= 15 and against["only_baseline"] == 0 and against["p_value"] < 0.001
    details = tmp_path / "details.jsonl"
    run_cli(capsys, monkeypatch, "evaluate", "--model", tiny_bundle_path, "--against", one_epoch.path,
            "--corpus", TINY_PAIRS, "--details", details)
    rows = [json.loads(line) for line in details.read_text(encoding="utf-8").splitlines()]
    changed = [row for row in rows if row["exact"] and not row["against"]["exact"]]
    assert len(changed) == against["only_model"] and all(row["against"]["reply"] != row["reply"] for row in changed)
    code, out, _ = run_cli(capsys, monkeypatch, "evaluate", "--model", tiny_bundle_path, "--against", tiny_bundle_path,
                           "--corpus", TINY_PAIRS)
    assert code == 0 and "right only here 0, only there 0" in out and "McNemar exact p = 1: a tie" in out
    assert against["seen_by_model"] == against["seen_by_baseline"] == against["both"] + against["only_model"] + \
        against["only_baseline"] + against["neither"]  # both trained on every pair asked
    code, out, err = run_cli(capsys, monkeypatch, "evaluate", "--model", tiny_bundle_path, "--against", "no-such-model")
    assert code == 1 and out == "" and "no-such-model: no such model" in err


def test_evaluate_against_says_when_the_other_model_trained_on_the_held_out_questions(tiny_bundle_path, tmp_path,
                                                                                       capsys, monkeypatch):
    """A model's validation split is its unseen data, but maybe another's training data: the
    tiny model trained on every pair, so it is compared on questions it has seen."""
    held_out = train(TINY_PAIRS, tiny_config(**{"training.epochs": 1, "data.validation_fraction": 0.3}),
                     tmp_path / "held-out", verbose=0)
    asked = len({(e.context, e.question) for e in held_out.validation})
    code, out, err = run_cli(capsys, monkeypatch, "evaluate", "--model", held_out.path, "--against",
                             tiny_bundle_path, "--json")
    assert code == 0, err
    against = json.loads(out.strip().splitlines()[-1])["against"]
    assert asked > 0 and (against["seen_by_model"], against["seen_by_baseline"]) == (0, asked)
    lines = _comparison_lines(Comparison(**{**against, "baseline": "tiny"}), tiny_bundle_path)
    assert lines[-1].strip() == f"trained on: 0 of these questions here, {asked} there: the comparison favours the model there"
    unknown = Comparison(**{**against, "baseline": "tiny", "seen_by_baseline": None})  # an older bundle, corpus moved
    assert not any("trained on" in line for line in _comparison_lines(unknown, tiny_bundle_path))
