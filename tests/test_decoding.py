"""Decoding strategies: beam search, sampling, repetition control, per-call settings.

Most tests use the tiny bot (a model that answers 20 pairs exactly). Search properties that
need a known distribution use ``ToyModel``: a Markov chain over a handful of tokens whose
next-token log-probabilities depend only on the previous token, driven through the real
compiled loops of ``Generator``.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import tensorflow as tf

from chatbot.config import DataConfig, DecodingConfig
from chatbot.errors import ConfigError
from chatbot.inference.decoding import DecodeLoops
from chatbot.inference.generator import Generator
from chatbot.data.tokenizer import END, PAD, START
from helpers import run_cli

A, B, C, D, E = 5, 6, 7, 8, 9
TOY_VOCAB = 10


class ToyModel:
    """``encode``/``decode_step`` as in ``Seq2Seq``, with next-token probabilities from a
    table: ``transitions[previous token] = {next token: probability}``."""

    stops_at_longest_input = False  # its encoding costs nothing, however wide

    def __init__(self, transitions: dict[int, dict[int, float]]):
        table = np.full((TOY_VOCAB, TOY_VOCAB), -30.0, np.float32)
        table[:, END] = 0.0  # rows not given end at once
        for prev, nexts in transitions.items():
            table[prev, :] = -30.0
            for token, p in nexts.items():
                table[prev, token] = math.log(p)
        self.vocab_size = TOY_VOCAB
        self.table = tf.constant(table)

    def encode(self, source, training=False):
        batch = tf.shape(source)[0]
        return tf.zeros([batch, 1, 1]), [tf.zeros([batch, 1])], tf.not_equal(source, PAD)

    def decode_step(self, token, states, encoder_outputs, source_mask):
        return tf.gather(self.table, token), states


class ToyTokenizer:
    def encode_input(self, turns, max_tokens, retrieved=(), max_answer_tokens=0):
        return [A]

    def decode(self, ids):
        return " ".join(str(int(i)) for i in ids if int(i) not in (PAD, END))


def toy_generator(transitions, **decoding) -> Generator:
    return Generator(ToyModel(transitions), ToyTokenizer(), DataConfig(),
                     DecodingConfig(**{"max_length": 12, **decoding}))


def total_logprob(generation) -> float:
    return generation.score * generation.tokens


def ngrams(ids, n):
    return [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]


# The greedy trap: A is the likelier first token, but everything after it is spread out,
# while B is almost always followed by D. Both paths end after three tokens.
TRAP = {START: {A: 0.55, B: 0.45}, A: {C: 0.4, D: 0.35, E: 0.25}, B: {D: 0.95, E: 0.05}}
# A loop: greedy repeats A until max_length.
LOOP = {START: {A: 0.6, B: 0.3, END: 0.1}, A: {A: 0.6, B: 0.3, END: 0.1}, B: {A: 0.6, B: 0.3, END: 0.1}}


@pytest.fixture
def questions(tiny_pairs):
    return [q for q, _ in tiny_pairs]


# --- beam search -------------------------------------------------------------------------------
def test_beam_1_is_exactly_greedy(tiny_bot, questions):
    greedy = tiny_bot.generate(questions)
    for decoding in ({"strategy": "beam", "beam": 1}, {"strategy": "beam", "beam": 1, "length_penalty": 2.0}):
        beam = tiny_bot.generate(questions, decoding=decoding)
        assert [r.text for r in beam] == [r.text for r in greedy]
        assert [r.token_ids for r in beam] == [r.token_ids for r in greedy]
        assert [r.score for r in beam] == [r.score for r in greedy]


def test_beam_search_finds_a_likelier_reply_than_greedy():
    generator = toy_generator(TRAP)
    greedy = generator.generate([["q"]])[0]
    beam = generator.generate([["q"]], decoding={"beam": 2, "n_best": 2, "length_penalty": 0.0})[0]
    assert greedy.token_ids == (A, C, END)
    assert beam.token_ids == (B, D, END)
    assert total_logprob(beam) > total_logprob(greedy) + 0.5
    assert total_logprob(beam) == pytest.approx(math.log(0.45 * 0.95), abs=1e-5)
    # n-best: best first, each with its own mean log-probability
    assert [t for t, _ in beam.alternatives] == [f"{B} {D}", f"{A} {C}"]
    assert beam.alternatives[1][1] == pytest.approx(math.log(0.55 * 0.4) / 3, abs=1e-5)


def test_beam_search_stops_when_all_hypotheses_ended_and_returns_n_best(tiny_bot, tiny_pairs):
    question, answer = tiny_pairs[0]
    result = tiny_bot.generate([question], decoding={"beam": 4, "n_best": 3})[0]
    assert result.text == answer
    assert len(result.alternatives) == 3 and result.alternatives[0] == (result.text, result.score)
    assert len({t for t, _ in result.alternatives}) == 3
    assert result.token_ids[-1] == END


class PhasedToyModel(ToyModel):
    """``ToyModel`` whose table changes with the step: ``phases`` is [(first step, transitions)],
    the step counted in the decoder's state (beam search reorders it with its hypotheses)."""

    def __init__(self, phases):
        self.starts = tf.constant([start for start, _ in phases], tf.float32)
        self.tables = tf.stack([ToyModel(transitions).table for _, transitions in phases])
        self.vocab_size = TOY_VOCAB

    def decode_step(self, token, states, encoder_outputs, source_mask):
        step = states[0][:, 0]
        phase = tf.reduce_sum(tf.cast(step[:, None] >= self.starts[None, 1:], tf.int32), axis=1)
        return tf.gather_nd(self.tables, tf.stack([phase, token], axis=1)), [states[0] + 1.0]


