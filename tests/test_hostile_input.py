"""Hostile input (issue 8, "Bad input"): corpus files, messages and model bundles built to
break the library. Each must give a reply or a clear typed error (one line, naming the file and
line where there is one), with bounded work and memory, and loading never runs code.

The nasty corpus files live in ``tests/data/nasty/`` (small, committed); the big ones (10 MB
lines, 10,000-deep nesting, an alias fan-out that expands to millions of utterances) are built
in ``tmp_path`` by the tests. Corpus loads of those run in a subprocess with an address-space
limit, so a memory blow-up fails the test instead of the machine.

No test here asserts a wall-clock time (speed is for benchmarks: ``bench/hostile_input.py``
times these same inputs). The bound is on work done: a load cleans no more characters than
the file holds (so nothing is expanded: billion laughs, alias fan-outs), and its peak memory
stays under ``PEAK_MB``. A generous subprocess timeout only keeps a hang from stalling CI.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import subprocess
import sys
import textwrap
import unicodedata
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st

import chatbot.data.corpus as corpus_module
from chatbot.data.corpus import load_corpus
from chatbot.errors import BundleError, ChatbotError, CorpusError, InputError

ROOT = Path(__file__).resolve().parent.parent
NASTY = Path(__file__).parent / "data" / "nasty"
MEMORY_LIMIT = 3 * 2**30  # address space of a corpus-loading subprocess
PEAK_MB = 1024  # what a load may use at most (resident), huge files included
MB10 = 10 * 2**20
HANG_GUARD = 600  # seconds: a safety net against a hang, far above any healthy load; not a timing check

# Any code point, lone surrogates included (categories=() blacklists nothing), with the
# hostile kinds (surrogates, combining marks, RTL, emoji, controls, specials) made common.
ANY_CHAR = st.characters(blacklist_categories=())
HOSTILE_CHAR = st.sampled_from(["\ud800", "\udfff", "\u0301", "\u202e", "\u200f", "\u05d0", "\u0627",
                                "\U0001F600", "\u200d", "\x00", "\x1b", "\x7f", "\x85", "\r", "\n", "\t",
                                " ", "\u3000", "\ufdd0", "\ufeff", "\U0010FFFF"])
ANY_TEXT = st.text(alphabet=st.one_of(ANY_CHAR, HOSTILE_CHAR), max_size=300)
HOSTILE = settings(max_examples=150, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def note(outcome: str) -> None:
    """Count an outcome in hypothesis's statistics (``--hypothesis-show-statistics``)."""
    if currently_in_test_context():
        event(outcome)


def has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)


def without_controls(text: str) -> str:
    """The documented sanitising of a stored user message (README, ``sanitize_message``):
    control characters (category Cc) removed except newline and tab; nothing else changed."""
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc")


def has_content(text: str) -> bool:
    """What a message needs to be answered: a character that is neither white space, a control
    or format character (such as U+200B), a surrogate nor a noncharacter, which cleaning drops
    before the model reads it. Unassigned code points count: they are characters newer than
    Python's Unicode tables (an emoji of 2022 was "empty")."""
    def noncharacter(code):
        return 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE

    return any(not ch.isspace() and unicodedata.category(ch) not in ("Cc", "Cf", "Cs") and not noncharacter(ord(ch))
               for ch in text)


def assert_clear(exc: BaseException, file: Path | None = None) -> None:
    """A typed error whose message is one line (and names the file, when there is one)."""
    assert isinstance(exc, ChatbotError), f"untyped {type(exc).__name__}: {exc}"
    message = str(exc)
    assert message and "\n" not in message and "Traceback" not in message, message
    if file is not None:
        assert str(file) in message, message


# --- corpus loading in a bounded subprocess ------------------------------------------------
_LOADER = textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    import chatbot.data.corpus as corpus_module
    from chatbot.data.corpus import load_corpus
    from chatbot.errors import CorpusError
    # The work done: every utterance goes through clean_text once; count the calls and characters.
    cleaned = {{"calls": 0, "chars": 0}}
    real_clean = corpus_module.clean_text
    def counting_clean(text):
        cleaned["calls"] += 1
        cleaned["chars"] += len(text)
        return real_clean(text)
    corpus_module.clean_text = counting_clean
    for spec in sys.argv[1:]:
        mode, path = spec.split(":", 1)
        cleaned.update(calls=0, chars=0)
        try:
            corpus = load_corpus(path, strict=mode == "strict")
            out = {{"dialogues": len(corpus.dialogues), "skipped": [str(e) for e in corpus.skipped]}}
        except CorpusError as exc:
            out = {{"error": "CorpusError", "message": str(exc), "file": exc.file, "line": exc.line}}
        except BaseException as exc:
            out = {{"error": type(exc).__name__, "message": str(exc)[:300]}}
        out["mode"] = mode
        out["cleaned_calls"], out["cleaned_chars"] = cleaned["calls"], cleaned["chars"]
        out["utterances"] = sum(len(d.utterances) for d in corpus.dialogues) if "dialogues" in out else 0
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and
        # exec, so under a pytest that holds a model it would report the parent's size.
        hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
        out["peak_mb"] = int(hwm.split()[1]) // 1024
        print(json.dumps(out), flush=True)
