"""Big corpora (issue 18): the corpus read line by line and again on each pass, the split drawn
from 12 bytes per example, encoded inputs cached on disk, and training batches streamed from
that cache a window at a time. Each must give what the in-memory path gives."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatbot.data.corpus import (
    Dialogue,
    Utterance,
    load_corpus,
    make_examples,
    split_by_dialogue,
)
from chatbot.data.dataset import make_dataset, stream_dataset
from chatbot.data.examples import split_corpus
from chatbot.data.token_cache import Rows, TokenCache, cache_key
from chatbot.data.tokenizer import END, PAD, START, TextTokenizer
from chatbot.errors import CorpusError
from conftest import DATA, TINY_PAIRS, tiny_config

CHITCHAT_EXCERPT = DATA / "chitchat_excerpt.json"


# --- reading ---------------------------------------------------------------------------------
def write_jsonl(path, rows, newline="\n", bom=False):
    text = newline.join(json.dumps(row) for row in rows) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


@pytest.mark.parametrize("newline,bom", [("\n", False), ("\r\n", True)])
def test_a_corpus_read_again_on_each_pass_gives_what_the_in_memory_one_holds(tmp_path, newline, bom):
    rows = [{"question": f"q{i} été", "answer": f"a{i}"} for i in range(50)] + [{"turns": ["x", "y", "z"]}]
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", rows, newline, bom)
    (folder / "b.tsv").write_bytes(newline.join(f"tq{i}\tta{i}" for i in range(30)).encode())
    held = load_corpus(folder)
    streamed = load_corpus(folder, in_memory=False)
    assert streamed.sha256 == held.sha256 and len(streamed.dialogues) == len(held.dialogues) == 81
    assert list(streamed.dialogues) == list(streamed.dialogues) == held.dialogues
    assert held.dialogues[0].utterances[0].text == "q0 été"  # the byte order mark is not text


def test_invalid_utf8_names_its_line_in_a_file_read_line_by_line(tmp_path):
    corpus = tmp_path / "pairs.tsv"
    corpus.write_bytes(b"hi\thello\nbye\tsee you\nbad \xff\tbyte\n")
    with pytest.raises(CorpusError, match=r"pairs.tsv:3: invalid UTF-8 \(byte 0xff\)"):
        load_corpus(corpus, in_memory=False)


def test_a_corpus_that_changes_between_passes_is_refused(tmp_path):
    corpus = write_jsonl(tmp_path / "pairs.jsonl", [{"question": "hi", "answer": "hello"}] * 3)
    streamed = load_corpus(corpus, in_memory=False)
    write_jsonl(corpus, [{"question": "hi", "answer": "goodbye"}] * 3)
    with pytest.raises(CorpusError, match="changed while it was being read"):
        list(streamed.dialogues)


# --- splitting -------------------------------------------------------------------------------
texts = st.sampled_from(["hi", "hello", "how are you", "fine", "bye", "ok"])
dialogues = st.lists(st.lists(texts, min_size=1, max_size=5), min_size=1, max_size=30).map(
    lambda convs: [Dialogue(tuple(Utterance(t, f"c{n}:{i}") for i, t in enumerate(c))) for n, c in enumerate(convs)])


@settings(max_examples=60, deadline=None)
@given(dialogues, st.integers(0, 2), st.booleans(), st.sampled_from([0.0, 0.2, 0.5]), st.integers(0, 9))
def test_the_streamed_split_is_the_in_memory_split(corpus, context_turns, deduplicate, fraction, seed):
    """Repeats are common here (6 texts), so the deduplication by 64-bit keys is exercised.
    "pairs" holds out whole questions (as retrieval compares them), each with all its pairs."""
    from chatbot.data.corpus import validation_positions
    from chatbot.data.examples import _question_key

    split = split_corpus(corpus, context_turns, deduplicate, "pairs", fraction, seed)
    examples = make_examples(corpus, context_turns, deduplicate)
    questions = sorted({_question_key(e) for e in examples})
    held = {questions[i] for i in validation_positions(len(questions), fraction, seed)}
    train = [e for e in examples if _question_key(e) not in held]
    validation = [e for e in examples if _question_key(e) in held]
    assert (list(split.train), split.validation, len(split.train)) == (train, validation, len(train))
    assert split.total == len(train) + len(validation)
    assert not {_question_key(e) for e in train} & {_question_key(e) for e in validation}

    split = split_corpus(corpus, context_turns, deduplicate, "dialogues", fraction, seed)
    train, validation = split_by_dialogue(corpus, fraction, seed, context_turns, deduplicate)
    assert (list(split.train), split.validation, len(split.train)) == (train, validation, len(train))


def test_a_real_conversation_corpus_splits_alike_from_its_files():
    corpus = load_corpus(CHITCHAT_EXCERPT, in_memory=False)
    split = split_corpus(corpus.dialogues, 2, True, "dialogues", 0.25, 3)
    assert (list(split.train), split.validation) == split_by_dialogue(list(corpus.dialogues), 0.25, 3, 2)


# --- the token cache -------------------------------------------------------------------------
def random_rows(n=300, seed=0):
    rng = np.random.default_rng(seed)
    sources = [list(map(int, rng.integers(5, 50, rng.integers(1, 30)))) + [n_] for n_ in range(n)]
    targets = [list(map(int, rng.integers(5, 50, rng.integers(1, 40)))) + [END] for _ in range(n)]
    return sources, targets


def test_the_cache_gives_back_its_rows_and_only_for_its_key(tmp_path):
    sources, targets = random_rows()
    cache = TokenCache.build(tmp_path / "tokens", "key-1", zip(sources, targets))
    assert cache.count == 300 and not (tmp_path / "tokens.building").exists()
    reopened = TokenCache.open(tmp_path / "tokens", "key-1")
    part = reopened.read("sources", 10, 20)
    assert [list(part.values[a:b]) for a, b in zip(part.offsets[:-1], part.offsets[1:])] == sources[10:20]
    whole = reopened.read("targets")
    assert list(whole.lengths()) == [len(t) for t in targets]
    assert TokenCache.open(tmp_path / "tokens", "key-2") is None  # other data: encoded again
    assert TokenCache.open(tmp_path / "nothing", "key-1") is None
    assert cache_key("corpus", {"a": 1}) != cache_key("corpus", {"a": 2})


def test_a_cache_interrupted_while_written_is_not_found(tmp_path):
    sources, targets = random_rows(20)

    def rows_then_a_kill():
        yield from zip(sources[:10], targets[:10])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        TokenCache.build(tmp_path / "tokens", "key", rows_then_a_kill())
    assert TokenCache.open(tmp_path / "tokens", "key") is None


def test_padded_rows_and_the_teacher_forcing_shift():
    rows = Rows.from_lists([[7, 8, END], [9, END], [END]])
    assert rows.padded(np.array([1, 0])).tolist() == [[9, END, PAD], [7, 8, END]]
    assert rows.shifted_right().padded(np.array([0, 1, 2])).tolist() == [[START, 7, 8], [START, 9, PAD],
                                                                         [START, PAD, PAD]]


# --- streamed batches ------------------------------------------------------------------------
def epoch(data):
    """(sorted target rows, batches, batch widths) of one pass, with the shift checked."""
    seen, widths = [], []
    for (src, dec), tgt in data:
        dec, tgt = dec.numpy(), tgt.numpy()
        assert (dec[:, 0] == START).all()
        for d, t in zip(dec, tgt):
            n = int((t != PAD).sum())
            assert list(d[1:n]) == list(t[:n - 1]) and t[n - 1] == END and not d[n:].any()
        seen += [tuple(int(x) for x in row if x != PAD) for row in tgt]
        widths.append(tgt.shape[1])
    return sorted(seen), len(widths), widths


@pytest.mark.parametrize("count,window,batch", [(300, 64, 16), (300, 1000, 16), (257, 100, 7), (5, 2, 3)])
def test_streaming_gives_every_example_once_per_epoch_in_a_fixed_number_of_batches(tmp_path, count, window, batch):
    sources, targets = random_rows(count)
    cache = TokenCache.build(tmp_path / "tokens", "k", zip(sources, targets))
    data = stream_dataset(cache, batch, window, seed=3)
    first, second = epoch(data), epoch(data)
    assert first[0] == second[0] == sorted(tuple(t) for t in targets)
    assert first[1] == second[1] == int(data.cardinality()) >= -(-count // batch)


def test_a_streamed_cell_budget_bounds_every_batch_and_keeps_every_example(tmp_path):
    """``training.max_batch_cells`` on the streamed path: long examples get small batches (a
    step's memory stays bounded whatever the corpus' size), short ones the full batch size, and
    the number of batches stays the same every epoch."""
    rng = np.random.default_rng(4)
    lengths = [(6, 4)] * 300 + [(200, 150)] * 60
    order = rng.permutation(len(lengths))
    sources = [list(map(int, rng.integers(5, 50, lengths[i][0]))) for i in order]
    targets = [list(map(int, rng.integers(5, 50, lengths[i][1]))) + [END] for i in order]
    cache = TokenCache.build(tmp_path / "tokens", "k", zip(sources, targets))
    vocab, budget = 100, 200_000
    unlimited = stream_dataset(cache, 32, 128, seed=2, vocab_size=vocab)
    limited = stream_dataset(cache, 32, 128, seed=2, vocab_size=vocab, max_cells=budget)
    first, second = epoch(limited), epoch(limited)
    assert first[0] == second[0] == sorted(tuple(t) for t in targets)
    assert first[1] == second[1] == int(limited.cardinality()) > int(unlimited.cardinality())
    cells = [t.shape[0] * t.shape[1] * (s.shape[1] + vocab) for (s, _), t in limited]
    assert max(cells) <= budget < max(t.shape[0] * t.shape[1] * (s.shape[1] + vocab) for (s, _), t in unlimited)
    assert max(int(t.shape[0]) for (_, _), t in limited if t.shape[1] <= 5) == 32  # short ones: full batches


def row_ids(sources) -> list[int]:
    """Each source row's number (its last id, before the padding: see ``random_rows``)."""
    return [int(row[row != PAD][-1]) for row in sources.numpy()]


