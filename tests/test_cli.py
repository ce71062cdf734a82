"""The ``chatbot`` command as users run it: real subprocesses, real exit codes. Tests of what a
command prints for its input run it in-process (``run_cli``: TensorFlow is not imported again
for each); a real stdin pipe is tested in test_hardening_cli.py."""

from __future__ import annotations

import json

import pytest

from conftest import DATA
from helpers import chatbot, run_cli  # test_decoding.py still imports chatbot from this module


def test_ask_answers_arguments_in_order(tiny_bundle_path, tiny_pairs):
    (q1, a1), (q2, a2) = tiny_pairs[0], tiny_pairs[3]
    result = chatbot("ask", "--model", tiny_bundle_path, q1, q2)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [a1, a2]
    assert result.stderr == ""  # no TensorFlow start-up noise


def test_ask_reads_stdin_one_reply_line_per_input_line(tiny_bundle_path, tiny_pairs, capsys, monkeypatch):
    questions = [q for q, _ in tiny_pairs[:5]]
    lines = questions[:2] + [""] + questions[2:] + ["¿qué? 😀"]
    code, stdout, stderr = run_cli(capsys, monkeypatch, "ask", "--model", tiny_bundle_path,
                                   stdin="\n".join(lines) + "\n")
    assert code == 0, stderr
    out = stdout.split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines)
    assert out[:2] == [a for _, a in tiny_pairs[:2]]
    assert out[2] == ""  # an empty input line gets an empty reply line, keeping lines aligned
    assert out[3:6] == [a for _, a in tiny_pairs[2:5]]


def test_ask_json_lines(tiny_bundle_path, tiny_pairs, capsys, monkeypatch):
    question, answer = tiny_pairs[1]
    code, stdout, stderr = run_cli(capsys, monkeypatch, "ask", "--model", tiny_bundle_path, "--json",
                                   stdin=f"{question}\n{question}\n")
    assert code == 0, stderr
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert set(row) == {"reply", "score", "confidence", "latency_ms", "read_as", "retrieved"}
        assert row["read_as"] == question
        assert 0 <= row["confidence"] <= 1
        assert row["reply"] == answer
        assert row["score"] <= 0 and row["latency_ms"] > 0
        # What the model was shown: the question's own pair first, then the next nearest.
        assert row["retrieved"][0] == {"question": question, "answer": answer, "similarity": 1.0}
        assert len(row["retrieved"]) == 2 and set(row["retrieved"][1]) == {"question", "answer", "similarity"}
    code, stdout, stderr = run_cli(capsys, monkeypatch, "ask", "--model", tiny_bundle_path, "--json",
                                   "--no-retrieval", question)
    assert code == 0, stderr
    assert json.loads(stdout)["retrieved"] == []
    # A typo is read as the corpus word it was (data.spelling), and answered as the question.
    code, stdout, stderr = run_cli(capsys, monkeypatch, "ask", "--model", tiny_bundle_path, "--json",
                                   "How oldd are youu?")
    assert code == 0, stderr
    assert json.loads(stdout)["read_as"] == "How old are you?"
    assert json.loads(stdout)["reply"] == answer


def test_ask_with_a_missing_model_fails_with_one_line(tmp_path, capsys, monkeypatch):
    """In-process; test_repl.py runs ``chatbot chat`` on a missing model as a real process."""
    code, _, stderr = run_cli(capsys, monkeypatch, "ask", "--model", tmp_path / "nope", "hello")
    assert code == 1
    assert stderr.count("\n") == 1 and "no such model" in stderr
    assert "Traceback" not in stderr


def test_train_reports_corpus_errors_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("hello\tworld\nno tab on this line\n")
    result = chatbot("train", "--corpus", bad, "--out", tmp_path / "m", "--strict")
    assert result.returncode == 1
    assert f"{bad}:2" in result.stderr and "no tab" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "m").exists()


def test_train_rejects_unknown_config_keys(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[model]\nunitz = 3\n")
    result = chatbot("train", "--corpus", DATA / "tiny_pairs.tsv", "--config", config, "--out", tmp_path / "m")
    assert result.returncode == 1
    assert "model.unitz" in result.stderr


def test_train_then_ask_through_the_cli(tmp_path, capsys, monkeypatch):
    """In-process: ``chatbot ask`` as a real process is tested above."""
    out = tmp_path / "cli_model"
    code, stdout, stderr = run_cli(capsys, monkeypatch, "train", "--corpus", DATA / "tiny_pairs.tsv", "--out",
                                   out, "--quiet", "--epochs", 3, "--units", 16, "--embedding-dim", 8,
                                   "--vocab-size", 100, "--validation-fraction", 0.2,
                                   "--set", "decoding.max_length=8")
    assert code == 0, stderr
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["epochs"] == 3 and "validation_loss" in summary
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["units"] == 16 and config["decoding"]["max_length"] == 8
    code, stdout, stderr = run_cli(capsys, monkeypatch, "ask", "--model", out, "What is your name?")
    assert code == 0 and len(stdout.splitlines()) == 1, stderr


def test_train_progress_goes_to_stderr_and_stdout_holds_only_the_summary(tmp_path, capsys, monkeypatch):
    """So that `chatbot train ... > summary.json` and `| jq` work. Keras prints its progress to
    stdout; away from a terminal it is one line per epoch, not a bar redrawn per batch."""
    code, stdout, stderr = run_cli(capsys, monkeypatch, "train", "--corpus", DATA / "tiny_pairs.tsv", "--out",
                                   tmp_path / "m", "--epochs", 2, "--units", 8, "--embedding-dim", 8,
                                   "--attention", "none")  # a documented value: copying goes off with it
    assert code == 0, stderr
    assert len(stdout.splitlines()) == 1 and json.loads(stdout)["epochs"] == 2
    model = json.loads((tmp_path / "m" / "config.json").read_text())["model"]
    assert model["attention"] == "none" and model["copy_attention"] is False
    lines = stderr.splitlines()
    assert "Epoch 1/2" in lines and any(line.startswith("[chatbot] epoch 2/2: ") for line in lines)
    assert not any("\b" in line for line in lines)  # no bar redrawn with backspaces


@pytest.mark.parametrize("args", [["ask", "--max-length", "x"], ["frobnicate"], []])
def test_bad_usage_exits_2(args):
    assert chatbot(*args).returncode == 2
