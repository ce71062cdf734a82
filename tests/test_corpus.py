"""Corpus readers: ChatterBot YAML, TSV, JSONL, directories, errors, examples and splits."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from chatbot.data.corpus import Corpus, Example, load_corpus, make_examples, split_examples

from chatbot.data.text import clean_text
from chatbot.errors import CorpusError

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO / "corpora"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def pairs(corpus: Corpus, context_turns: int = 0, deduplicate: bool = True) -> list[tuple[str, str]]:
    return [(e.question, e.answer) for e in corpus.examples(context_turns, deduplicate)]


def texts(corpus: Corpus) -> list[list[str]]:
    return [[u.text for u in d.utterances] for d in corpus.dialogues]


# --- ChatterBot YAML -------------------------------------------------------------------------
CHATTERBOT_YAML = """\
categories:
- greetings
conversations:
- - Hello
  - Hi there!
- - How are you?
  - I am fine.
  - Glad to hear it.
- - Show me a function.
  - |
    def add(a, b):
        return a + b
- - Is the sky blue?
  - Yes
- - Is it raining?
  - No
- - What is the answer?
  - 42
- - When?
  - '1984'
"""


def test_yaml_consecutive_pairs_become_examples(tmp_path):
    corpus = load_corpus(write(tmp_path / "greetings.yml", CHATTERBOT_YAML))
    assert corpus.skipped == []
    assert corpus.files == [tmp_path / "greetings.yml"]
    assert pairs(corpus)[:3] == [
        ("Hello", "Hi there!"),
        ("How are you?", "I am fine."),
        ("I am fine.", "Glad to hear it."),
    ]
    assert len(corpus.examples()) == 8
    assert all(d.category == "greetings" for d in corpus.dialogues)


def test_yaml_utterance_sources_name_file_and_line(tmp_path):
    file = write(tmp_path / "greetings.yml", CHATTERBOT_YAML)
    corpus = load_corpus(file)
    first = corpus.dialogues[0].utterances
    assert first[0].source == f"{file}:4"
    assert first[1].source == f"{file}:5"
    assert corpus.examples()[1].source == f"{file}:6"


def test_yaml_literal_block_utterance_read_intact(tmp_path):
    corpus = load_corpus(write(tmp_path / "code.yml", CHATTERBOT_YAML))
    answers = dict(pairs(corpus))
    assert answers["Show me a function."] == "def add(a, b):\n    return a + b"


def test_yaml_yes_no_numbers_stay_strings(tmp_path):
    corpus = load_corpus(write(tmp_path / "c.yml", CHATTERBOT_YAML))
    answers = dict(pairs(corpus))
    assert answers["Is the sky blue?"] == "Yes"
    assert answers["Is it raining?"] == "No"
    assert answers["What is the answer?"] == "42"
    assert answers["When?"] == "1984"
    for dialogue in corpus.dialogues:
        for utterance in dialogue.utterances:
            assert type(utterance.text) is str


FOUR_TURNS = """\
conversations:
- - one
  - two
  - three
  - four
"""


def test_context_turns_zero_gives_no_context(tmp_path):
    corpus = load_corpus(write(tmp_path / "c.yml", FOUR_TURNS))
    examples = corpus.examples(context_turns=0)
    assert [(e.context, e.question, e.answer) for e in examples] == [
        ((), "one", "two"),
        ((), "two", "three"),
        ((), "three", "four"),
    ]


def test_context_turns_two_gives_previous_turns_oldest_first(tmp_path):
    corpus = load_corpus(write(tmp_path / "c.yml", FOUR_TURNS))
    examples = corpus.examples(context_turns=2)
    assert [(e.context, e.question, e.answer) for e in examples] == [
        ((), "one", "two"),
        (("one",), "two", "three"),
        (("one", "two"), "three", "four"),
    ]


def test_context_turns_one_keeps_only_the_latest_turn(tmp_path):
    corpus = load_corpus(write(tmp_path / "c.yml", FOUR_TURNS))
    assert [e.context for e in corpus.examples(context_turns=1)] == [(), ("one",), ("two",)]


DUPLICATES = """\
conversations:
- - Hi
  - Hello
- - Hi
  - Hello
- - Hi
  - Hey
- - Hi
  - Hello