def test_streamed_epochs_are_shuffled_and_batches_padded_little(tmp_path):
    sources, targets = random_rows(2000)
    cache = TokenCache.build(tmp_path / "tokens", "k", zip(sources, targets))
    data = stream_dataset(cache, 32, 512, seed=1)
    peek = [row_ids(s) for (s, _), _ in data.take(5)]
    orders = [[row_ids(s) for (s, _), _ in data] for _ in range(2)]
    assert orders[0] != orders[1]  # another window order, other batches, each epoch
    # An iterator dropped part-way (a distribution strategy looking at the data first) takes no
    # epoch's order: the first epoch read to the end starts as the peek did.
    assert orders[0][:5] == peek
    def padded(batches) -> int:
        return sum(int(s.shape[0] * s.shape[1] + t.shape[0] * t.shape[1]) for (s, _), t in batches)

    # Windows of a quarter of the set, sorted by length, pad nearly as little as buckets over it all.
    assert padded(data) < 1.25 * padded(make_dataset(sources, targets, 32, shuffle=True, seed=1))


def test_the_in_memory_path_reads_cached_rows_as_it_reads_lists(tmp_path):
    sources, targets = random_rows(200)
    cache = TokenCache.build(tmp_path / "tokens", "k", zip(sources, targets))
    from_cache = make_dataset(cache.read("sources"), cache.read("targets"), 16, shuffle=True, seed=5)
    from_lists = make_dataset(sources, targets, 16, shuffle=True, seed=5)
    for (a, b) in zip(from_cache, from_lists):
        for x, y in zip(a[0] + (a[1],), b[0] + (b[1],)):
            assert np.array_equal(x.numpy(), y.numpy())


