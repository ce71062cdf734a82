"""Choosing ``dialogue.min_confidence`` on one's own questions (``chatbot evaluate
--unanswerable``) and writing it into a trained model (``chatbot models set``)."""

from __future__ import annotations

import json

import pytest

from chatbot.errors import BundleError, ConfigError, CorpusError
from chatbot.evaluation.fallback import best_threshold, choose_min_confidence, load_questions, roc_auc
from chatbot.model.bundle import CONFIG, MANIFEST, WEIGHTS, Bundle, change_settings
from helpers import run_cli

OFF_CORPUS = ["What is the capital of Peru?", "How do I bake sourdough bread?", "Who won the 1998 world cup?",
              "Can you recommend a good book?"]


@pytest.fixture
def copy(tiny_bundle_path, tmp_path):
    """The tiny bundle at a path of this test's own: changing it changes nothing else."""
    return Bundle.load(tiny_bundle_path).save(tmp_path / "tiny")


def test_auc_perfect_inverted_and_ties():
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], [True, False, True, False]) == 0.5
    assert roc_auc([0.1, 0.9, 0.1, 0.9], [True, True, False, False]) == 0.5
    # 2 right x 2 wrong pairs: (0.8 > 0.3), (0.8 > 0.6), (0.4 > 0.3), (0.4 < 0.6) -> 3/4
    assert roc_auc([0.8, 0.4, 0.3, 0.6], [True, True, False, False]) == 0.75
    assert roc_auc([1.0, 2.0], [True, True]) is None


def test_auc_of_random_scores_is_near_half():
    import random

    rng = random.Random(3)
    scores = [rng.random() for _ in range(4000)]
    labels = [rng.random() < 0.5 for _ in scores]
    assert abs(roc_auc(scores, labels) - 0.5) < 0.03


def test_best_threshold():
    found = best_threshold([-0.1, -0.2, -1.0, -2.0], [True, True, False, False])
    assert found["threshold"] == -0.6 and found["accuracy"] == 1.0
    assert found["precision"] == 1.0 and found["recall"] == 1.0 and found["kept"] == 0.5
    # all right: keep everything; all wrong: keep nothing
    assert best_threshold([-1.0, -3.0], [True, True])["kept"] == 1.0
    assert best_threshold([-1.0, -3.0], [False, False])["threshold"] is None
    # ties are never split: one score, both outcomes
    tied = best_threshold([-1.0, -1.0, -1.0], [True, True, False])
    assert tied["kept"] == 1.0 and tied["accuracy"] == round(2 / 3, 4)


def test_the_threshold_never_drops_a_taught_question():
    right, wrong, unanswerable = [0.99, 0.98, 0.90], [0.95], [0.97, 0.5]
    free = choose_min_confidence(right, wrong, unanswerable, current=0.0)
    assert free.suggested.min_confidence == 0.975  # drops the right 0.90 to drop two wrong above it
    assert (free.suggested.right_kept, free.suggested.wrong_dropped, free.suggested.unanswerable_answered) == \
           (round(2 / 3, 4), 1.0, 0.0)
    capped = choose_min_confidence(right, wrong, unanswerable, current=0.0, taught=[0.99, 0.90])
    assert capped.cap == 0.9 and capped.suggested.min_confidence <= 0.9 and capped.suggested.right_kept == 1.0
    assert (capped.current.min_confidence, capped.current.accuracy) == (0.0, 0.5)
    assert choose_min_confidence([], [0.9], [0.5], current=0.2).suggested is None  # nothing right to keep
    assert free.auc_right_vs_unanswerable == round(roc_auc([*right, *unanswerable], [1, 1, 1, 0, 0]), 4)