@pytest.mark.parametrize("loop", ["beam", "beam_xla"])
def test_beam_search_keeps_an_ended_reply_that_live_hypotheses_pushed_out(loop):
    """'A [END]' ends at step 2. Its rival runs on with near-certain tokens, so its GNMT key
    rises, splits in two at step 12 and both halves push 'A [END]' out of a beam of 2; from step
    20 they wander at random and never end. The search must return 'A [END]', not the wander."""
    steady = {START: {A: 0.5, B: 0.5}, A: {END: 1.0}, B: {C: 1.0}, C: {C: 1.0}}
    split = {**steady, C: {D: 0.5, E: 0.5}, D: {D: 1.0}, E: {E: 1.0}}
    wander = {t: {D: 0.5, E: 0.5} for t in (C, D, E)}
    loops = DecodeLoops(PhasedToyModel([(0, steady), (12, split), (20, wander)]), capacity=40)
    config = DecodingConfig(strategy="beam", beam=2, n_best=1, length_penalty=1.0, max_length=40)
    ids, raw, lengths, _ = (t.numpy() for t in getattr(loops, loop)(np.array([[A]], np.int32), config))
    assert ids[0, 0, :lengths[0, 0]].tolist() == [A, END]
    assert raw[0, 0] == pytest.approx(math.log(0.5), abs=1e-4)


def test_no_strategy_generates_padding_or_the_start_token():
    """[PAD] and [START] are never a reply's tokens, however likely a model finds them: no
    training target holds them, and the scoring pass masks padding that the loops would count."""
    likes_padding = {START: {PAD: 0.5, START: 0.3, A: 0.2}, A: {END: 1.0}}
    generator = toy_generator(likes_padding)
    for decoding in ({}, {"beam": 2, "n_best": 2}, {"strategy": "sample", "seed": 1}, {"repetition_penalty": 1.2}):
        assert generator.generate([["q"]], decoding=decoding)[0].token_ids == (A, END), decoding


def test_length_penalty_favours_longer_hypotheses():
    # From START: end at once (p 0.4), or two tokens (0.6 * 0.6 * 1.0 = 0.36).
    short_or_long = {START: {END: 0.4, A: 0.6}, A: {B: 0.6, C: 0.4}}
    generator = toy_generator(short_or_long)
    plain = generator.generate([["q"]], decoding={"beam": 2, "length_penalty": 0.0})[0]
    penalised = generator.generate([["q"]], decoding={"beam": 2, "length_penalty": 2.0})[0]
    assert plain.token_ids == (END,)
    assert penalised.token_ids == (A, B, END)


# --- sampling ----------------------------------------------------------------------------------
def test_top_k_1_is_greedy(tiny_bot, questions):
    greedy = tiny_bot.generate(questions)
    sampled = tiny_bot.generate(questions, decoding={"strategy": "sample", "top_k": 1, "temperature": 3.0})
    assert [r.text for r in sampled] == [r.text for r in greedy]
    np.testing.assert_allclose([r.score for r in sampled], [r.score for r in greedy], atol=1e-6)


def test_seeded_sampling_repeats_and_seeds_differ(tiny_bot, questions):
    def sample(seed):
        return [r.token_ids for r in tiny_bot.generate(
            questions, decoding={"strategy": "sample", "temperature": 2.5, "seed": seed})]

    first = sample(11)
    assert sample(11) == first
    assert sample(12) != first
    unseeded = tiny_bot.generate(questions, decoding={"strategy": "sample", "temperature": 2.5})
    assert len(unseeded) == len(questions)


