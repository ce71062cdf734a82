"""Evaluation metrics, golden checks and plots: known values by hand, then the tiny model."""

from __future__ import annotations

import dataclasses
import json
import math
import struct

import pytest
import sacrebleu

from chatbot.data.corpus import Example
from chatbot.errors import BundleError, CorpusError, InputError, PlotError
from chatbot.evaluation.metrics import answers_by_input, corpus_bleu, corpus_chrf, distinct_inputs, distinct_n, is_exact, perplexity, sentence_chrf
from chatbot.evaluation.golden import check_golden, load_golden
from chatbot.evaluation.evaluate import evaluate, evaluation_set
from conftest import TINY_PAIRS
from helpers import chatbot, run_cli


def png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG file; fails unless it starts with the PNG signature and IHDR."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# --- metrics on hand-made cases ------------------------------------------------------------------
def test_exact_match_accepts_any_of_an_inputs_answers():
    reference = [Example((), "Hi", "Hello!"), Example((), "Hi", " Hey "), Example(("Hi",), "Hi", "Again?")]
    accepted = answers_by_input(reference)
    assert accepted == {("Hi",): ["Hello!", "Hey"], ("Hi", "Hi"): ["Again?"]}  # context is part of the key
    assert is_exact("Hey", accepted[("Hi",)]) and is_exact("  Hello!\n", accepted[("Hi",)])
    # One definition project-wide (data.text.normalise_answer): case and trailing punctuation
    # aside, so "hello" is right; other words, or leading/inner punctuation, are not.
    assert is_exact("hello", accepted[("Hi",)]) and is_exact("HEY!", accepted[("Hi",)])
    assert not is_exact("Again?", accepted[("Hi",)]) and not is_exact("Hello there", accepted[("Hi",)])
    assert is_exact("DIE STRASSE", ["Die Straße."]) and is_exact("東京は日本の首都です", ["東京は日本の首都です。"])  # case folded
    assert not is_exact("¡Hello", accepted[("Hi",)])
    # A golden file typed in Word or on a phone has typographic apostrophes and may have
    # full-width letters: they are what they stand for.
    assert is_exact("Je m'appelle Élodie.", ["Je m’appelle Élodie"]) and is_exact("ＯＫ", ["OK."])
    assert is_exact("\u00df\u0301", ["ss\u0301"]) and is_exact("ss\u0301", ["\u00df\u0301"])  # casefold, then compose
    assert distinct_inputs(reference + reference[:1]) == [("Hi",), ("Hi", "Hi")]


def test_distinct_n():
    replies = ["a b a", "a b", ""]
    assert distinct_n(replies, 1) == pytest.approx(2 / 5)  # a b a a b
    assert distinct_n(replies, 2) == pytest.approx(2 / 3)  # (a b) (b a) (a b)
    assert distinct_n(["one"], 2) == 0.0 and distinct_n([], 1) == 0.0
    assert distinct_n(["天气很好", "天气不好"], 1) == pytest.approx(5 / 8)  # a Chinese character is a word


def test_bleu_and_chrf_match_sacrebleu():
    hyps, refs = ["the cat sat on the mat", "a dog barked loudly"], ["the cat is on the mat", "the dog barked"]
    assert corpus_bleu(hyps, [[r] for r in refs]) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert corpus_chrf(hyps, [[r] for r in refs]) == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert sentence_chrf(hyps[0], [refs[0]]) == pytest.approx(sacrebleu.sentence_chrf(hyps[0], [refs[0]]).score)
    assert corpus_bleu(refs, [[r] for r in refs]) == pytest.approx(100.0)
    assert corpus_chrf(refs, [[r] for r in refs]) == pytest.approx(100.0)


def test_multi_reference_with_a_varying_number_of_answers():
    # The first input has one answer, the second three; each reply equals one of its answers.
    hyps = ["paris is the capital of france", "i like jazz and rock music"]
    refs = [["paris is the capital of france"],
            ["no music for me thanks", "i like jazz and rock music", "only classical"]]
    assert corpus_bleu(hyps, refs) == pytest.approx(100.0)
    assert corpus_chrf(hyps, refs) == pytest.approx(100.0)
    assert sentence_chrf(hyps[1], refs[1]) == pytest.approx(100.0)
    streams = [[refs[0][0], refs[1][0]], [None, refs[1][1]], [None, refs[1][2]]]
    wrong = ["paris is in france", "jazz is fine"]
    assert corpus_bleu(wrong, refs) == pytest.approx(sacrebleu.corpus_bleu(wrong, streams).score)
    with pytest.raises(InputError):
        corpus_bleu(["x"], [[]])


