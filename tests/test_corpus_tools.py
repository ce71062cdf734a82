"""Corpus tools: stats with known figures, validate listing every problem, lossless convert
round trips, and the ``chatbot corpus`` commands (in-process, and once on the real corpus)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import chatbot.cli.main as cli
from chatbot.data.corpus import load_corpus
from chatbot.data.corpus_tools import convert_corpus, corpus_stats, format_stats, validate_corpus
from chatbot.errors import CorpusError, InputError

ROOT = Path(__file__).resolve().parents[1]
ENGLISH = ROOT / "corpora" / "english"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def examples(path, context_turns: int = 0) -> list[tuple]:
    """What training sees, without the source field (which names the file)."""
    return [(e.context, e.question, e.answer)
            for e in load_corpus(path).examples(context_turns, deduplicate=False)]


def run(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(["corpus", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


# --- stats -----------------------------------------------------------------------------------
TINY_YAML = """\
categories:
- greetings
conversations:
- - Hello
  - Hi there
- - Hello
  - Hi there
- - Hello
  - Good morning to you
- - How are you?
  - I am fine, thanks.
  - Good to hear
"""
TINY_TSV = "What is AI?\tArtificial intelligence\nno tab here\n"


@pytest.fixture
def tiny(tmp_path) -> Path:
    write(tmp_path / "tiny" / "a.yml", TINY_YAML)
    write(tmp_path / "tiny" / "b.tsv", TINY_TSV)
    return tmp_path / "tiny"


def test_stats_known_figures(tiny):
    s = corpus_stats(tiny)
    assert (s["files"], s["dialogues"], s["pairs"], s["unique_pairs"]) == (2, 5, 6, 5)
    assert (s["duplicate_pairs"], s["duplicate_copies"]) == (1, 1)  # Hello -> Hi there, twice
    assert s["skipped"] == [f"{tiny / 'b.tsv'}:2: expected 'question<TAB>answer', found no tab"]
    # questions: Hello x3, How are you?, I am fine, thanks. (middle turn), What is AI?
    assert s["questions"] == 4 and s["conflicting_questions"] == 1
    assert s["conflict_examples"] == [{"question": "Hello", "answers": ["Hi there", "Good morning to you"]}]
    # nearest rank: question chars 5 5 5 11 12 18, words 1 1 1 3 3 4;
    # answer chars 8 8 12 18 19 23, words 2 2 2 3 4 4
    assert s["lengths"] == {
        "question": {"chars": {"p50": 5, "p90": 18, "p99": 18, "max": 18},
                     "words": {"p50": 1, "p90": 4, "p99": 4, "max": 4}},
        "answer": {"chars": {"p50": 12, "p90": 23, "p99": 23, "max": 23},
                   "words": {"p50": 2, "p90": 4, "p99": 4, "max": 4}},
    }
    # words counted once per utterance: hello 3; hi, there, good, to, you 2; 13 others once
    assert (s["vocabulary"], s["words"], s["singletons"]) == (19, 26, 13)
    assert s["coverage"] == {"1000": 1.0, "5000": 1.0}
    # 13 occurrences from the 6 repeated words, then one per word: 90% of 26 needs 11 more
    assert s["words_for_coverage"] == {"90%": 17, "95%": 18, "99%": 19}


def test_stats_count_each_character_of_scripts_without_spaces_as_a_word(tmp_path):
    """A Chinese sentence was one word: "vocabulary 11 words" for a corpus of dozens of distinct
    characters, no guide to tokenizer.vocab_size."""
    write(tmp_path / "zh.tsv", "你叫什么名字？\t我叫小明。\n今天天气怎么样？\t今天天气很好。\nhello there\thi\n")
    s = corpus_stats(tmp_path / "zh.tsv")
    assert s["lengths"]["question"]["words"]["max"] == 7  # 今 天 天 气 怎 么 样
    assert s["vocabulary"] == len(set("你叫什么名字我小明今天气怎么样很好")) + 3  # + hello, there, hi


def test_stats_table_shows_the_figures(tiny):
    table = format_stats(corpus_stats(tiny))
    assert "6 (5 unique; 1 repeated, 1 extra copies)" in table
    assert "4 distinct, 1 with more than one answer" in table
    assert "'Hello': 2 answers" in table
    assert f"{tiny / 'b.tsv'}:2:" in table
    row = next(line for line in table.splitlines() if line.startswith("answer chars"))
    assert row.split()[2:] == ["12", "23", "23", "23"]


def test_stats_of_a_broken_corpus_raises_with_file_and_line(tmp_path):
    with pytest.raises(CorpusError, match=r"x\.yml:3: invalid YAML"):
        corpus_stats(write(tmp_path / "x.yml", "conversations:\n- [a, b\n"))


# --- validate --------------------------------------------------------------------------------
def test_validate_clean_corpus_has_no_problems(tiny):
    (tiny / "b.tsv").unlink()
    assert validate_corpus(tiny) == []


def test_validate_lists_every_problem_with_file_and_line(tmp_path):
    d = tmp_path / "c"
    write(d / "a_bad_yaml.yml", "conversations:\n- - hello\n  - hi\n- [unclosed\n")
    write(d / "b_not_list.yml", "conversations:\n- - hello\n  - hi\n- just a string\n- - a\n  - b\n- x\n")
    write(d / "c_rows.tsv", "q\ta\nno tab\nq2\ta2\nstill no tab\n")
    write(d / "d_latin1.tsv", "q\ta\ncaf\xe9\tok\n".encode("latin-1"))
    write(d / "e_good.jsonl", '{"question": "q", "answer": "a"}\n{"turns": ["only one"]}\n')
    problems = validate_corpus(d)
    assert [(Path(p.file).name, p.line) for p in problems] == [
        ("a_bad_yaml.yml", 5),  # the whole file: one problem, the next files still checked
        ("b_not_list.yml", 4), ("b_not_list.yml", 7),
        ("c_rows.tsv", 2), ("c_rows.tsv", 4),
        ("d_latin1.tsv", 2),
        ("e_good.jsonl", 2),
    ]
    whys = [p.why for p in problems]
    assert whys[0].startswith("invalid YAML")
    assert whys[1] == "conversation 2 is not a list of utterances"
    assert "no tab" in whys[3] and whys[5] == "invalid UTF-8 (byte 0xe9)"
    assert "at least two utterances" in whys[6]


@pytest.mark.parametrize("name, text", [("empty.yml", ""), ("empty.tsv", "\n\n"), ("none.jsonl", "")])
def test_validate_reports_an_empty_corpus(tmp_path, name, text):
    path = write(tmp_path / name, text)
    problems = validate_corpus(path)
    assert problems[-1].file == str(path) and "empty corpus" in problems[-1].why


def test_validate_all_entries_malformed_lists_each_and_the_empty_corpus(tmp_path):
    path = write(tmp_path / "commas.tsv", "hello,hi\nbye,see you\n")
    assert [(p.line, "no tab" in p.why) for p in validate_corpus(path)][:2] == [(1, True), (2, True)]
    assert "empty corpus" in validate_corpus(path)[-1].why


def test_validate_missing_path_is_one_problem(tmp_path):
    [problem] = validate_corpus(tmp_path / "nope")
    assert problem.why == "no such file or directory"


# --- convert ---------------------------------------------------------------------------------
RICH_YAML = """\
categories:
- coding
conversations:
- - Show me a function.
  - |
    def add(a, b):
        return a + b