def test_unknown_rate_is_the_same_a_chunk_at_a_time(monkeypatch):
    import chatbot.data.tokenizer as tokenizer_module

    tokenizer = TextTokenizer.fit(["hello there", "general kenobi"], "word", 50)
    texts = ["hello you", "there kenobi", "who is this"] * 5
    whole = tokenizer.unknown_rate(texts)
    monkeypatch.setattr(tokenizer_module, "ENCODE_CHUNK", 2)
    assert tokenizer.unknown_rate(iter(texts)) == whole and 0 < whole < 1


# --- training --------------------------------------------------------------------------------
def test_a_streamed_training_learns_and_a_resumed_one_reuses_its_cache(tmp_path, monkeypatch):
    """A window of 8 pairs forces the streamed path on the 20 tiny pairs."""
    from chatbot.data import token_cache
    from chatbot.training import pipeline

    config = tiny_config(**{"data.shuffle_window": 8, "data.spelling": False, "training.epochs": 40})
    stages = []
    bundle = pipeline.train(TINY_PAIRS, config, tmp_path / "m", verbose=0, on_stage=stages.append)
    assert any(s.startswith("streaming the training inputs") for s in stages)
    history = bundle.metrics["history"]["loss"]
    assert history[-1] < history[0] / 5
    assert bundle.metrics["train_exact_match"] >= 0.9

    plan = pipeline.plan_run(TINY_PAIRS, config, tmp_path / "n", False, None, False, False, stages.append)
    pipeline.prepare_tokenizer(plan, stages.append)
    first = pipeline.token_cache(plan, stages.append)
    monkeypatch.setattr(token_cache.TokenCache, "build", lambda *a: pytest.fail("re-encoded"))
    again = pipeline.token_cache(plan, stages.append)
    assert again.count == first.count == 20


