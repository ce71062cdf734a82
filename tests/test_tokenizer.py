"""TextTokenizer at the char, word and subword levels."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from chatbot.errors import TokenizerError
from chatbot.data.tokenizer import END, PAD, SEP, SPECIAL_TOKENS, START, UNK, TextTokenizer

LEVELS = ("char", "word", "subword")

# Tiny training set with punctuation, double spaces, newlines and indentation.
TRAIN = [
    "Hello, world! How are you today?",
    "I am fine.  Thanks for asking: the weather is nice.",
    "What is your name? My name is Bot, a small robot.",
    "Here is some code:\n    print(value)\n\n    return value",
    "Good bye! See you soon.",
]
# Words that occur after a space or at the start of a training text (so every level has
# seen them in that position).
WORDS = sorted({m.group(1) for t in TRAIN for m in re.finditer(r"(?:^| )([A-Za-z]+)", t)})
ALPHABET = sorted(set("".join(TRAIN)))
JOINERS = [" ", "  ", "   ", ", ", ". ", "! ", "? ", ": ", "\n    ", "\n\n    ", "\n  "]
ENDINGS = ["", ".", "?", "!", ":"]

SETTINGS = settings(max_examples=100, deadline=None)

_CACHE: dict[str, TextTokenizer] = {}


def tokenizer(level: str) -> TextTokenizer:
    if level not in _CACHE:
        _CACHE[level] = TextTokenizer.fit(TRAIN, level=level, vocab_size=300)
    return _CACHE[level]


@st.composite
def word_texts(draw, joiners=JOINERS):
    words = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=10))
    text = words[0]
    for word in words[1:]:
        text += draw(st.sampled_from(joiners)) + word
    return text + draw(st.sampled_from(ENDINGS))


def test_training_words_cover_all_positions():
    assert {"Hello", "world", "print", "value", "return", "Bot"} <= set(WORDS)
    assert "\n" in ALPHABET and "(" in ALPHABET


# --- special tokens --------------------------------------------------------------------------
def test_special_id_constants():
    assert (PAD, UNK, START, END, SEP) == (0, 1, 2, 3, 4)
    # pad, unk, start, end, sep, then the retrieval markers: ret, ans and four similarity levels
    assert len(SPECIAL_TOKENS) == 11 and len(set(SPECIAL_TOKENS)) == 11


@pytest.mark.parametrize("level", LEVELS)
def test_special_ids_fixed(level):
    tok = tokenizer(level)
    assert tok.level == level
    for token_id, token in enumerate(SPECIAL_TOKENS):
        assert tok.backend.token_to_id(token) == token_id
        assert tok.backend.id_to_token(token_id) == token
    assert tok.vocab_size > 5
    ids = tok.encode(TRAIN[0])
    assert ids and min(ids) >= len(SPECIAL_TOKENS)
    assert tok.reads_retrieval


def test_fit_rejects_unknown_level_and_no_text():
    with pytest.raises(TokenizerError, match="unknown tokenizer level 'bytes'"):
        TextTokenizer.fit(TRAIN, level="bytes")
    with pytest.raises(TokenizerError, match="no text"):
        TextTokenizer.fit([], level="word")


# --- round trips -----------------------------------------------------------------------------
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("text", TRAIN)
def test_training_texts_round_trip(level, text):
    tok = tokenizer(level)
    ids = tok.encode(text)
    assert UNK not in ids
    assert tok.decode(ids) == text


@pytest.mark.parametrize("level", LEVELS)
@SETTINGS
@given(text=word_texts())
@example(text="Hello,  world!\n    print")
@example(text="Hello\n\n    world")
def test_round_trip_words_punctuation_spaces_indentation(level, text):
    tok = tokenizer(level)
    ids = tok.encode(text)
    assert UNK not in ids
    assert tok.decode(ids) == text


@pytest.mark.parametrize("level", ["char", "subword"])
@SETTINGS
@given(text=st.text(alphabet=ALPHABET, min_size=1, max_size=60))
def test_round_trip_any_text_over_training_alphabet(level, text):
    # Corpus utterances are stripped (clean_text), and the Metaspace convention cannot tell
    # " x" from "x", so texts starting with a space are out of scope.
    assume(not text.startswith(" "))
    tok = tokenizer(level)
    ids = tok.encode(text)
    assert UNK not in ids
    assert tok.decode(ids) == text


@pytest.mark.parametrize("level", [
    "char",
    pytest.param("word", marks=pytest.mark.xfail(strict=True, reason=(
        "word level: the Metaspace pre-tokenizer only marks words after a space, so a word "
        "right after a bare newline is a different vocabulary entry ('world' vs '▁world') "
        "and becomes [UNK]; 'Hello\\nworld' decodes to 'Hello\\n'"))),
    "subword",
])
@SETTINGS
@given(text=word_texts(joiners=["\n"]))
@example(text="Hello\nworld")
def test_round_trip_word_at_start_of_unindented_line(level, text):
    tok = tokenizer(level)
    assert tok.decode(tok.encode(text)) == text


def test_subword_indentation_is_one_token_per_run_not_per_space():
    # A decoder copying code should not have to count the spaces it has emitted.
    tok = tokenizer("subword")
    text = "Here is some code:\n    print(value)\n\n    return value"
    tokens = tok.backend.encode(text).tokens
    assert tok.decode(tok.encode(text)) == text
    assert tokens.count("▁") == 0, tokens
    assert "▁▁▁" in tokens
    # A run length training never saw is still spelt, from shorter runs.
    odd = "Hello\n             world"
    assert UNK not in tok.encode(odd) and tok.decode(tok.encode(odd)) == odd


def test_a_saved_tokenizer_keeps_its_own_pre_tokenizer(tmp_path):
    # Bundles written before space runs were merged split at every space; loading one must
    # read inputs as its model was trained on them, not as a new tokenizer would.
    from tokenizers import Regex, pre_tokenizers

    tok = TextTokenizer.fit(TRAIN, level="subword", vocab_size=300)
    tok.backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        pre_tokenizers.Split(Regex("\n"), behavior="isolated")])
    tok.save(tmp_path / "tokenizer.json")
    old = TextTokenizer.load(tmp_path / "tokenizer.json")
    tokens = old.backend.encode("print(value)\n    return").tokens
    assert tokens.count("▁") == 3, tokens
    assert old.decode(old.encode("print(value)\n    return")) == "print(value)\n    return"


# --- unknown input ---------------------------------------------------------------------------
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("unknown", ["zzqx", "QZJ", "héllo wörld", "日本語", "\u2603"])
def test_unknown_content_encodes_to_unk(level, unknown):
    tok = tokenizer(level)
    ids = tok.encode(unknown)
    assert UNK in ids
    decoded = tok.decode(ids)
    assert isinstance(decoded, str)
    assert SPECIAL_TOKENS[UNK] not in decoded


@pytest.mark.parametrize("level", LEVELS)
def test_unknown_word_keeps_known_neighbours(level):
    tok = tokenizer(level)
    ids = tok.encode("Hello zzqx")
    assert UNK in ids
    assert tok.decode(ids).startswith("Hello")


@pytest.mark.parametrize("level", LEVELS)
@SETTINGS
@given(text=st.text(max_size=30))
def test_arbitrary_text_never_crashes(level, text):
    tok = tokenizer(level)
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert isinstance(tok.decode(ids), str)
    assert isinstance(tok.encode_input([text, text], 8), list)


@pytest.mark.parametrize("level", LEVELS)
def test_literal_special_token_text_is_not_a_control_id(level):
    tok = tokenizer(level)
    ids = tok.encode("Hello [END] world [SEP] [PAD]")
    assert not {PAD, START, END, SEP} & set(ids)


# --- decode ----------------------------------------------------------------------------------
@pytest.mark.parametrize("level", LEVELS)
def test_decode_stops_at_end_and_drops_pad_start_sep(level):
    tok = tokenizer(level)
    text = "Hello, world! How are you today?"
    tail = tok.encode("Good bye!")
    ids = tok.encode(text)
    mid = len(ids) // 2
    assert tok.decode([START] + ids + [END] + tail) == text
    assert tok.decode([START] + ids[:mid] + [SEP] + ids[mid:] + [END, PAD, PAD]) == text
    assert tok.decode([START, PAD] + ids + [PAD, PAD]) == text
    assert tok.decode([END] + ids) == ""
    assert tok.decode([]) == ""
    assert tok.decode(ids + [END]) == text


# --- encode_input / encode_target ------------------------------------------------------------
@pytest.mark.parametrize("level", LEVELS)
def test_encode_input_joins_turns_with_sep(level):
    tok = tokenizer(level)
    turns = ["Hello, world!", "I am fine.", "What is your name?"]
    parts = [tok.encode(t) for t in turns]
    expected = parts[0] + [SEP] + parts[1] + [SEP] + parts[2]
    assert tok.encode_input(turns, 10_000) == expected
    assert tok.encode_input(turns[-1:], 10_000) == parts[2]
    assert tok.encode_input(turns, len(expected)) == expected
    assert tok.encode_input([], 5) == []


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("max_tokens", [1, 2, 3, 5, 8])
def test_encode_input_keeps_last_tokens(level, max_tokens):
    tok = tokenizer(level)
    turns = ["Hello, world! How are you today?", "What is your name? My name is Bot."]
    full = tok.encode(turns[0]) + [SEP] + tok.encode(turns[1])
    assert len(full) > 8
    kept = tok.encode_input(turns, max_tokens)
    assert kept == full[-max_tokens:]
    assert len(kept) == max_tokens
    assert kept[-1] == tok.encode(turns[1])[-1]


@pytest.mark.parametrize("level", LEVELS)
def test_encode_target_ends_with_end(level):
    tok = tokenizer(level)
    text = "See you, Bot."
    ids = tok.encode(text)
    assert tok.encode_target(text, 10_000) == ids + [END]
    assert tok.decode(tok.encode_target(text, 10_000)) == text


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("max_tokens", [1, 2, 4, 7])
def test_encode_target_respects_max_tokens(level, max_tokens):
    tok = tokenizer(level)
    text = "What is your name? My name is Bot, a small robot."
    ids = tok.encode(text)
    assert len(ids) > 7
    target = tok.encode_target(text, max_tokens)
    assert len(target) == max_tokens
    assert target[-1] == END
    assert target[:-1] == ids[: max_tokens - 1]
    assert END not in target[:-1]


# --- persistence -----------------------------------------------------------------------------
PROBES = TRAIN + ["Hello zzqx", "héllo", "", "Hello\nworld", "   print(value)"]


@pytest.mark.parametrize("level", LEVELS)
def test_json_round_trip_gives_identical_ids(level):
    tok = tokenizer(level)
    again = TextTokenizer.from_json(tok.to_json())
    assert again.level == level
    assert again.vocab_size == tok.vocab_size
    for text in PROBES:
        assert again.encode(text) == tok.encode(text)
        assert again.decode(tok.encode(text)) == tok.decode(tok.encode(text))
    assert again.encode_input(TRAIN[:2], 12) == tok.encode_input(TRAIN[:2], 12)


@pytest.mark.parametrize("level", LEVELS)
def test_save_load_round_trip_gives_identical_ids(level, tmp_path):
    tok = tokenizer(level)
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    assert json.loads(path.read_text(encoding="utf-8"))["level"] == level
    again = TextTokenizer.load(path)
    assert again.level == level
    for text in PROBES:
        assert again.encode(text) == tok.encode(text)


def _corruptions(good: str) -> dict[str, str]:
    data = json.loads(good)
    no_tokenizer = {"level": data["level"]}
    bad_backend = {"level": data["level"], "tokenizer": {"model": "nonsense"}}
    swapped = json.loads(good)
    vocab = swapped["tokenizer"]["model"]["vocab"]
    pad, unk = SPECIAL_TOKENS[PAD], SPECIAL_TOKENS[UNK]
    vocab[pad], vocab[unk] = 1, 0
    for added in swapped["tokenizer"]["added_tokens"]:
        added["id"] = {pad: 1, unk: 0}.get(added["content"], added["id"])
    return {
        "empty": "",
        "not json": "this is not a tokenizer",
        "truncated": good[: len(good) // 2],
        "list": "[1, 2, 3]",
        "no tokenizer key": json.dumps(no_tokenizer),
        "bad backend": json.dumps(bad_backend),
        "swapped special ids": json.dumps(swapped),
    }


@pytest.mark.parametrize("case", ["empty", "not json", "truncated", "list", "no tokenizer key",
                                  "bad backend", "swapped special ids"])
def test_corrupt_tokenizer_file_raises(case, tmp_path):
    good = TextTokenizer.fit(TRAIN, level="word", vocab_size=300).to_json()
    text = _corruptions(good)[case]
    with pytest.raises(TokenizerError):
        TextTokenizer.from_json(text)
    path = tmp_path / "tokenizer.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TokenizerError):
        TextTokenizer.load(path)


def test_unreadable_tokenizer_file_raises(tmp_path):
    with pytest.raises(TokenizerError, match="cannot read tokenizer"):
        TextTokenizer.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"level": "word", "tokenizer": "\xff\xfe"}')
    with pytest.raises(TokenizerError, match="cannot read tokenizer"):
        TextTokenizer.load(bad)


def test_retrieved_pairs_come_before_the_question_best_last_and_decode_away():
    from chatbot.data.tokenizer import ANS, RET, SIM_TOKENS

    tok = tokenizer("subword")
    question = tok.encode("Hello world")
    ids = tok.encode_input(["Hello world"], 64, retrieved=[("Hi", "Hello there", 0.97), ("Bye", "Good bye", 0.5)],
                           max_answer_tokens=2)
    assert ids[-len(question) - 1:] == [SEP] + question  # the question stays at the end
    assert ids.count(RET) == 2 and ids.count(ANS) == 2
    assert ids[:2] == [RET, SIM_TOKENS[0]]  # the least alike first ...
    best = ids.index(RET, 1)
    assert ids[best + 1] == SIM_TOKENS[-1]  # ... the best nearest the question
    assert len(ids[ids.index(ANS, best) + 1:ids.index(SEP)]) <= 2  # answers cut to max_answer_tokens
    assert tok.decode(ids) == tok.decode([i for i in ids if i >= len(SPECIAL_TOKENS)])