def test_bleu_counts_each_character_of_scripts_without_spaces():
    """sacrebleu's "zh" tokenizer split Han characters only: a right all-kana or Thai reply was
    one token, and one token short of BLEU's 4-grams, it scored 0."""
    for right in ("わたしのなまえはハナコです。", "สวัสดีครับ", "东京是日本的首都。"):
        assert corpus_bleu([right], [[right]]) == pytest.approx(100.0)
    near = corpus_bleu(["わたしのなまえはハナです。"], [["わたしのなまえはハナコです。"]])
    assert 50 < near < 100
    english = ["the cat sat on the mat", "a dog"]
    assert corpus_bleu(english, [["the cat sat on a mat"], ["the dog"]]) == pytest.approx(
        sacrebleu.corpus_bleu(english, [["the cat sat on a mat", "the dog"]]).score)  # spaced text as before


def test_perplexity_is_exp_of_the_loss():
    assert perplexity(0.0) == 1.0 and perplexity(2.5) == pytest.approx(math.exp(2.5))
    assert math.isfinite(perplexity(1e9))


def test_bleu_splits_chinese_and_japanese_into_characters():
    """One token per sentence (sacrebleu's 13a splits at spaces): right CJK answers scored 0."""
    refs = ["我非常喜欢猫。", "東京は日本の首都です。"]
    assert corpus_bleu(refs, [[r] for r in refs]) == pytest.approx(100.0)
    assert 50 < corpus_bleu(["我非常喜欢狗。", "東京は日本の首都です。"], [[r] for r in refs]) < 100


# --- golden files ----------------------------------------------------------------------------------
def test_golden_lines_end_at_newlines_only(tmp_path):
    """str.splitlines also ended a line at U+2028 inside an answer: "no tab" on the wrong line."""
    golden = tmp_path / "golden.tsv"
    golden.write_text("Hi\tone\u2028two\r\nBye\tSee you.\n", encoding="utf-8")
    cases = load_golden(golden)
    assert [(c.question, c.answers) for c in cases] == [("Hi", ("one\u2028two",)), ("Bye", ("See you.",))]
    assert cases[1].source == f"{golden}:2"


def test_load_golden_groups_answers_and_skips_comments(tmp_path):
    golden = tmp_path / "golden.tsv"
    golden.write_text("# must pass\n\nWhat is your name?\tMy name is Tiny.\n"
                      "  # indented comment\nHi\tHello!\nWhat is your name?\t  Tiny.  \nHi\tHello!\n",
                      encoding="utf-8")
    cases = load_golden(golden)
    assert [(c.question, c.answers) for c in cases] == [
        ("What is your name?", ("My name is Tiny.", "Tiny.")), ("Hi", ("Hello!",))]
    assert cases[0].source == f"{golden}:3" and cases[1].source == f"{golden}:5"


@pytest.mark.parametrize("text, line, why", [
    ("Hi\tHello\nno tab here\n", 2, "no tab"),
    ("# c\nHi\t   \n", 2, "empty expected answer"),
    ("\t answer\n", 1, "empty question"),
])
def test_bad_golden_lines_name_file_and_line(tmp_path, text, line, why):
    golden = tmp_path / "bad.tsv"
    golden.write_text(text, encoding="utf-8")
    with pytest.raises(CorpusError, match=why) as caught:
        load_golden(golden)
    assert (caught.value.file, caught.value.line) == (str(golden), line)
    assert str(caught.value).startswith(f"{golden}:{line}: ")