"""


def test_deduplicate_drops_exact_duplicate_examples(tmp_path):
    corpus = load_corpus(write(tmp_path / "d.yml", DUPLICATES))
    assert pairs(corpus) == [("Hi", "Hello"), ("Hi", "Hey")]
    assert pairs(corpus, deduplicate=False) == [("Hi", "Hello"), ("Hi", "Hello"), ("Hi", "Hey"),
                                                ("Hi", "Hello")]


def test_deduplicate_keeps_same_pair_with_different_context(tmp_path):
    text = "conversations:\n- - a\n  - Hi\n  - Hello\n- - b\n  - Hi\n  - Hello\n"
    corpus = load_corpus(write(tmp_path / "d.yml", text))
    with_context = corpus.examples(context_turns=1)
    assert [(e.context, e.question, e.answer) for e in with_context if e.question == "Hi"] == [
        (("a",), "Hi", "Hello"),
        (("b",), "Hi", "Hello"),
    ]
    # Without context the two become exact duplicates.
    assert [p for p in pairs(corpus) if p[0] == "Hi"] == [("Hi", "Hello")]


def test_clean_text_normalises_but_keeps_inner_spacing():
    assert clean_text("  e\u0301te\r\n\tx \x00y \n") == "\u00e9te\n x y"
    assert clean_text("a  b\n    c") == "a  b\n    c"


def test_clean_text_keeps_the_format_characters_that_are_part_of_the_text():
    """It dropped every format character: a family emoji came back as four people, Persian
    lost its non-joiner (a misspelling), the flag of Scotland became a black flag."""
    family, persian = "👨\u200d👩\u200d👧\u200d👦 ist eine Familie.", "من می\u200cخواهم"
    scotland = "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"
    assert [clean_text(t) for t in (family, persian, scotland, "\u200fשלום")] == [family, persian, scotland, "\u200fשלום"]
    assert clean_text("\u200bzero\ufeff width") == "zero width"  # the zero-width space and BOM still go
    assert clean_text("\u200d\u200e") == ""  # nothing of its own to say


def test_clean_text_is_idempotent_and_keeps_characters_newer_than_python():
    """A mark split from its letter by a dropped character composes once that goes (cleaning
    twice gave another text than cleaning once, so `corpus convert` did not round-trip); an
    emoji this Python's Unicode tables do not know (U+1FA77, 2022) is kept, not erased."""
    from chatbot.data.text import match_key, sanitize_message

    assert clean_text("i\u200b\u0308") == clean_text(clean_text("i\u200b\u0308")) == "\u00ef"
    assert clean_text("I love you \U0001FA77") == "I love you \U0001FA77"
    assert sanitize_message("\U0001FA77") == "\U0001FA77"  # was "the message is empty"
    assert clean_text("a\ufdd0b\uffff") == "ab"  # noncharacters (the tokenizer's marks) still go
    assert match_key(match_key("\u00df\u0301 x")) == match_key("\u00df\u0301 x") == match_key("ss\u0301 x")


# --- TSV and JSONL ---------------------------------------------------------------------------
def test_tsv_fra_style_extra_columns_ignored(tmp_path):
    file = write(tmp_path / "fra.txt",
                 "Go.\tVa !\tCC-BY 2.0 (France) Attribution: tatoeba.org #2877272 (CM)\n"
                 "Hi.\tSalut !\tCC-BY 2.0 (France) Attribution: tatoeba.org #538123 (CM)\n"
                 "\n"
                 "Run!\tCours !\n")
    corpus = load_corpus(file)
    assert pairs(corpus) == [("Go.", "Va !"), ("Hi.", "Salut !"), ("Run!", "Cours !")]
    assert corpus.dialogues[2].utterances[0].source == f"{file}:4"
    assert corpus.skipped == []


def test_tsv_crlf_and_bom(tmp_path):
    file = tmp_path / "pairs.tsv"
    file.write_bytes("\ufeffquestion one\tanswer one\r\nq2\ta2\r\n".encode("utf-8"))
    assert pairs(load_corpus(file)) == [("question one", "answer one"), ("q2", "a2")]