""").format(limit=MEMORY_LIMIT)


def corpus_chars(path: Path) -> int:
    """An upper bound on the characters a corpus path holds: its files' size in bytes."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def load_bounded(path: Path, modes=("lenient", "strict")) -> tuple[dict, str]:
    """Load ``path`` in each mode in one subprocess (memory-limited): the result of each mode
    by name, and what the loads logged (skipped entries are logged as warnings). Every load
    must stay under ``PEAK_MB`` and clean at most as many characters as the file holds."""
    args = [f"{mode}:{path}" for mode in modes]
    try:
        done = subprocess.run([sys.executable, "-c", _LOADER, *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=HANG_GUARD)
    except subprocess.TimeoutExpired as exc:
        finished = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        pytest.fail(f"loading {path.name} hung (no end after {HANG_GUARD} s); finished: {finished!r}")
    results = {r["mode"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert set(results) == set(modes), f"the loader died (rc {done.returncode}): {done.stderr[-2000:]}"
    size = corpus_chars(path)
    for mode, result in results.items():
        assert result.get("error", "CorpusError") == "CorpusError", f"{path.name} ({mode}): {result}"
        assert result["peak_mb"] < PEAK_MB, f"{path.name} ({mode}) used {result['peak_mb']} MB"
        # Work done: nothing is expanded (each character of the file is cleaned once at most),
        # and the count is live (every utterance loaded was counted).
        assert result["cleaned_chars"] <= size, f"{path.name} ({mode}) cleaned {result['cleaned_chars']:,} " \
                                                f"characters from {size:,} bytes: {result}"
        assert result["cleaned_calls"] >= result["utterances"], result
        if "error" in result:
            assert "\n" not in result["message"] and str(path) in result["message"], result
    return results, done.stderr


# name -> (lenient: number of dialogues or None for an error, strict error's line, or None when
# the whole-file error has no line). Every bad entry a lenient load skips is logged and counted.
NASTY_CASES = {
    "random_bytes.jsonl": (None, 1),
    "invalid_utf8.yml": (None, 3),
    "invalid_utf8.tsv": (None, 2),
    "overlong_utf8.jsonl": (None, 2),
    "billion_laughs.yml": (1, 9),
    "alias_fanout.yml": (2, 1),
    "alias_scalar.yml": (2, 5),
    "recursive_alias.yml": (1, 1),
    "tabs.yml": (None, 2),
    "tabs.tsv": (1, 3),
    "nul.tsv": (1, 2),
    "nul.yml": (None, 3),
    "nul.jsonl": (1, 2),
    "empty.yml": (None, None),
    "empty.tsv": (None, None),
    "empty.jsonl": (None, None),
    "whitespace_only.tsv": (None, None),
    "bom_only.yml": (None, None),
    "not_a_mapping.yml": (None, 1),
    "wrong_types.jsonl": (1, 2),
    "python_tag.yml": (1, 2),
}


def test_every_nasty_file_has_a_case():
    on_disk = {p.name for p in NASTY.iterdir() if p.is_file()}
    assert on_disk == set(NASTY_CASES)


@pytest.mark.parametrize("name", sorted(NASTY_CASES))
def test_nasty_corpus_file(name):
    lenient_dialogues, strict_line = NASTY_CASES[name]
    path = NASTY / name
    results, logged = load_bounded(path)
    lenient, strict = results["lenient"], results["strict"]
    assert "error" in strict and strict["line"] == strict_line, strict
    if lenient_dialogues is None:
        assert "error" in lenient, lenient
    else:
        assert lenient.get("dialogues") == lenient_dialogues, lenient
        # strict stops at the first entry lenient skipped, and each skip was logged.
        assert lenient["skipped"] and lenient["skipped"][0] == strict["message"]
        for skipped in lenient["skipped"]:
            assert f"skipped {skipped}" in logged


def test_yaml_tags_never_construct_objects(tmp_path):
    """``!!python/...`` tags are never constructed (the reader composes nodes only)."""
    marker = tmp_path / "pwned"
    path = tmp_path / "tag.yml"
    path.write_text("conversations:\n"
                    f"- !!python/object/apply:os.system [\"touch {marker}\"]\n"
                    f"- [!!python/object/apply:os.system [\"touch {marker}\"], Hello]\n"
                    "- [Hi, Hello]\n", encoding="utf-8")
    results, _ = load_bounded(path)
    assert results["lenient"]["dialogues"] == 1
    assert not marker.exists()


def test_mixed_directory_keeps_good_files_and_skips_bad_entries():
    results, logged = load_bounded(NASTY / "mixed")
    lenient, strict = results["lenient"], results["strict"]
    assert lenient["dialogues"] == 4  # good.tsv (2), good.yml (1), malformed.jsonl (1); README/.md ignored
    assert [re.search(r"malformed\.jsonl:(\d+): ", s)[1] for s in lenient["skipped"]] == ["2", "3"]
    assert all("malformed.jsonl" in s and f"skipped {s}" in logged for s in lenient["skipped"])
    assert strict["error"] and strict["file"].endswith("malformed.jsonl") and strict["line"] == 2


@pytest.mark.parametrize("bad", ["invalid_utf8.yml", "random_bytes.jsonl", "tabs.yml"])
def test_directory_with_an_unreadable_file_names_it(tmp_path, bad):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    for good in ("good.tsv", "good.yml"):
        shutil.copyfile(NASTY / "mixed" / good, corpus / good)
    shutil.copyfile(NASTY / bad, corpus / "sub" / bad)
    results, _ = load_bounded(corpus)
    for result in results.values():  # a whole-file problem is an error in both modes
        assert result["file"] == str(corpus / "sub" / bad), result
        assert result["message"].startswith(f"{corpus / 'sub' / bad}:"), result


# --- big hostile files, built here --------------------------------------------------------
def _deep(kind: str, depth: int = 10_000) -> str:
    if kind == "yaml_flow":
        return "conversations:\n- " + "[" * depth + "]" * depth + "\n"
    if kind == "yaml_block":
        return "conversations:\n" + "".join("  " * i + "-\n" for i in range(depth // 5))
    if kind == "yaml_mapping":
        return "conversations:\n- " + "{a: " * depth + "b" + "}" * depth + "\n"
    if kind == "json_list":
        return '{"question": "Hi", "answer": "Hello"}\n' + "[" * depth + "]" * depth + "\n"
    return '{"question": "Hi", "answer": "Hello"}\n{"turns": ' + "[" * depth + "]" * depth + "}\n"


@pytest.mark.parametrize("kind,suffix", [("yaml_flow", ".yml"), ("yaml_block", ".yml"),
                                         ("yaml_mapping", ".yml"), ("json_list", ".jsonl"),
                                         ("json_turns", ".jsonl")])
def test_deeply_nested_structures(tmp_path, kind, suffix):
    path = tmp_path / f"deep{suffix}"
    path.write_text(_deep(kind), encoding="utf-8")
    results, _ = load_bounded(path)
    if suffix == ".yml":  # the whole file cannot be parsed
        for result in results.values():
            assert result["error"] and "nested too deeply" in result["message"], result
    else:  # one bad line: skipped, or named by line
        assert results["lenient"]["dialogues"] == 1
        assert results["strict"]["line"] == 2 and "nested too deeply" in results["strict"]["message"]


def test_alias_fan_out_is_not_expanded(tmp_path):
    """3,000 aliases of a 3,000-item list: 21 KB that used to expand to 9 million utterances
    (55 s, 2.2 GB). Every repeat is now refused (and skipped), so it loads at once."""
    n = 3000
    path = tmp_path / "fanout.yml"
    path.write_text("a: &a [" + ", ".join(["lol"] * n) + "]\nconversations: [" + ", ".join(["*a"] * n) + "]\n",
                    encoding="utf-8")
    results, _ = load_bounded(path)
    assert results["lenient"]["dialogues"] == 1 and len(results["lenient"]["skipped"]) == n - 1
    assert results["strict"]["line"] == 1 and "alias" in results["strict"]["message"]
    # 3,000 utterances cleaned (the one list, once), not 9 million.
    assert results["lenient"]["cleaned_calls"] == n, results


def test_scalar_alias_fan_out_is_not_expanded(tmp_path):
    """A 1 MB scalar aliased 5,000 times would clean and keep 5 GB of text."""
    path = tmp_path / "fanout.yml"
    path.write_text("big: &s " + "x" * 2**20 + "\nconversations:\n- [Hi, Hello]\n"
                    + "".join(f"- [q{i}, *s]\n" for i in range(5000)), encoding="utf-8")
    results, _ = load_bounded(path)
    assert results["lenient"]["dialogues"] == 2 and len(results["lenient"]["skipped"]) == 4999
    assert results["lenient"]["cleaned_calls"] == 4  # [Hi, Hello] and [q0, *s]: the megabyte once


@pytest.mark.parametrize("suffix", [".tsv", ".jsonl", ".yml"])
def test_ten_megabyte_line(tmp_path, suffix):
    big = "x" * MB10
    path = tmp_path / f"huge{suffix}"
    text = {".tsv": f"{big}\ty\nHi\tHello\n{big}\n",
            ".jsonl": json.dumps({"question": big, "answer": "y"}) + '\n{"question": "Hi", "answer": "Hello"}\n'
                      + big + "\n",
            ".yml": f"conversations:\n- - {big}\n  - y\n- [Hi, Hello]\n"}[suffix]
    path.write_text(text, encoding="utf-8")
    results, _ = load_bounded(path, modes=("lenient",))
    result = results["lenient"]
    assert result["dialogues"] == 2, result
    if suffix != ".yml":  # the third line is 10 MB of junk: skipped, named by line
        assert [re.search(rf"huge\{suffix}:(\d+): ", s)[1] for s in result["skipped"]] == ["3"]


def test_ten_megabytes_of_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "huge.tsv"
    path.write_bytes(b"Hi\tHello\n" * 3 + b"x" * MB10 + b"\xff\n")
    results, _ = load_bounded(path)
    assert results["strict"]["line"] == 4 and "invalid UTF-8" in results["strict"]["message"]


# --- corpus readers on arbitrary bytes and text (hypothesis, in process) ----------------------
YAML_TOKENS = st.sampled_from(["conversations:", "categories:", "\n", "- ", "  ", "[", "]", "{", "}",
                               ", ", ": ", "&a ", "*a", "&b ", "*b", "!!python/object:os.system ",
                               "!!str ", "'", '"', "\t", "\x00", "#", "|", ">", "---", "...", "? ",
                               "Hi", "Hello", "yes", "1e999", "\ufeff", "\u202e", "%YAML 1.1"])
JSON_TOKENS = st.sampled_from(['{', '}', '[', ']', '"question"', '"answer"', '"turns"', '"category"',
                               ': ', ', ', '"Hi"', '"Hello"', 'null', 'true', '1e999', '9' * 5000,
                               '"\\ud800"', '"\\u0000"', '\n', '\t', '\x00', 'NaN', '-Infinity'])
TSV_TOKENS = st.sampled_from(["Hi", "Hello", "\t", "\n", "\r\n", "\r", "\x00", " ", "\ufeff",
                              "\u0301", "\u202e", "\U0001F600", "\x1b[31m"])


VALID_START = {YAML_TOKENS: "conversations:\n- - Hi\n  - Hello\n- ",
               JSON_TOKENS: '{"question": "Hi", "answer": "Hello"}\n',
               TSV_TOKENS: "Hi\tHello\n"}
UTF8_TEXT = st.text(alphabet=st.one_of(ANY_CHAR, HOSTILE_CHAR).filter(lambda c: not 0xD800 <= ord(c) <= 0xDFFF),
                    max_size=300)


def _corpus_text(tokens):
    """Random bytes, random text, or a soup of the format's own tokens; the latter two also
    after a valid first entry, so that the per-entry checks (not just the parser) are reached."""
    soup = st.lists(tokens, max_size=60).map("".join)
    return st.one_of(st.binary(max_size=400),
                     st.tuples(st.sampled_from(["", VALID_START[tokens]]), st.one_of(UTF8_TEXT, soup))
                     .map(lambda parts: "".join(parts).encode("utf-8")))


@contextmanager
def cleaning_counted():
    """Count what the corpus readers clean (calls and characters): the work a load does."""
    real = corpus_module.clean_text
    count = {"calls": 0, "chars": 0}

    def counting(text):
        count["calls"] += 1
        count["chars"] += len(text)
        return real(text)

    corpus_module.clean_text = counting
    try:
        yield count
    finally:
        corpus_module.clean_text = real


def _check_load(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    for strict in (False, True):
        with cleaning_counted() as cleaned:
            try:
                corpus = load_corpus(path, strict=strict)
            except CorpusError as exc:
                note(f"{'strict' if strict else 'lenient'}: CorpusError")
                assert_clear(exc, path)
            else:
                note(f"{'strict' if strict else 'lenient'}: loaded")
                assert corpus.dialogues and all(len(d.utterances) >= 2 for d in corpus.dialogues)
                assert all(u.text for d in corpus.dialogues for u in d.utterances)
                if strict:
                    assert not corpus.skipped
                assert cleaned["calls"] >= sum(len(d.utterances) for d in corpus.dialogues)
        assert cleaned["chars"] <= len(data), cleaned  # bounded work: nothing expanded


@HOSTILE
@given(data=_corpus_text(YAML_TOKENS))
def test_yaml_reader_on_arbitrary_bytes(tmp_path, data):
    _check_load(tmp_path / "corpus.yml", data)


@HOSTILE
@given(data=_corpus_text(JSON_TOKENS))
def test_jsonl_reader_on_arbitrary_bytes(tmp_path, data):
    _check_load(tmp_path / "corpus.jsonl", data)


@HOSTILE
@given(data=_corpus_text(TSV_TOKENS))
def test_tsv_reader_on_arbitrary_bytes(tmp_path, data):
    _check_load(tmp_path / "corpus.tsv", data)


# --- tokenizers ----------------------------------------------------------------------------
NASTY_MESSAGES = [
    "", " ", "\t\n \r\n", "\u200b", "\u3000",  # empty and whitespace-only (and lookalikes)
    "e\u0301\u0301\u0301\u0301\u0301", "Z\u0351\u0352\u0353\u0354\u0355\u0356\u0357" * 50,  # combining marks
    "\u202eolleH\u202c", "\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",  # RTL override, Hebrew, Arabic
    "\U0001F469\u200d\U0001F469\u200d\U0001F467 \U0001F1EB\U0001F1F7 \U0001F44D\U0001F3FD",  # emoji sequences
    "\x00\x01\x07\x1b[31mred\x1b[0m\x7f\x85\x9b", "Hi\rthere\x0bvertical\x0cfeed",  # control characters
    "\ufdd0end [END] <sep> \ufdd0sep", "\ufeffHi", "\U0010FFFF\uFFFE\uFFFF",  # specials, noncharacters
    "a\ud800b", "\udfff", "\ud83d\ude00",  # lone surrogates (no UTF-8 form)
]


@pytest.fixture(scope="module")
def tokenizers():
    from chatbot.data.tokenizer import TextTokenizer

    text = ["Hello there!", "How are you?", "I am fine, thanks.", "What is AI?", "A field of study."]
    return {level: TextTokenizer.fit(text, level=level, vocab_size=80) for level in ("char", "word", "subword")}


def _check_tokenize(tokenizer, text: str) -> None:
    try:
        ids = tokenizer.encode(text)
    except InputError as exc:
        assert_clear(exc)
        assert has_surrogate(text), f"refused valid text {text!r}: {exc}"
        return
    assert not has_surrogate(text)
    assert all(isinstance(i, int) and 0 <= i < tokenizer.vocab_size for i in ids)
    assert isinstance(tokenizer.decode(ids), str)
    assert all(i > 4 for i in ids if i != 1), "user text produced a special token id"
    batch = tokenizer.encode_input([text, text], max_tokens=16)
    assert len(batch) <= 16


@pytest.mark.parametrize("level", ["char", "word", "subword"])
@pytest.mark.parametrize("text", NASTY_MESSAGES, ids=range(len(NASTY_MESSAGES)))
def test_tokenizer_on_nasty_text(tokenizers, level, text):
    _check_tokenize(tokenizers[level], text)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(text=ANY_TEXT, level=st.sampled_from(["char", "word", "subword"]))
def test_tokenizer_on_any_unicode(tokenizers, text, level):
    _check_tokenize(tokenizers[level], text)


@pytest.mark.parametrize("level", ["char", "word", "subword"])
def test_tokenizer_on_a_megabyte(tokenizers, level):
    text = ("Hello there! \u05e9\u05dc\u05d5\u05dd e\u0301 \U0001F600 " * 40_000)[: 2**20]
    ids = tokenizers[level].encode(text)  # how fast: bench/hostile_input.py
    assert ids
    assert len(tokenizers[level].encode_input([text], max_tokens=40)) == 40


def test_tokenizer_refuses_non_text(tokenizers):
    for value in (None, 5, b"bytes"):
        with pytest.raises(InputError):
            tokenizers["subword"].encode(value)


# --- ChatBot.reply and ChatBot.ask ---------------------------------------------------------
def _check_reply(bot, text: str) -> None:
    try:
        reply = bot.reply(text)
    except InputError as exc:
        note("reply: InputError")
        assert_clear(exc)
        assert has_surrogate(text) or not has_content(text), f"refused {text[:80]!r}: {exc}"
        return
    note("reply: replied")
    assert not has_surrogate(text) and has_content(text)
    assert isinstance(reply.text, str) and reply.text
    stored = bot.history(reply.session_id)
    assert [m.role for m in stored] == ["user", "bot"]
    assert stored[0].text == without_controls(text)  # the input, less its control characters
    assert stored[0].id == reply.user_message_id and stored[1].text == reply.text


def _check_ask(bot, text: str) -> None:
    try:
        answer = bot.ask(text)
    except InputError as exc:
        assert_clear(exc)
        assert has_surrogate(text) or not has_content(text)
        return
    assert has_content(text) and isinstance(answer, str)


@pytest.mark.parametrize("text", NASTY_MESSAGES, ids=range(len(NASTY_MESSAGES)))
def test_reply_and_ask_on_nasty_messages(bot, text):
    _check_reply(bot, text)
    _check_ask(bot, text)


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=ANY_TEXT)
def test_reply_on_any_unicode(bot, text):
    _check_reply(bot, text)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(text=ANY_TEXT)
def test_ask_on_any_unicode(tiny_bot, text):
    _check_ask(tiny_bot, text)


def test_reply_to_a_megabyte(bot):
    bot.dialogue = bot.dialogue.with_overrides({"max_message_chars": 2**21})  # the default refuses it
    text = ("What is AI? \u05e9\u05dc\u05d5\u05dd \U0001F600\x07 " * 40_000)[: 2**20]
    reply = bot.reply(text)  # how fast: bench/hostile_input.py
    assert bot.history(reply.session_id)[0].text == without_controls(text)
    assert isinstance(bot.ask(text), str)


def test_non_text_messages_are_input_errors(bot):
    for value in (None, 42, b"Hello", ["Hello"]):
        with pytest.raises(InputError):
            bot.reply(value)
        with pytest.raises(InputError):
            bot.ask(value)


# --- loading a bundle never executes code from it -------------------------------------------
class _Evil:
    """Unpickling this creates ``path``: proof that pickle code ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _rewrite_checksum(bundle: Path, name: str) -> None:
    """Make the manifest list ``name`` with its current checksum (a forger would)."""
    from chatbot.model.bundle import MANIFEST, file_sha256

    manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    manifest["files"][name] = file_sha256(bundle / name)
    (bundle / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


# The last one is a pickle disguised as the weights file: it must not be unpickled either.
@pytest.mark.parametrize("name", ["evil.pkl", "EVIL.PICKLE", "nested/deeper/evil.pkl", "weights.joblib",
                                  "model.weights.h5"])
def test_bundle_with_a_pickle_is_refused(tiny_bundle_path, tmp_path, name):
    from chatbot.model.bundle import Bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_path, bundle)
    marker = tmp_path / "code-ran"
    (bundle / name).parent.mkdir(parents=True, exist_ok=True)
    (bundle / name).write_bytes(pickle.dumps(_Evil(marker)))
    _rewrite_checksum(bundle, name)
    with pytest.raises(BundleError) as info:
        Bundle.load(bundle)
    assert_clear(info.value)
    assert name in str(info.value)
    assert not marker.exists()


def test_bundle_with_a_keras_lambda_model_is_refused(tiny_bundle_path, tmp_path):
    import keras

    from chatbot.model.bundle import Bundle

    marker = tmp_path / "code-ran"

    def touch_marker(x):
        Path(marker).touch()
        return x * 2

    model = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(touch_marker)])
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_path, bundle)
    model.save(bundle / "model.keras")  # a real Keras archive holding the Lambda's code
    marker.unlink(missing_ok=True)  # building the model ran it once, here
    _rewrite_checksum(bundle, "model.keras")
    with pytest.raises(BundleError) as info:
        Bundle.load(bundle)
    assert_clear(info.value)
    assert "model.keras" in str(info.value)
    assert not marker.exists()