def test_a_seeded_sample_is_the_same_in_any_batch(tiny_bot, questions):
    """A seed makes a reply repeatable wherever the input sits: alone, or in a batch beside
    others (as a server batches concurrent requests); repeats of one input in a call draw
    different samples unless given the same sample number."""
    decoding = {"strategy": "sample", "temperature": 2.5, "seed": 11}
    q = questions[0]
    alone = tiny_bot.generator.generate([[q]], decoding=decoding)[0].token_ids
    batched = tiny_bot.generator.generate([[questions[1]], [q], [questions[2]]], decoding=decoding)
    assert batched[1].token_ids == alone
    repeats = tiny_bot.generator.generate([[q]] * 6, decoding=decoding)
    assert repeats[0].token_ids == alone and len({r.token_ids for r in repeats}) > 1
    numbered = tiny_bot.generator.generate([[questions[1]], [q], [q]], decoding=decoding, samples=[0, 3, 3])
    assert numbered[1].token_ids == numbered[2].token_ids == repeats[3].token_ids


def test_sampling_draws_from_the_models_distribution():
    # From START the toy model says A with 0.55, B with 0.45; at temperature 2 that is 0.525 / 0.475.
    for temperature, expected in ((1.0, 0.55), (2.0, 0.55 ** 0.5 / (0.55 ** 0.5 + 0.45 ** 0.5))):
        generator = toy_generator(TRAP, strategy="sample", temperature=temperature)
        firsts = [g.token_ids[0] for g in generator.generate([["q"]] * 400, decoding={"seed": 3})]
        assert set(firsts) == {A, B}
        assert abs(firsts.count(A) / 400 - expected) < 0.075  # about 3 standard deviations


def test_top_p_keeps_only_the_nucleus():
    # From START the nucleus of mass 0.5 is {A} alone (0.55); with 0.6 it is {A, B}.
    generator = toy_generator(TRAP, strategy="sample")
    firsts = {generator.generate([["q"]], decoding={"top_p": 0.5, "seed": s})[0].token_ids[0] for s in range(20)}
    assert firsts == {A}
    firsts = {generator.generate([["q"]], decoding={"top_p": 0.6, "seed": s})[0].token_ids[0] for s in range(40)}
    assert firsts == {A, B}


def test_sampling_scores_use_the_models_own_log_probs():
    generator = toy_generator(TRAP, strategy="sample", temperature=0.02)
    result = generator.generate([["q"]], decoding={"seed": 0})[0]
    assert result.token_ids == (A, C, END)  # temperature 0.02: C over D at odds of (0.4 / 0.35) ** 50
    assert total_logprob(result) == pytest.approx(math.log(0.55 * 0.4), abs=1e-5)


# --- repetition control ------------------------------------------------------------------------
@pytest.mark.parametrize("decoding", [{}, {"beam": 3}, {"strategy": "sample", "seed": 5}],
                         ids=["greedy", "beam", "sample"])
def test_no_repeat_ngram_never_repeats_an_ngram(decoding):
    generator = toy_generator(LOOP, max_length=20)
    free = generator.generate([["q"]], decoding={**decoding, "min_length": 10})[0].token_ids
    if not decoding:
        assert len(set(ngrams(free, 2))) < len(ngrams(free, 2))  # the loop does repeat
    for n in (1, 2, 3):
        ids = generator.generate([["q"]], decoding={**decoding, "no_repeat_ngram_size": n})[0].token_ids
        assert len(set(ngrams(ids, n))) == len(ngrams(ids, n)), (n, ids)


def test_no_repeat_ngram_on_the_tiny_bot(tiny_bot, questions):
    for decoding in ({"strategy": "sample", "temperature": 2.0, "seed": 3}, {"beam": 3}):
        for result in tiny_bot.generate(questions, decoding={**decoding, "no_repeat_ngram_size": 2}):
            assert len(set(ngrams(result.token_ids, 2))) == len(ngrams(result.token_ids, 2))


def test_min_length_forbids_ending_early(tiny_bot, questions):
    generator = toy_generator({START: {END: 0.9, A: 0.1}, A: {END: 0.9, B: 0.1}, B: {END: 0.9, A: 0.1}})
    assert generator.generate([["q"]])[0].token_ids == (END,)
    for decoding in ({}, {"beam": 3}):
        ids = generator.generate([["q"]], decoding={**decoding, "min_length": 4})[0].token_ids
        assert len(ids) == 5 and ids[-1] == END
    for result in tiny_bot.generate(questions, decoding={"min_length": 12}):
        assert END not in result.token_ids[:12]