def test_questions_are_read_from_lines_or_json_lines(tmp_path):
    text = tmp_path / "off.txt"
    text.write_text("# never taught\nWhat is the capital of Peru?\n\n  How do I bake bread?  \n", encoding="utf-8")
    assert load_questions(text) == ["What is the capital of Peru?", "How do I bake bread?"]
    rows = tmp_path / "off.jsonl"
    rows.write_text('{"question": "who won the 1998 world cup", "kind": "fact"}\n', encoding="utf-8")
    assert load_questions(rows) == ["who won the 1998 world cup"]
    rows.write_text('{"question": "fine"}\n{"q": "no"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"off.jsonl:2: expected an object with a 'question' string"):
        load_questions(rows)
    text.write_bytes(b"fine\nbad \xff byte\n")
    with pytest.raises(CorpusError, match=r"off.txt:2: invalid UTF-8"):
        load_questions(text)
    text.write_text("# only a comment\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="no questions"):
        load_questions(text)


def test_evaluate_chooses_a_threshold_with_unanswerable_questions(tiny_bot):
    from chatbot.evaluation.evaluate import evaluate, evaluation_set

    data = evaluation_set(tiny_bot.bundle, split="train")
    report = evaluate(tiny_bot, data.examples, data.reference, unanswerable=OFF_CORPUS)
    choice = report.fallback
    assert (choice.right, choice.wrong, choice.unanswerable) == (20, 0, len(OFF_CORPUS))
    assert choice.cap == round(min(item.confidence for item in report.items), 4)  # all are training questions
    assert choice.suggested is None or choice.suggested.right_kept == 1.0
    assert choice.current.min_confidence == tiny_bot.bundle.config.dialogue.min_confidence
    assert report.summary()["fallback"]["unanswerable"] == len(OFF_CORPUS)
    assert "fallback" not in evaluate(tiny_bot, data.examples[:2]).summary()


def test_settings_change_in_place_and_the_next_load_uses_them(copy, tiny_pairs):
    from chatbot.dialogue.bot import ChatBot

    before = ChatBot.load(copy, db="sqlite://", warm_up=False)
    weights = (copy / WEIGHTS).read_bytes()
    config = change_settings(copy, {"dialogue.min_confidence": 1.0, "dialogue.fallback_text": "¿Cómo dices?",
                                    "decoding.max_length": 40})
    assert (config.dialogue.min_confidence, config.decoding.max_length) == (1.0, 40)
    manifest = json.loads((copy / MANIFEST).read_text())
    assert manifest["changes"][-1]["settings"] == {"dialogue.min_confidence": 1.0,
                                                   "dialogue.fallback_text": "¿Cómo dices?", "decoding.max_length": 40}
    assert (copy / WEIGHTS).read_bytes() == weights and not list(copy.parent.glob(".tiny.*"))
    after = ChatBot.load(copy, db="sqlite://", warm_up=False)  # checked again: checksums hold
    assert after.bundle is not before.bundle and after.decoding.max_length == 40
    reply = after.reply(tiny_pairs[0][0])
    assert (reply.fallback, reply.text) == (True, "¿Cómo dices?")
    assert before.reply(tiny_pairs[0][0]).text == tiny_pairs[0][1]  # a bot already loaded keeps its settings


@pytest.mark.parametrize("settings, error", [
    ({"model.units": 8}, "only decoding.\\* and dialogue.\\* settings change without retraining"),
    ({"dialogue.min_confidence": 2}, "invalid value for 'dialogue.min_confidence'"),
    ({"dialogue.nope": 1}, "unknown config key 'dialogue.nope'"),
    ({}, "no settings to change"),
])
def test_a_refused_change_leaves_the_bundle_as_it_was(copy, settings, error):
    files = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match=error):
        change_settings(copy, settings)
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == files
    assert sorted(p.name for p in copy.parent.iterdir()) == ["tiny"]


def test_a_damaged_bundle_is_not_changed(copy):
    (copy / CONFIG).write_text((copy / CONFIG).read_text() + " ", encoding="utf-8")
    with pytest.raises(BundleError, match="checksum mismatch"):
        change_settings(copy, {"dialogue.min_confidence": 0.5})


def test_the_cli_chooses_and_sets_a_threshold(capsys, monkeypatch, copy, tmp_path):
    off = tmp_path / "off.txt"
    off.write_text("\n".join(OFF_CORPUS) + "\n", encoding="utf-8")
    code, out, err = run_cli(capsys, monkeypatch, "evaluate", "--model", copy, "--unanswerable", off)
    assert code == 0
    assert f"answers 100.0% of {len(OFF_CORPUS)} unanswerable" in out  # the model's min_confidence is 0
    assert "chosen on training questions alone" in out
    code, out, _ = run_cli(capsys, monkeypatch, "evaluate", "--model", copy, "--unanswerable", off, "--json")
    assert json.loads(out)["fallback"]["right"] == 20
    code, out, err = run_cli(capsys, monkeypatch, "models", "set", copy, "dialogue.min_confidence=0.5",
                             "dialogue.fallback_text=Sorry?")
    assert (code, out) == (0, 'dialogue.min_confidence = 0.5\ndialogue.fallback_text = "Sorry?"\n')
    assert Bundle.load(copy).config.dialogue.fallback_text == "Sorry?"
    code, out, err = run_cli(capsys, monkeypatch, "models", "set", copy, "training.epochs=3")
    assert code != 0 and err.count("\n") == 1 and "train again with chatbot train --set" in err
    off.write_bytes(b"fine\n\xff\n")
    code, out, err = run_cli(capsys, monkeypatch, "evaluate", "--model", copy, "--unanswerable", off)
    assert code != 0 and f"{off}:2: invalid UTF-8" in err