# --- the cost of a pass ----------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",))))
def test_clean_text_skips_the_character_scan_only_where_the_scan_removes_nothing(text):
    """Each pass over a big corpus cleans every utterance again; the scan for control
    characters was four fifths of a pass, and printable text (most of it) has none."""
    import unicodedata

    from chatbot.data.text import clean_text

    def kept(ch):  # controls, format characters (but joiners, direction marks and tags),
        code = ord(ch)  # surrogates and noncharacters go
        if 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE:
            return False
        return (ch in "\n\t\u200c\u200d\u200e\u200f\u061c" or 0xE0020 <= code <= 0xE007F
                or unicodedata.category(ch) not in ("Cc", "Cf", "Cs"))

    scanned = "".join(ch for ch in text.replace("\r\n", "\n").replace("\r", "\n") if kept(ch))
    if not any(not ch.isspace() and unicodedata.category(ch) not in ("Cc", "Cf") for ch in scanned):
        scanned = ""
    assert clean_text(text) == unicodedata.normalize("NFC", scanned).replace("\t", " ").strip()


def test_examples_encoded_in_one_batch_are_encoded_as_one_at_a_time():
    from chatbot.data.dataset import encode_examples

    examples = load_corpus(CHITCHAT_EXCERPT).examples(2)
    tokenizer = TextTokenizer.fit((t for e in examples for t in (e.question, e.answer)), "subword", 400)
    batched = encode_examples(examples, tokenizer, 20, 12)
    one_by_one = ([tokenizer.encode_input(list(e.context) + [e.question], 20) for e in examples],
                  [tokenizer.encode_target(e.answer, 12) for e in examples])
    assert batched == one_by_one and max(map(len, batched[0])) == 20