def test_repetition_penalty_breaks_a_loop():
    generator = toy_generator(LOOP, max_length=6)
    assert generator.generate([["q"]])[0].token_ids == (A,) * 6
    ids = generator.generate([["q"]], decoding={"repetition_penalty": 3.0})[0].token_ids
    assert ids[:2] == (A, B)  # A once seen: log 0.6 * 3 < log 0.3


# --- batching and tracing ----------------------------------------------------------------------
@pytest.mark.parametrize("decoding", [{}, {"beam": 4, "n_best": 2}, {"beam": 2, "no_repeat_ngram_size": 2}],
                         ids=["greedy", "beam", "beam-ngram"])
def test_batch_gives_the_same_replies_as_one_by_one(tiny_bot, questions, decoding):
    batched = tiny_bot.generate(questions, decoding=decoding)
    single = [tiny_bot.generate([q], decoding=decoding)[0] for q in questions]
    assert [r.text for r in batched] == [r.text for r in single]
    assert [[t for t, _ in r.alternatives] for r in batched] == [[t for t, _ in r.alternatives] for r in single]
    np.testing.assert_allclose([r.score for r in batched], [r.score for r in single], atol=1e-4)


@pytest.mark.parametrize("settings", [
    [{}, {"min_length": 2}, {"no_repeat_ngram_size": 3, "repetition_penalty": 1.3}],
    [{"beam": 2}, {"beam": 5, "n_best": 3, "length_penalty": 0.0}, {"beam": 3, "no_repeat_ngram_size": 2}],
    [{"strategy": "sample", "seed": 1}, {"strategy": "sample", "top_k": 5, "temperature": 0.7},
     {"strategy": "sample", "top_p": 0.8, "repetition_penalty": 1.2}],
], ids=["greedy", "beam", "sample"])
def test_no_retracing_across_questions_and_settings(tiny_bot, settings):
    for setting in settings:  # traced on first use: beam search once per (beam, n_best) in XLA,
        tiny_bot.generate(["warm"], decoding=setting)  # a greedy batch once per stage count
        tiny_bot.generate(["warm", "up"], decoding=setting)
    before = tiny_bot.generator.trace_count
    for n in range(1, 51):
        tiny_bot.generate([" ".join(["what"] * n) + "?"], decoding=settings[n % len(settings)])
    tiny_bot.generate(["a", "a much longer question than the other one in this batch"], decoding=settings[1])
    tiny_bot.generate(["short"], max_length=7, decoding=settings[2])
    assert tiny_bot.generator.trace_count == before


# --- settings ----------------------------------------------------------------------------------
@pytest.mark.parametrize("decoding, key", [
    ({"beam": 0}, "beam"),
    ({"temperature": 0.0}, "temperature"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"beam": 2, "n_best": 3}, "n_best"),
    ({"n_best": 0}, "n_best"),
    ({"repetition_penalty": 0.5}, "repetition_penalty"),
    ({"no_repeat_ngram_size": -2}, "no_repeat_ngram_size"),
    ({"min_length": 40}, "min_length"),
    ({"length_penalty": -0.1}, "length_penalty"),
    ({"seed": -1}, "seed"),
    ({"strategy": "sample", "beam": 3}, "beam"),
    ({"strategy": "nucleus"}, "strategy"),
    ({"beam": "5"}, "beam"),
    ({"avoid_repeat": 1}, "avoid_repeat"),
])
def test_invalid_settings_raise_naming_the_key(tiny_bot, decoding, key):
    with pytest.raises(ConfigError, match=f"invalid value for 'decoding.{key}'"):
        tiny_bot.generate(["hello"], decoding=decoding)


def test_unknown_setting_and_config_object(tiny_bot, tiny_pairs):
    with pytest.raises(ConfigError, match="unknown config key 'decoding.width'"):
        tiny_bot.ask("hello", decoding={"width": 3})
    with pytest.raises(ConfigError, match="decoding.beam"):
        tiny_bot.generate(["hello"], decoding=DecodingConfig(beam=0))
    question, answer = tiny_pairs[2]
    assert tiny_bot.ask(question, decoding=DecodingConfig(max_length=40, beam=3)) == answer


def test_reply_stores_the_settings_used(bot, tiny_pairs):
    question, answer = tiny_pairs[4]
    reply = bot.reply(question, decoding={"beam": 5, "n_best": 3})
    assert reply.text == answer and len(reply.alternatives) == 3
    stored = bot.history(reply.session_id)[-1]
    expected = dataclasses.asdict(DecodingConfig(max_length=40, strategy="beam", beam=5, n_best=3))
    assert stored.decoding == expected
    with pytest.raises(ConfigError):
        bot.reply(question, session=reply.session_id, decoding={"beam": 0})
    assert len(bot.history(reply.session_id)) == 2  # a bad setting stores nothing