- - How are you?
  - Très bien, merci 😀
  - Glad to hear it.
  - 'Yes'
- - Is it 1984?
  - '42'
"""


def test_yaml_jsonl_yaml_round_trip_keeps_dialogues_and_category(tmp_path):
    src = write(tmp_path / "rich.yml", RICH_YAML)
    result = convert_corpus(src, tmp_path / "rich.jsonl")
    assert result == {"path": str(tmp_path / "rich.jsonl"), "format": "jsonl", "dialogues": 3,
                      "pairs": 5, "context_lost": 0, "skipped": []}
    rows = [json.loads(line) for line in (tmp_path / "rich.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows[1] == {"turns": ["How are you?", "Très bien, merci 😀", "Glad to hear it.", "Yes"],
                       "category": "coding"}
    assert rows[2] == {"question": "Is it 1984?", "answer": "42", "category": "coding"}
    convert_corpus(tmp_path / "rich.jsonl", tmp_path / "back.yaml")
    for turns in (0, 3):  # multi-turn dialogues stay multi-turn: the context is the same too
        assert examples(tmp_path / "back.yaml", turns) == examples(src, turns)
    assert [d.category for d in load_corpus(tmp_path / "back.yaml").dialogues] == ["coding"] * 3
    text = (tmp_path / "back.yaml").read_text(encoding="utf-8")
    assert "  - |-\n    def add(a, b):\n        return a + b\n" in text  # a readable block
    assert "😀" in text and "- 'Yes'" in text


def test_tsv_yaml_jsonl_tsv_round_trip_is_byte_identical(tmp_path):
    tsv = "Hello\tHi there\nWhat's 2+2?\t4\nCafé?\t¿Qué? — «oui» 😀\n# not a comment\t- not a list\nYes\tNo\n"
    src = write(tmp_path / "pairs.tsv", tsv)
    convert_corpus(src, tmp_path / "pairs.yml")
    convert_corpus(tmp_path / "pairs.yml", tmp_path / "pairs.jsonl")
    convert_corpus(tmp_path / "pairs.jsonl", tmp_path / "again.txt")
    assert (tmp_path / "again.txt").read_text(encoding="utf-8") == tsv
    for path in ("pairs.yml", "pairs.jsonl", "again.txt"):
        assert examples(tmp_path / path) == examples(src)


def test_multi_turn_to_tsv_keeps_every_pair_and_says_the_context_is_lost(tmp_path, capsys):
    src = write(tmp_path / "turns.jsonl", '{"turns": ["one", "two", "three", "four"]}\n{"turns": ["a", "b"]}\n')
    assert convert_corpus(src, tmp_path / "turns.tsv")["context_lost"] == 1
    assert (tmp_path / "turns.tsv").read_text() == "one\ttwo\ntwo\tthree\nthree\tfour\na\tb\n"
    assert examples(tmp_path / "turns.tsv") == examples(src)  # without context turns
    assert examples(tmp_path / "turns.tsv", 2) != examples(src, 2)  # what the warning is about
    code, _, err = run(capsys, "convert", src, tmp_path / "again.tsv")
    assert code == 0 and "1 conversation longer than one exchange lose" in err
    assert convert_corpus(src, tmp_path / "turns.yml")["context_lost"] == 0


def test_directory_to_one_file_and_back(tmp_path):
    write(tmp_path / "src" / "a.yml", RICH_YAML)
    write(tmp_path / "src" / "sub" / "b.tsv", "q1\ta1\nq2\ta2\n")
    convert_corpus(tmp_path / "src", tmp_path / "all.jsonl")
    convert_corpus(tmp_path / "all.jsonl", tmp_path / "all.yml")
    assert examples(tmp_path / "all.yml", 2) == examples(tmp_path / "src", 2)


def test_tsv_refuses_a_line_break_naming_file_and_line(tmp_path):
    src = write(tmp_path / "rich.yml", RICH_YAML)
    with pytest.raises(CorpusError) as caught:
        convert_corpus(src, tmp_path / "out.tsv")
    assert (caught.value.file, caught.value.line) == (str(src), 5)
    assert "line break" in caught.value.why and "TSV cannot hold" in caught.value.why
    assert list(tmp_path.iterdir()) == [src]  # nothing written, no temp file left


def test_tsv_refuses_text_it_would_read_back_as_a_spreadsheets_quoting(tmp_path):
    """Written as is, a text quoted as a spreadsheet quotes (its inner quotes doubled) would come
    back unquoted: convert promises the same examples back, so it refuses; a text that merely
    starts with a quote is written."""
    src = write(tmp_path / "q.jsonl", '{"question": "q1", "answer": "\\"Hi,\\" he said"}\n'
                                       '{"question": "q2", "answer": "\\"Say \\"\\"hi\\"\\"\\""}\n')
    with pytest.raises(CorpusError) as caught:
        convert_corpus(src, tmp_path / "out.tsv")
    assert caught.value.line == 2 and "a spreadsheet's quoting, which TSV cannot hold" in caught.value.why
    fine = write(tmp_path / "fine.jsonl", '{"question": "q1", "answer": "\\"Hi,\\" he said"}\n')
    convert_corpus(fine, tmp_path / "fine.tsv")
    assert examples(tmp_path / "fine.tsv") == examples(fine)


def test_format_flag_and_suffix(tmp_path):
    src = write(tmp_path / "p.tsv", "q\ta\n")
    assert convert_corpus(src, tmp_path / "out", format="jsonl")["format"] == "jsonl"
    assert json.loads((tmp_path / "out").read_text()) == {"question": "q", "answer": "a"}
    with pytest.raises(InputError, match="cannot tell the format"):
        convert_corpus(src, tmp_path / "out.csv")
    with pytest.raises(InputError, match="means jsonl, not yaml"):
        convert_corpus(src, tmp_path / "out.jsonl", format="yaml")
    with pytest.raises(InputError, match="unknown corpus format"):
        convert_corpus(src, tmp_path / "out", format="xml")


def test_convert_never_writes_onto_the_source(tmp_path):
    src = write(tmp_path / "p.tsv", "q\ta\n")
    with pytest.raises(InputError, match="source corpus"):
        convert_corpus(src, src, format="tsv")
    with pytest.raises(InputError, match="source corpus"):
        convert_corpus(tmp_path, tmp_path / "sub" / "all.yml")
    assert src.read_text() == "q\ta\n" and sorted(tmp_path.iterdir()) == [src]


def test_convert_replaces_an_existing_destination_atomically(tmp_path):
    src = write(tmp_path / "p.tsv", "q\ta\n")
    dst = write(tmp_path / "out" / "p.jsonl", "old\n")
    convert_corpus(src, dst)
    assert dst.read_text() == '{"question": "q", "answer": "a"}\n'
    assert [p.name for p in dst.parent.iterdir()] == ["p.jsonl"]


# --- the command line ------------------------------------------------------------------------
def test_cli_stats_table_and_json(capsys, tiny):
    code, out, _ = run(capsys, "stats", tiny)
    assert code == 0 and out.startswith(f"corpus       {tiny}: 2 files, 5 dialogues, 1 malformed entry")
    code, out, _ = run(capsys, "stats", tiny, "--json")
    assert code == 0 and json.loads(out)["pairs"] == 6


def test_cli_validate_exit_codes_and_lines(capsys, tiny):
    code, out, err = run(capsys, "validate", tiny)
    assert code == 1
    assert out == f"{tiny / 'b.tsv'}:2: expected 'question<TAB>answer', found no tab\n"
    assert err.endswith(f"{tiny}: 1 problem\n")
    code, out, _ = run(capsys, "validate", tiny, "--json")
    assert code == 1 and json.loads(out)["problems"] == [
        {"file": str(tiny / "b.tsv"), "line": 2, "problem": "expected 'question<TAB>answer', found no tab"}]
    code, out, err = run(capsys, "validate", tiny / "a.yml")
    assert (code, out) == (0, "") and err.endswith("a.yml: no problems\n")


def test_cli_convert_and_its_errors(capsys, tmp_path):
    src = write(tmp_path / "rich.yml", RICH_YAML)
    code, out, _ = run(capsys, "convert", src, tmp_path / "r.jsonl")
    assert code == 0 and out == f"wrote {tmp_path / 'r.jsonl'} (jsonl): 3 dialogues, 5 pairs\n"
    code, out, err = run(capsys, "convert", src, tmp_path / "r.tsv")
    assert code == 1 and out == ""
    assert err.startswith(f"chatbot: error: {src}:5: utterance holds a line break") and err.count("\n") == 1
    code, _, err = run(capsys, "convert", src, tmp_path / "r.jsonl", "--format", "tsv")
    assert code == 1 and "means jsonl, not tsv" in err
    with pytest.raises(SystemExit) as usage:
        cli.main(["corpus", "convert", str(src)])
    assert usage.value.code == 2


# --- the real English corpus -----------------------------------------------------------------
def test_real_corpus_stats_without_tensorflow():
    code = ("import sys, cli; rc = cli.main(['corpus', 'stats', 'corpora/english']); "
            "assert 'tensorflow' not in sys.modules, 'imported TensorFlow'; sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    pairs = len(load_corpus(ENGLISH).examples(0, deduplicate=False))
    assert f"pairs        {pairs:,} (" in result.stdout
    assert "question chars" in result.stdout and "Traceback" not in result.stderr


def test_real_corpus_validate_lists_the_skipped_entry(capsys):
    skipped = [str(e) for e in load_corpus(ENGLISH).skipped]
    assert any("trivia.yml:35:" in s for s in skipped)  # the known malformed entry
    code, out, _ = run(capsys, "validate", ENGLISH)
    assert code == 1 and out.splitlines() == skipped


def test_convert_names_what_it_left_out(capsys, tmp_path):
    path = write(tmp_path / "trivia.yml", "conversations:\n- - What is the rarest M&M color?\n  - Brown\n"
                 "- In a game of bingo, which number is two little ducks?\n  - 22\n")
    code, out, _ = run(capsys, "convert", path, tmp_path / "trivia.jsonl")
    assert code == 0
    assert out.splitlines() == [f"wrote {tmp_path / 'trivia.jsonl'} (jsonl): 1 dialogue, 1 pair",
                                f"1 malformed entry left out (see: chatbot corpus validate {path})"]


def test_real_corpus_converts_to_jsonl_and_back(capsys, tmp_path):
    code, out, _ = run(capsys, "convert", ENGLISH, tmp_path / "english.jsonl")
    assert code == 0 and "1 malformed entry left out" in out
    code, _, _ = run(capsys, "convert", tmp_path / "english.jsonl", tmp_path / "english.yml")
    assert code == 0
    for turns in (0, 2):
        assert examples(tmp_path / "english.yml", turns) == examples(ENGLISH, turns)
    assert len(load_corpus(tmp_path / "english.yml").examples()) == len(load_corpus(ENGLISH).examples())


def test_stats_count_questions_alike_but_for_case_punctuation_or_contractions_with_different_answers(tmp_path):
    """Retrieval compares questions folded (``match_key``): such a group with two answers shows the
    model one by chance, which exact-text counts do not reveal."""
    path = write(tmp_path / "alike.tsv", "What's your name?\tI am Tiny.\nwhat is your name\tMy name is Tiny.\n"
                                         "Hello\tHi\nhello!\tHi\nBye\tSee you\nbye\tSee you\n")
    s = corpus_stats(path)
    assert (s["questions"], s["conflicting_questions"], s["alike_conflicting_groups"]) == (6, 0, 1)
    assert "1 group alike but for case, punctuation or contractions with different answers" in format_stats(s)