def test_golden_file_without_cases_or_missing(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("# nothing yet\n\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="no golden cases"):
        load_golden(empty)
    with pytest.raises(CorpusError, match="cannot read"):
        load_golden(tmp_path / "missing.tsv")
    latin1 = tmp_path / "latin1.tsv"
    latin1.write_bytes("Hi\tHello\ncaf\xe9\tok\n".encode("latin-1"))
    with pytest.raises(CorpusError) as caught:
        load_golden(latin1)
    assert caught.value.line == 2


def test_golden_cases_from_a_corpus_format(tmp_path):
    golden = tmp_path / "golden.jsonl"
    golden.write_text('{"question": "Hi", "answer": "Hello!"}\n{"question": "Hi", "answer": "Hey"}\n')
    assert [(c.question, c.answers) for c in load_golden(golden)] == [("Hi", ("Hello!", "Hey"))]


def test_a_golden_failure_is_summed_up_on_one_short_line():
    """``train --golden`` names its first failure in a one-line error, which a code sample of
    several hundred tokens and many lines would break."""
    from chatbot.evaluation.golden import GoldenCase, GoldenOutcome

    code = "def reverse(items):\n    return items[::-1]\n" * 40
    outcome = GoldenOutcome(GoldenCase("How do I\nreverse a list?", ("Use [::-1].",), "golden.tsv:3"), code, -0.5)
    summary = outcome.summary()
    assert "\n" not in summary and len(summary) < 160
    assert summary.startswith("golden.tsv:3: 'How do I reverse a list?' -> 'def reverse(items): return")
    assert summary.endswith("[...]'")
    short = GoldenOutcome(GoldenCase("Hi", ("Hello",), "g.tsv:1"), "Bye", -1.0)
    assert short.summary() == "g.tsv:1: 'Hi' -> 'Bye'"


# --- on the tiny model -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_report(tiny_bot):
    data = evaluation_set(tiny_bot.bundle, split="train")
    return evaluate(tiny_bot, data.examples, data.reference, source=data.source)


def test_evaluate_on_the_training_pairs(train_report, tiny_pairs):
    r = train_report
    assert r.source == "train" and r.pairs == r.inputs == len(tiny_pairs)
    assert r.exact_match == 1.0 and r.exact_count == len(tiny_pairs)
    assert r.bleu == pytest.approx(100.0) and r.chrf == pytest.approx(100.0)
    assert r.perplexity == pytest.approx(math.exp(r.loss)) and r.loss < 0.5
    assert r.token_accuracy > 0.9
    assert 0 < r.distinct_1 <= 1 and 0 < r.distinct_2 <= 1
    assert r.reply_words == pytest.approx(sum(len(a.split()) for _, a in tiny_pairs) / len(tiny_pairs))
    assert r.reply_tokens > r.reply_words / 2
    assert 0 < r.latency_ms["p50"] <= r.latency_ms["p90"]
    item = r.items[0]
    assert (item.question, item.reply, item.references, item.exact) == (
        tiny_pairs[0][0], tiny_pairs[0][1], (tiny_pairs[0][1],), True)
    assert item.score <= 0 and item.chrf == pytest.approx(100.0)
    summary = r.summary()
    assert json.loads(json.dumps(summary)) == summary and "items" not in summary


def test_evaluate_counts_wrong_replies_and_other_accepted_answers(tiny_bot, tiny_pairs):
    (q1, a1), (q2, a2) = tiny_pairs[:2]
    examples = [Example((), q1, "Something else entirely."), Example((), q2, "Not this either.")]
    reference = [Example((), q1, a1)]  # q1's real answer is accepted through the reference only
    report = evaluate(tiny_bot, examples, reference)
    assert [i.exact for i in report.items] == [True, False] and report.exact_match == 0.5
    assert report.items[0].references == (a1, "Something else entirely.")
    assert report.bleu < 100 and report.items[1].chrf < 100
    with pytest.raises(InputError):
        evaluate(tiny_bot, [])


def test_the_teacher_forced_loss_follows_the_retrieval_setting(tiny_bot, tiny_pairs):
    """--no-retrieval changed the replies, and the loss, perplexity and token accuracy stayed
    those of inputs with retrieval."""
    examples = [Example((), q, a) for q, a in tiny_pairs[:6]]
    shown, alone = evaluate(tiny_bot, examples), evaluate(tiny_bot, examples, decoding={"retrieval": False})
    assert tiny_bot.bundle.config.data.retrieved_pairs > 0  # the shared tiny model reads retrieval
    assert shown.loss != alone.loss


def test_evaluation_set_sources_and_limit(tiny_bot, tiny_pairs, tmp_path):
    bundle = tiny_bot.bundle
    with pytest.raises(BundleError, match="no validation split"):
        evaluation_set(bundle, split="validation")  # the tiny model kept nothing back
    default = evaluation_set(bundle)  # so by default: the training split, and it says so
    assert default.source == "train" and default.examples == bundle.train
    with_validation = dataclasses.replace(bundle, validation=bundle.train[:2])
    assert evaluation_set(with_validation).source == "validation"  # preferred when there is one
    limited = evaluation_set(bundle, corpus=TINY_PAIRS, limit=3)
    assert [e.question for e in limited.examples] == [q for q, _ in tiny_pairs[:3]]
    assert len(limited.reference) == len(tiny_pairs) and limited.source == str(TINY_PAIRS)
    # The training split comes from the bundle's train.jsonl, whatever became of the corpus
    # since (the shipped model's bundled corpus was edited after it was trained); without one
    # (older bundles) it is rebuilt from the recorded corpus, which must still be there, unchanged.
    assert evaluation_set(bundle, split="train").examples == bundle.train
    edited = dataclasses.replace(bundle, corpus={**bundle.corpus, "sha256": "0" * 64, "path": str(tmp_path / "gone")},
                                 validation=bundle.train[:2])
    assert edited.training_examples() == bundle.train + bundle.train[:2]  # what --mix-old adds
    assert evaluation_set(edited, split="validation").reference == bundle.train + bundle.train[:2]
    older = dataclasses.replace(bundle, train=[])
    assert sorted(e.question for e in evaluation_set(older, split="train").examples) == sorted(q for q, _ in tiny_pairs)
    changed = dataclasses.replace(older, corpus={**bundle.corpus, "sha256": "0" * 64})
    with pytest.raises(CorpusError, match="changed since it was trained"):
        evaluation_set(changed, split="train")
    moved = dataclasses.replace(older, corpus={**bundle.corpus, "path": str(tmp_path / "gone.tsv")})
    with pytest.raises(CorpusError, match="no longer here"):
        evaluation_set(moved, split="train")


def test_check_golden_passes_and_fails(tiny_bot, tiny_pairs, tmp_path):
    golden = tmp_path / "golden.tsv"
    (q1, a1), (q2, _) = tiny_pairs[:2]
    golden.write_text(f"{q1}\tsomething else\n{q1}\t{a1}\n{q2}\tA wrong expectation.\n", encoding="utf-8")
    result = check_golden(tiny_bot, load_golden(golden))
    assert [o.case.question for o in result.passed] == [q1]
    assert [o.case.question for o in result.failed] == [q2] and not result.ok
    assert result.failed[0].reply == tiny_pairs[1][1]
    assert result.to_json()["failed"][0]["source"] == f"{golden}:3"
    # A Bundle works too: training checks a new model before it replaces the old one.
    assert check_golden(tiny_bot.bundle, load_golden(golden)[:1]).ok


# --- plots -----------------------------------------------------------------------------------------
def test_plot_training_history_writes_a_png(tmp_path):
    from chatbot.evaluation.plots import plot_training_history

    history = {"loss": [3.0, 2.0, 1.2], "val_loss": [3.1, 2.5, 2.4],
               "masked_accuracy": [0.2, 0.5, 0.7], "val_masked_accuracy": [0.2, 0.3, 0.35], "learning_rate": [0.01] * 3}
    out = plot_training_history(history, tmp_path / "sub" / "history.png", title="tiny")
    width, height = png_size(out)
    assert width >= 600 and height >= 300 and out.stat().st_size > 5000
    assert [p.name for p in out.parent.iterdir()] == ["history.png"]  # no temporary file left
    assert png_size(plot_training_history({"loss": [1.0, 0.5]}, tmp_path / "loss.png"))[0] > 0
    with pytest.raises(PlotError, match="nothing to plot"):
        plot_training_history({"learning_rate": [0.1]}, tmp_path / "none.png")


def test_plot_evaluation_writes_a_png(train_report, tmp_path):
    from chatbot.evaluation.plots import plot_evaluation

    out = plot_evaluation(train_report, tmp_path / "eval.png")
    assert png_size(out)[0] >= 600 and out.stat().st_size > 5000


# --- the command line ------------------------------------------------------------------------------
def test_cli_evaluate_table_details_plot_and_failing_golden(tiny_bundle_path, tiny_pairs, tmp_path, capsys,
                                                           monkeypatch):
    golden = tmp_path / "golden.tsv"
    golden.write_text(f"{tiny_pairs[0][0]}\t{tiny_pairs[0][1]}\n{tiny_pairs[1][0]}\tNope.\n", encoding="utf-8")
    details, plot = tmp_path / "details.jsonl", tmp_path / "eval.png"
    code, out, err = run_cli(capsys, monkeypatch, "evaluate", "--model", tiny_bundle_path, "--split", "train",
                             "--details", details, "--plot", plot, "--golden", golden)
    assert code == 1, err
    assert "exact match     100.0%  (20 of 20)" in out and "BLEU            100.00" in out
    for label in ("perplexity", "token accuracy", "chrF", "distinct-1/2", "self-perplexity", "reply length",
                  "latency"):
        assert f"\n{label}" in out
    assert "(the 10 most frequent replies: 50.0% of all)" in out  # 20 distinct replies, 10 of them
    assert "golden          1 of 2 passed" in out and f"FAIL {golden}:2: {tiny_pairs[1][0]}" in out
    assert err == f"chatbot: 1 of 2 golden cases failed ({golden})\n"
    rows = [json.loads(line) for line in details.read_text().splitlines()]
    assert len(rows) == len(tiny_pairs) and all(r["exact"] for r in rows)
    assert set(rows[0]) == {"context", "question", "reply", "references", "exact", "score", "confidence", "chrf",
                            "tokens", "latency_ms"}
    assert png_size(plot)[0] >= 600 and plot.stat().st_size > 5000


def test_cli_evaluate_json_on_a_corpus(tiny_bundle_path, tiny_pairs, tmp_path, capsys, monkeypatch):
    golden = tmp_path / "golden.tsv"
    golden.write_text("".join(f"{q}\t{a}\n" for q, a in tiny_pairs[:3]), encoding="utf-8")
    code, out, err = run_cli(capsys, monkeypatch, "evaluate", "--model", tiny_bundle_path, "--corpus", TINY_PAIRS,
                             "--limit", 5, "--json", "--golden", golden, "--max-length", 30)
    assert code == 0, err
    report = json.loads(out)
    assert {"model", "source", "pairs", "inputs", "loss", "perplexity", "token_accuracy", "exact_match",
            "bleu", "chrf", "distinct_1", "distinct_2", "reply_tokens", "reply_words", "latency_ms",
            "decoding", "golden"} <= set(report)
    assert report["inputs"] == 5 and report["exact_match"] == 1.0
    assert set(report["latency_ms"]) == {"mean", "p50", "p90"}
    assert report["decoding"]["strategy"] == "greedy" and report["decoding"]["max_length"] == 30
    assert report["golden"] == {"passed": 3, "failed": []}


def test_a_corpus_question_longer_than_a_chat_message_is_judged(tiny_bundle_path, tiny_pairs, tmp_path, capsys,
                                                                 monkeypatch):
    """The chat limit on a message (dialogue.max_message_chars) guards a conversation's storage;
    judging a model reads corpus questions of any length (one of 21,000 characters failed
    training after its last epoch, and evaluate)."""
    from chatbot.evaluation.evaluate import exact_match
    from chatbot.evaluation.golden import as_chatbot
    from chatbot.model.bundle import Bundle

    question, answer = tiny_pairs[0]
    long = Example((), "x " * 10_500 + question, answer)
    assert exact_match(as_chatbot(Bundle.load(tiny_bundle_path)), [long], [long]) in (0.0, 1.0)
    corpus = tmp_path / "long.tsv"
    corpus.write_text(f"{long.question}\t{answer}\n{question}\t{answer}\n", encoding="utf-8")
    code, out, err = run_cli(capsys, monkeypatch, "evaluate", "--model", tiny_bundle_path, "--corpus", corpus, "--json")
    assert code == 0, err
    assert json.loads(out)["inputs"] == 2


def test_cli_evaluate_errors_are_one_line(tiny_bundle_path, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.tsv"
    bad.write_text("Hi\tHello\nno tab\n")
    code, _, err = run_cli(capsys, monkeypatch, "evaluate", "--model", tiny_bundle_path, "--golden", bad)
    assert code == 1 and err == f"chatbot: error: {bad}:2: expected 'question<TAB>expected answer', found no tab\n"
    code, _, err = run_cli(capsys, monkeypatch, "evaluate", "--model", tiny_bundle_path, "--split", "validation")
    assert code == 1 and err.count("\n") == 1 and "no validation split" in err
    assert chatbot("evaluate", "--split", "test").returncode == 2  # a real process: argparse's exit


def test_cli_bare_evaluate_without_a_validation_split_uses_the_training_split(tiny_bundle_path, tiny_pairs,
                                                                              capsys, monkeypatch):
    """The tiny model, like models/default, is trained with data.validation_fraction 0: a bare
    ``chatbot evaluate`` evaluates on the training questions and says so (table, stderr, JSON)."""
    code, out, err = run_cli(capsys, monkeypatch, "evaluate", "--model", tiny_bundle_path)
    assert code == 0, err
    assert f"evaluated on    train split: {len(tiny_pairs)} pairs" in out
    assert err.count("\n") == 1 and "no validation pairs" in err
    assert "training questions" in err
    code, out, err = run_cli(capsys, monkeypatch, "evaluate", "--model", tiny_bundle_path, "--json", "--limit", 3)
    assert code == 0, err
    assert json.loads(out)["source"] == "train" and "training questions" in err