def test_avoid_repeat_takes_the_best_different_alternative(bot, tiny_pairs):
    question, answer = tiny_pairs[5]
    session = bot.new_session()
    decoding = {"beam": 4, "n_best": 3, "avoid_repeat": True}
    first = bot.reply(question, session=session.id, decoding=decoding)
    second = bot.reply(question, session=session.id, decoding=decoding)
    assert first.text == answer
    assert second.text != first.text and second.text == second.alternatives[1][0]
    assert second.score == pytest.approx(second.alternatives[1][1])
    third = bot.reply(question, session=session.id, decoding=decoding)
    assert third.text == answer  # only the immediately previous reply is avoided
    plain = bot.reply(question, session=session.id, decoding={"beam": 4, "n_best": 3})
    assert plain.text == answer  # without avoid_repeat the best is repeated


def test_cli_ask_beam_n_best_json(tiny_bundle_path, tiny_pairs, capsys, monkeypatch):
    """``chatbot ask`` in-process (test_cli.py runs it as a real process)."""
    question, answer = tiny_pairs[1]
    code, out, err = run_cli(capsys, monkeypatch, "ask", "--model", tiny_bundle_path, "--beam", 4, "--n-best", 3,
                             "--json", question)
    assert code == 0, err
    line = json.loads(out)
    assert line["reply"] == answer and len(line["alternatives"]) == 3
    assert line["alternatives"][0] == {"reply": answer, "score": line["score"]}
    code, out, err = run_cli(capsys, monkeypatch, "ask", "--model", tiny_bundle_path, "--temperature", 0.7,
                             "--top-p", 0.9, "--top-k", 5, "--seed", 1, "--json", question)
    assert code == 0, err
    assert "alternatives" not in json.loads(out)
    code, _, err = run_cli(capsys, monkeypatch, "ask", "--model", tiny_bundle_path, "--top-p", 2, question)
    assert code == 1 and "decoding.top_p" in err


def test_a_reply_with_every_token_forbidden_ends():
    every = {t: {n: 0.1 for n in range(TOY_VOCAB)} for t in range(TOY_VOCAB)}
    generator = toy_generator(every, max_length=30)
    for decoding in ({}, {"beam": 2}, {"strategy": "sample", "seed": 2}):
        ids = generator.generate([["q"]], decoding={**decoding, "no_repeat_ngram_size": 1})[0].token_ids
        assert ids[-1] == END and len(set(ids)) == len(ids), ids


def test_repl_set_changes_decoding_settings_for_the_next_replies(bot, tiny_pairs):
    import io

    from chatbot.cli.repl import ChatRepl

    question, answer = tiny_pairs[6]
    out = io.StringIO()
    repl = ChatRepl(bot, None, output=out, plain=True)
    for line in ["/set strategy sample", "/set beam 3", "/set n_best 5", "/set n_best 2", "/set temperature 0",
                 "/set top_p x", "/set avoid_repeat on", question, question]:
        repl.handle(line)
    text = out.getvalue()
    # The later /set wins: a beam width after sampling asks for beam search again.
    assert "beam = 3 for the next replies (and strategy = beam)" in text and "n_best = 2 for the next replies" in text
    assert "invalid value for 'decoding.n_best': must be between 1 and beam (3)" in text
    assert "invalid value for 'decoding.temperature': must be > 0" in text
    assert "invalid value for top_p: expected a number, got 'x'" in text
    first, second = [m for m in bot.history(repl.session_id) if m.role == "bot"]
    assert first.text == answer and second.text != answer  # avoid_repeat
    assert second.decoding["beam"] == 3 and second.decoding["n_best"] == 2 and second.decoding["avoid_repeat"]
    assert "beam 3, n-best 2, max 40" in repl.toolbar()[0][1]
    assert bot.generator.decoding.beam == 1  # the shared generator is left as it was
    # ... and sampling after a beam width drops it (it was an error: /set depended on order).
    repl.handle("/set strategy sample")
    assert out.getvalue().endswith("strategy = sample for the next replies (and beam and n_best back to 1)\n")
    assert repl.toolbar()[0][1].count("sample (t 1, top-k 0, top-p 1)")
    repl.handle(question)
    assert bot.history(repl.session_id)[-1].decoding["strategy"] == "sample"