def test_jsonl_question_answer_and_turns(tmp_path):
    lines = [
        {"question": "What is 2+2?", "answer": "4", "category": "math"},
        {"turns": ["Hello", "Hi", "How are you?"]},
    ]
    file = write(tmp_path / "data.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    corpus = load_corpus(file)
    assert texts(corpus) == [["What is 2+2?", "4"], ["Hello", "Hi", "How are you?"]]
    assert corpus.dialogues[0].category == "math"
    assert pairs(corpus) == [("What is 2+2?", "4"), ("Hello", "Hi"), ("Hi", "How are you?")]
    assert corpus.dialogues[1].utterances[0].source == f"{file}:2"


def test_jsonl_null_category_is_none(tmp_path):
    file = write(tmp_path / "data.jsonl", '{"question": "hi", "answer": "hello", "category": null}\n')
    assert load_corpus(file).dialogues[0].category == ""  # it was the category "None"


def test_directory_recursive_mixed_formats_ignores_non_corpus_files(tmp_path):
    root = tmp_path / "corpus"
    write(root / "a.yml", "conversations:\n- - yaml q\n  - yaml a\n")
    write(root / "sub" / "deeper" / "b.tsv", "tsv q\ttsv a\n")
    write(root / "sub" / "c.jsonl", '{"question": "jsonl q", "answer": "jsonl a"}\n')
    write(root / "sub" / "d.YAML", "conversations:\n- - upper q\n  - upper a\n")
    write(root / "LICENSE", "BSD 3-Clause License\n\nCopyright (c) 2016\nAll rights reserved.\n")
    write(root / "README.md", "# Corpus\nno tabs here\n")
    write(root / "notes.csv", "q,a\n")
    corpus = load_corpus(root)
    assert sorted(p.relative_to(root).as_posix() for p in corpus.files) == [
        "a.yml", "sub/c.jsonl", "sub/d.YAML", "sub/deeper/b.tsv"]
    assert sorted(pairs(corpus)) == sorted([
        ("yaml q", "yaml a"), ("tsv q", "tsv a"), ("jsonl q", "jsonl a"), ("upper q", "upper a")])
    assert corpus.skipped == []


def test_a_directory_corpus_leaves_out_bundles_hidden_folders_and_says_which_data_it_cannot_read(
        tmp_path, caplog):
    """A model trained into the corpus folder holds train.jsonl (a copy of the corpus: every
    pair would count twice) and JSON files that are no corpus; .NAME.training/ is a training's
    state. A spreadsheet's .csv was passed over without a word."""
    import logging

    root = tmp_path / "project"
    write(root / "faq.yml", "conversations:\n- - q\n  - a\n")
    write(root / "model" / "bundle.json", "{}")
    write(root / "model" / "train.jsonl", '{"question": "q", "answer": "a"}\n')
    write(root / ".model.training" / "validation.jsonl", '{"question": "q2", "answer": "a2"}\n')
    write(root / "more.csv", "q3,a3\n")
    with caplog.at_level(logging.WARNING, logger="chatbot.data.corpus"):
        corpus = load_corpus(root, strict=True)
    assert [p.relative_to(root).as_posix() for p in corpus.files] == ["faq.yml"]
    assert "1 file in a format no corpus reader knows left out (first: " in caplog.text
    assert "more.csv" in caplog.text


def test_directory_skips_license_and_readme_with_corpus_suffix(tmp_path):
    root = tmp_path / "corpus"
    write(root / "a.yml", "conversations:\n- - q\n  - a\n")
    write(root / "LICENSE.txt", "BSD 3-Clause License\n\nAll rights reserved.\n")
    write(root / "README.txt", "Some corpus.\n")
    corpus = load_corpus(root, strict=True)
    assert pairs(corpus) == [("q", "a")]
    assert [p.name for p in corpus.files] == ["a.yml"]


# --- bad input -------------------------------------------------------------------------------
def test_an_unclosed_quote_names_the_line_it_opened_on(tmp_path):
    file = write(tmp_path / "bad.yml", 'conversations:\n- - Hello\n  - Hi\n- - "unterminated\n  - x\n')
    with pytest.raises(CorpusError) as info:
        load_corpus(file)
    assert info.value.line == 6
    assert "invalid YAML: found unexpected end of stream (while scanning a quoted scalar on line 4)" in str(info.value)


def test_invalid_yaml_reports_line(tmp_path):
    file = write(tmp_path / "bad.yml",
                 "conversations:\n- - Hello\n  - Hi: there: friend\n- - a\n  - b\n")
    with pytest.raises(CorpusError) as info:
        load_corpus(file)
    assert info.value.file == str(file)
    assert info.value.line == 3
    assert "invalid YAML" in str(info.value)
    assert str(info.value).startswith(f"{file}:3: ")


def test_invalid_yaml_tab_indentation_reports_line(tmp_path):
    file = write(tmp_path / "bad.yml", "conversations:\n- - a\n  - b\n\t- c\n")
    with pytest.raises(CorpusError) as info:
        load_corpus(file)
    assert (info.value.file, info.value.line) == (str(file), 4)
    assert "invalid YAML" in info.value.why


NOT_A_LIST = """\
conversations:
- - Hello
  - Hi
- just a sentence, not a list
- - Bye
  - See you
"""


def test_conversation_not_a_list_skipped_in_lenient_mode(tmp_path, caplog):
    file = write(tmp_path / "c.yml", NOT_A_LIST)
    with caplog.at_level(logging.WARNING, logger="chatbot.data.corpus"):
        corpus = load_corpus(file)
    assert pairs(corpus) == [("Hello", "Hi"), ("Bye", "See you")]
    assert len(corpus.skipped) == 1
    err = corpus.skipped[0]
    assert isinstance(err, CorpusError)
    assert (err.file, err.line) == (str(file), 4)
    assert "conversation 2 is not a list" in err.why
    assert any("skipped" in r.getMessage() and "conversation 2" in r.getMessage()
               for r in caplog.records)


def test_conversation_not_a_list_raises_in_strict_mode(tmp_path):
    file = write(tmp_path / "c.yml", NOT_A_LIST)
    with pytest.raises(CorpusError) as info:
        load_corpus(file, strict=True)
    assert (info.value.file, info.value.line) == (str(file), 4)
    assert "not a list" in info.value.why


def test_utterance_that_is_a_mapping_is_reported(tmp_path):
    file = write(tmp_path / "c.yml",
                 "conversations:\n- - Hello\n  - Hi\n- - Q\n  - key: value\n")
    corpus = load_corpus(file)
    assert pairs(corpus) == [("Hello", "Hi")]
    [err] = corpus.skipped
    assert (err.file, err.line) == (str(file), 5)
    assert "mapping" in err.why


def test_yaml_without_conversations_key(tmp_path):
    file = write(tmp_path / "c.yml", "categories:\n- x\n")
    with pytest.raises(CorpusError) as info:
        load_corpus(file)
    assert info.value.file == str(file)
    assert "conversations" in info.value.why


def test_yaml_conversations_not_a_list(tmp_path):
    file = write(tmp_path / "c.yml", "categories:\n- x\nconversations: hello\n")
    with pytest.raises(CorpusError) as info:
        load_corpus(file)
    assert (info.value.file, info.value.line) == (str(file), 3)
    assert "'conversations' must be a list" in info.value.why


def test_yaml_with_a_key_twice_is_refused_not_cut_to_its_last_list(tmp_path):
    """Two ChatterBot files concatenated: YAML itself keeps only the last 'conversations' list."""
    one = "categories:\n- a\nconversations:\n- - q1\n  - a1\n"
    file = write(tmp_path / "c.yml", one + one.replace("1", "2"))
    with pytest.raises(CorpusError) as info:
        load_corpus(file)
    assert (info.value.file, info.value.line) == (str(file), 6)
    assert "'categories' appears twice (first on line 1)" in info.value.why


def test_single_utterance_conversation_skipped(tmp_path):
    file = write(tmp_path / "c.yml", "conversations:\n- - a\n  - b\n- - lonely\n")
    corpus = load_corpus(file)
    assert pairs(corpus) == [("a", "b")]
    [err] = corpus.skipped
    assert (err.file, err.line) == (str(file), 4)
    assert "at least two utterances" in err.why


@pytest.mark.parametrize("name, text, line", [
    ("c.yml", "conversations:\n- - a\n  - b\n- []\n", 4),
    ("c.jsonl", '{"question": "a", "answer": "b"}\n{"turns": []}\n', 2),
])
def test_empty_conversation_reports_its_line(tmp_path, name, text, line):
    file = write(tmp_path / name, text)
    corpus = load_corpus(file)
    assert pairs(corpus) == [("a", "b")]
    [err] = corpus.skipped
    assert "at least two utterances" in err.why
    assert (err.file, err.line) == (str(file), line)


def test_tsv_row_without_tab_skipped_in_lenient_mode(tmp_path):
    file = write(tmp_path / "pairs.tsv", "q1\ta1\nno tab on this row\nq3\ta3\n")
    corpus = load_corpus(file)
    assert pairs(corpus) == [("q1", "a1"), ("q3", "a3")]
    [err] = corpus.skipped
    assert (err.file, err.line) == (str(file), 2)
    assert "no tab" in err.why


def test_tsv_header_row_is_left_out_and_named(tmp_path):
    """A spreadsheet's column names are not a pair; only the first non-blank line can be a header."""
    file = write(tmp_path / "pairs.tsv", "\r\nQuestion\tAnswer\nq1\ta1\nquestion\tanswer\n")
    corpus = load_corpus(file)
    assert pairs(corpus) == [("q1", "a1"), ("question", "answer")]
    [err] = corpus.skipped
    assert (err.line, err.why) == (2, "a header row ('Question<TAB>Answer'), not a pair")


def test_a_spreadsheets_tab_separated_export_reads_as_the_spreadsheet_showed_it(tmp_path):
    """Excel's "Text (Tab delimited)" quotes a cell that holds a quote or a line break: the
    doubled quotes were kept, and a cell over several lines was cut at its first line (the
    rest were "no tab" errors). A cell that merely starts with a quote stays as written."""
    file = write(tmp_path / "excel.txt",
                 'Question\tAnswer\r\n'
                 'How do I cancel?\t"Go to Billing, click ""Cancel plan"", and confirm."\r\n'
                 'How do I install the CLI?\t"Run:\r\npip install example-cli\r\nThen restart your shell."\r\n'
                 '"Hi," he said\tHello\r\n'
                 'Quote me\t"To be or not to be"\r\n')
    corpus = load_corpus(file)
    assert pairs(corpus) == [
        ("How do I cancel?", 'Go to Billing, click "Cancel plan", and confirm.'),
        ("How do I install the CLI?", "Run:\npip install example-cli\nThen restart your shell."),
        ('"Hi," he said', "Hello"),
        ("Quote me", '"To be or not to be"')]
    assert [e.why for e in corpus.skipped] == ["a header row ('Question<TAB>Answer'), not a pair"]


def test_a_quote_no_line_closes_is_named_and_the_lines_after_it_still_read(tmp_path):
    file = write(tmp_path / "pairs.tsv", 'q1\ta1\nq2\t"never closed\nq3\ta3\n')
    corpus = load_corpus(file)
    assert pairs(corpus) == [("q1", "a1"), ("q3", "a3")]
    [err] = corpus.skipped
    assert err.line == 2 and "opens a quote that no line closes" in err.why


def test_tsv_row_without_tab_raises_in_strict_mode(tmp_path):
    file = write(tmp_path / "pairs.tsv", "q1\ta1\n\nq3\ta3\nno tab on this row\n")
    with pytest.raises(CorpusError) as info:
        load_corpus(file, strict=True)
    assert (info.value.file, info.value.line) == (str(file), 4)
    assert "no tab" in info.value.why
    assert str(info.value) == f"{file}:4: expected 'question<TAB>answer', found no tab"


def test_tsv_empty_answer_reported(tmp_path):
    file = write(tmp_path / "pairs.tsv", "q1\ta1\nq2\t   \n")
    corpus = load_corpus(file)
    [err] = corpus.skipped
    assert (err.file, err.line) == (str(file), 2)
    assert "empty utterance" in err.why


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_a_utf16_corpus_is_refused_as_such(tmp_path, encoding):
    """Excel's "Unicode text" is UTF-16: without a BOM its NULs were dropped and it was read wrong."""
    file = tmp_path / "pairs.tsv"
    file.write_bytes("Hi\tHello\nHow are you?\tFine\n".encode(encoding))
    with pytest.raises(CorpusError, match="the file is UTF-16, not UTF-8: save it as UTF-8") as info:
        load_corpus(file, strict=True)
    assert info.value.line == 1


@pytest.mark.parametrize("name, good", [
    ("pairs.tsv", b"q1\ta1\nq2\ta2\n"),
    ("c.yml", b"conversations:\n- - q1\n  - a1\n"),
    ("c.jsonl", b'{"question": "q1", "answer": "a1"}\n{"question": "q2", "answer": "a2"}\n'),
])
def test_invalid_utf8_reports_line(tmp_path, name, good):
    file = tmp_path / name
    lines = good.splitlines(keepends=True)
    bad_line = len(lines)  # the last line holds the bad byte
    lines[-1] = lines[-1].replace(b"1", b"\xff", 1).replace(b"2", b"\xff", 1)
    file.write_bytes(b"".join(lines))
    for strict in (False, True):
        with pytest.raises(CorpusError) as info:
            load_corpus(file, strict=strict)
        assert (info.value.file, info.value.line) == (str(file), bad_line)
        assert "invalid UTF-8" in info.value.why
        assert "0xff" in info.value.why


def test_empty_file_is_an_empty_corpus(tmp_path):
    for name in ("empty.tsv", "empty.jsonl"):
        file = write(tmp_path / name, "")
        with pytest.raises(CorpusError) as info:
            load_corpus(file)
        assert info.value.file == str(file)
        assert info.value.line is None
        assert "empty corpus" in info.value.why


def test_empty_yaml_file_raises(tmp_path):
    file = write(tmp_path / "empty.yml", "")
    with pytest.raises(CorpusError) as info:
        load_corpus(file)
    assert info.value.file == str(file)
    assert "conversations" in info.value.why


def test_yaml_with_no_conversations_is_an_empty_corpus(tmp_path):
    file = write(tmp_path / "c.yml", "conversations: []\n")
    with pytest.raises(CorpusError) as info:
        load_corpus(file)
    assert "empty corpus" in info.value.why


def test_all_entries_malformed_is_an_empty_corpus(tmp_path):
    file = write(tmp_path / "pairs.tsv", "no tab\nstill none\n")
    with pytest.raises(CorpusError) as info:
        load_corpus(file)
    assert (info.value.file, info.value.line) == (str(file), None)
    assert "empty corpus" in info.value.why


def test_empty_directory(tmp_path):
    root = tmp_path / "nothing"
    write(root / "LICENSE", "text\n")
    with pytest.raises(CorpusError) as info:
        load_corpus(root)
    assert info.value.file == str(root)
    assert info.value.line is None
    assert "no corpus files" in info.value.why


def test_missing_path(tmp_path):
    missing = tmp_path / "does" / "not" / "exist.yml"
    with pytest.raises(CorpusError) as info:
        load_corpus(missing)
    assert (info.value.file, info.value.line) == (str(missing), None)
    assert "no such file or directory" in info.value.why


def test_unknown_extension(tmp_path):
    file = write(tmp_path / "pairs.csv", "q,a\n")
    with pytest.raises(CorpusError) as info:
        load_corpus(file)
    assert (info.value.file, info.value.line) == (str(file), None)
    assert "unknown corpus format '.csv'" in info.value.why


def test_bad_json_line(tmp_path):
    file = write(tmp_path / "c.jsonl",
                 '{"question": "q1", "answer": "a1"}\n'
                 '{"question": "q2", "answer": }\n'
                 '{"question": "q3", "answer": "a3"}\n')
    corpus = load_corpus(file)
    assert pairs(corpus) == [("q1", "a1"), ("q3", "a3")]
    [err] = corpus.skipped
    assert (err.file, err.line) == (str(file), 2)
    assert "invalid JSON" in err.why
    with pytest.raises(CorpusError) as info:
        load_corpus(file, strict=True)
    assert (info.value.file, info.value.line) == (str(file), 2)


@pytest.mark.parametrize("obj, why", [
    ({"turns": ["Hello", 42]}, "'turns' must be a list of strings"),
    ({"turns": "Hello"}, "'turns' must be a list of strings"),
    ({"turns": [["nested"], "x"]}, "'turns' must be a list of strings"),
    ({"question": "q", "answer": 7}, "'question' and 'answer' must be strings"),
    ({"prompt": "q", "reply": "a"}, "expected keys 'question' and 'answer', or 'turns'"),
    (["q", "a"], "expected a JSON object"),
])
def test_jsonl_bad_entries(tmp_path, obj, why):
    file = write(tmp_path / "c.jsonl",
                 '{"question": "q1", "answer": "a1"}\n' + json.dumps(obj) + "\n")
    corpus = load_corpus(file)
    assert pairs(corpus) == [("q1", "a1")]
    [err] = corpus.skipped
    assert (err.file, err.line, err.why) == (str(file), 2, why)
    with pytest.raises(CorpusError) as info:
        load_corpus(file, strict=True)
    assert (info.value.file, info.value.line, info.value.why) == (str(file), 2, why)


def test_bad_file_in_directory_names_that_file(tmp_path):
    root = tmp_path / "corpus"
    write(root / "good.yml", "conversations:\n- - q\n  - a\n")
    bad = write(root / "sub" / "bad.tsv", "q\ta\noops\n")
    with pytest.raises(CorpusError) as info:
        load_corpus(root, strict=True)
    assert (info.value.file, info.value.line) == (str(bad), 2)


# --- examples, splits, hashes ----------------------------------------------------------------
def _examples(n: int) -> list[Example]:
    return [Example((), f"question {i}", f"answer {i}") for i in range(n)]


def test_split_examples_is_seeded_reproducible_and_disjoint():
    examples = _examples(100)
    train, val = split_examples(examples, 0.2, seed=7)
    train2, val2 = split_examples(examples, 0.2, seed=7)
    assert (train, val) == (train2, val2)
    assert len(val) == 20 and len(train) == 80
    assert not set(train) & set(val)
    assert set(train) | set(val) == set(examples)
    # Order within each part follows the input order.
    assert train == [e for e in examples if e in set(train)]
    other_train, other_val = split_examples(examples, 0.2, seed=8)
    assert set(other_val) != set(val)


def test_split_examples_keeps_at_least_one_training_example():
    examples = _examples(3)
    train, val = split_examples(examples, 0.99, seed=1)
    assert len(train) == 1 and len(val) == 2
    train, val = split_examples(examples[:1], 0.5, seed=1)
    assert train == examples[:1] and val == []
    train, val = split_examples(examples, 0.0, seed=1)
    assert train == examples and val == []


def test_sha256_changes_when_a_file_changes(tmp_path):
    root = tmp_path / "corpus"
    write(root / "a.yml", "conversations:\n- - q\n  - a\n")
    b = write(root / "b.tsv", "q1\ta1\n")
    first = load_corpus(root).sha256
    assert len(first) == 64
    assert load_corpus(root).sha256 == first
    write(b, "q1\ta1 changed\n")
    changed = load_corpus(root).sha256
    assert changed != first
    write(b, "q1\ta1\n")
    assert load_corpus(root).sha256 == first
    single = load_corpus(b).sha256
    write(b, "q1\ta2\n")
    assert load_corpus(b).sha256 != single


def test_sha256_changes_when_a_file_is_renamed(tmp_path):
    root = tmp_path / "corpus"
    f = write(root / "a.tsv", "q1\ta1\n")
    first = load_corpus(root).sha256
    f.rename(root / "b.tsv")
    assert load_corpus(root).sha256 != first


def test_a_file_name_in_no_utf8_is_read_and_hashed(tmp_path):
    """A name from an old zip (Latin-1 bytes) arrives as surrogate escapes: it crashed the
    corpus hash with a raw UnicodeEncodeError in train, stats and convert."""
    root = tmp_path / "corpus"
    root.mkdir()
    with open(bytes(root) + b"/caf\xe9.tsv", "wb") as file:
        file.write(b"hi\thello\n")
    corpus = load_corpus(root)
    assert [(e.question, e.answer) for e in corpus.examples()] == [("hi", "hello")]
    assert len(corpus.sha256) == 64


def test_make_examples_directly_from_dialogues(tmp_path):
    corpus = load_corpus(write(tmp_path / "c.yml", FOUR_TURNS))
    assert make_examples(corpus.dialogues, 5) == corpus.examples(5)
    assert make_examples(corpus.dialogues, 5)[-1].context == ("one", "two")


# --- bundled corpora -------------------------------------------------------------------------
def test_bundled_english_corpus_loads():
    corpus = load_corpus(CORPORA / "english")
    examples = corpus.examples()
    assert len(examples) > 1000
    assert len(corpus.files) == 22 and "basics.yml" in {f.name for f in corpus.files}  # ChatterBot's 21 and ours
    assert [(Path(e.file).relative_to(REPO).as_posix(), e.line) for e in corpus.skipped] == [
        ("corpora/english/trivia.yml", 35)]
    assert all(e.question and e.answer for e in examples)
    with pytest.raises(CorpusError) as info:
        load_corpus(CORPORA / "english", strict=True)
    assert info.value.file.endswith("trivia.yml") and info.value.line == 35


def test_bundled_spanish_corpus_loads():
    corpus = load_corpus(CORPORA / "spanish")
    assert corpus.skipped == []
    assert len(corpus.files) == 9
    assert len(corpus.examples()) > 100
