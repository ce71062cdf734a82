"""The transformer (model.cell = "transformer"): incremental decoding computes what training
optimised, every compiled loop decodes it alike, and it trains, saves and loads like the RNNs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from chatbot.config import Config, DataConfig, DecodingConfig, ModelConfig
from chatbot.data.tokenizer import ANS, END, PAD, RET, SEP, SIM_TOKENS, START
from chatbot.errors import ConfigError
from chatbot.inference.generator import Generator
from chatbot.model.network import build_model, copy_sources
from chatbot.model.transformer import CONTINUATION_TOKENS
from conftest import TINY_PAIRS, tiny_config

VOCAB = 50
# A retrieved pair (copyable answer 30 31 32 33 30 31 34), then the question 20 22.
RETRIEVED = [RET, SIM_TOKENS[-1], 20, 21, ANS, 30, 31, 32, 33, 30, 31, 34, SEP, 20, 22]


def random_transformer(max_output_tokens: int = 10, **overrides):
    config = ModelConfig(**{"cell": "transformer", "units": 16, "heads": 4, "layers": 2, **overrides})
    model = build_model(VOCAB, config, max_output_tokens)
    model.build_for_inference()
    return model


@pytest.mark.parametrize("copy, continuation", [(True, True), (True, False), (False, False)],
                         ids=["copying", "copying-without-continuation", "generating"])
def test_incremental_decoding_matches_teacher_forcing(copy, continuation):
    """Each step reads the cached keys and values of the steps before, and the token before
    last for the continuation bonus; it must give exactly the logits of the teacher-forced
    call, padded rows included."""
    tf.random.set_seed(0)
    model = random_transformer(copy_attention=copy, copy_continuation=continuation)
    assert model.continuation == continuation
    if continuation:
        model.copy_continuation.bonus.assign(np.linspace(1.0, 4.0, CONTINUATION_TOKENS))  # learned from 0
    source = np.array([RETRIEVED, [5, 6, 7, 8] + [PAD] * (len(RETRIEVED) - 4)], np.int32)
    decoder_input = np.array([[START, 30, 31, 32, 33, 30], [START, 14, 15, 16, 17, 18]], np.int32)
    full = model((source, decoder_input), training=False).numpy()

    encoder_outputs, states, source_ids = model.encode(source)
    for t in range(decoder_input.shape[1]):
        logits, states = model.decode_step(tf.constant(decoder_input[:, t]), states, encoder_outputs, source_ids)
        np.testing.assert_allclose(logits.numpy(), full[:, t, :], rtol=1e-4, atol=1e-5, err_msg=f"step {t}")
    # Padding changes nothing: the second row alone and unpadded gives the same output.
    alone = model((source[1:, :4], decoder_input[1:]), training=False).numpy()
    np.testing.assert_allclose(alone, full[1:], rtol=1e-5, atol=1e-5)


def copying_transformer(source, decoder_input, tokens=CONTINUATION_TOKENS):
    """The tokens a transformer whose pointer reads only the continuation bonus (its first
    ``tokens`` weights) copies at each step."""
    tf.random.set_seed(0)
    model = random_transformer(copy_continuation=True)
    model.copy_continuation.bonus.assign([5.0] * tokens + [0.0] * (CONTINUATION_TOKENS - tokens))
    model.copy_switch.bias.assign([-30.0])  # copy only
    model.copy_query.kernel.assign(tf.zeros_like(model.copy_query.kernel))  # no learned pointer scores
    logits = model((np.array([source], np.int32), np.array([decoder_input], np.int32)), training=False)
    return np.argmax(logits.numpy()[0], axis=-1).tolist()


def test_the_continuation_bonus_counts_through_runs_of_one_token_and_copies_the_end():
    """Indentation is a run of identical tokens: after two of the answer's three 7s, only the
    match of the emitted tokens with what precedes each position tells that one more 7 comes,
    and after the last 34 that the answer ends ([END] copied from the marker closing it)."""
    answer = [30, 7, 7, 7, 31, 7, 32, 34, 34]
    source = [RET, SIM_TOKENS[-1], 20, 21, ANS, *answer, SEP, 20, 22]
    assert copying_transformer(source, [START, *answer]) == [*answer, END]
    # Matching two tokens only (what a recurrent model does) cannot count past a run of two.
    assert copying_transformer(source, [START, *answer], tokens=2) != [*answer, END]


def test_copy_sources_add_each_answers_closing_marker_as_end():
    source = np.array([[RET, SIM_TOKENS[1], 20, ANS, 30, 31, RET, SIM_TOKENS[1], 21, ANS, 40, SEP, 20, PAD]], np.int32)
    copyable, ids = (t.numpy()[0] for t in copy_sources(source))
    assert np.flatnonzero(copyable).tolist() == [4, 5, 10]
    copyable, ids = (t.numpy()[0] for t in copy_sources(source, copy_end=True))
    assert np.flatnonzero(copyable).tolist() == [4, 5, 6, 10, 11]
    assert ids[[4, 5, 6, 10, 11]].tolist() == [30, 31, END, 40, END]


def test_a_format_4_transformer_bundle_loads_without_the_continuation_bonus():
    """Up to format 4 a transformer ignored copy_continuation (true by default), so its weights
    have no bonus: the upgrade turns the setting off, and recurrent configs keep theirs."""
    from chatbot.model.bundle import upgrade_config

    raw = {"model": {"cell": "transformer", "copy_continuation": True}}
    assert upgrade_config(raw, 4)["model"]["copy_continuation"] is False
    assert upgrade_config(raw, 5)["model"]["copy_continuation"] is True
    assert upgrade_config({"model": {"cell": "gru", "copy_continuation": True}}, 4)["model"]["copy_continuation"]
    on, off = random_transformer(), random_transformer(copy_continuation=False)
    assert on.count_params() == off.count_params() + CONTINUATION_TOKENS


def test_a_reply_ends_at_the_decoder_cache_capacity():
    """The cache holds max_output_tokens + 1 positions: from max_output_tokens on, [END] only."""
    model = random_transformer(max_output_tokens=3)
    encoder_outputs, states, source = model.encode(np.array([[5, 6, 7]], np.int32))
    for position in range(6):
        logits, states = model.decode_step(tf.constant([11]), states, encoder_outputs, source)
        assert (int(np.argmax(logits[0])) == END and float(tf.nn.log_softmax(logits)[0, END]) > -1e-6) \
            == (position >= 3), position


def test_the_transformer_scores_replies_given_the_bare_input_as_it_decodes():
    """The unaided rows of the confidence ride along in the transformer's loops as well (each
    row its own key/value cache): the same sums as the teacher-forced call, a reply that reaches
    the 10-token cap included (both give the forced [END] after it log-probability 0)."""
    from test_model import assert_unaided_sums_are_teacher_forced

    tf.random.set_seed(4)
    generator = Generator(random_transformer(max_output_tokens=10), None, DataConfig(),
                          DecodingConfig(max_length=12))
    source = np.array([RETRIEVED, [START] * 13 + [20, 23]], np.int32)
    for max_length in (8, 12):  # under the cap, and past it
        assert_unaided_sums_are_teacher_forced(generator, source, np.array([[20, 22], [20, 23]], np.int32),
                                               max_length=max_length)


def test_the_compiled_loops_decode_the_same_tokens():
    """XLA greedy (input padded to 16) = graph greedy = beam search with one beam; and every
    hypothesis of a wider beam, whose caches are reordered at each step, scores as the
    teacher-forced call scores its tokens."""
    tf.random.set_seed(3)
    model = random_transformer(max_output_tokens=10, layers=1)  # two layers: the test above
    generator = Generator(model, None, DataConfig(), DecodingConfig(max_length=16))
    for source in (np.array([[START]], np.int32), np.array([RETRIEVED], np.int32)):
        config = DecodingConfig(max_length=16)
        assert generator.loops.uses_xla(config, 1)
        ids, total, lengths = (t.numpy() for t in generator.loops.greedy(source, 16, 0))
        want_ids, want_total, want_lengths = (t.numpy() for t in generator.loops.step(source, config, 0))
        one_beam = DecodingConfig(max_length=16, beam=1, length_penalty=0)
        beam_ids, beam_total, beam_lengths, _ = (t.numpy() for t in generator.loops.beam(source, one_beam))
        n = lengths[0]
        assert n == want_lengths[0] == beam_lengths[0, 0] <= 11  # the cap: 10 tokens, then [END]
        assert ids[0, :n].tolist() == want_ids[0, :n].tolist() == beam_ids[0, 0, :n].tolist()
        assert ids[0, n - 1] == END
        np.testing.assert_allclose([total[0], beam_total[0, 0]], [want_total[0]] * 2, rtol=1e-4, atol=1e-4)

        wide = DecodingConfig(max_length=8, beam=3, n_best=3)
        ids, raw, lengths, _ = (t.numpy() for t in generator.loops.beam(source, wide))
        for j in range(3):
            tokens = ids[0, j, :lengths[0, j]]
            decoder_input = np.concatenate([[START], tokens[:-1]])[None].astype(np.int32)
            logprobs = tf.nn.log_softmax(model((source, decoder_input))).numpy()[0]
            np.testing.assert_allclose(raw[0, j], logprobs[np.arange(len(tokens)), tokens].sum(), rtol=1e-4, atol=1e-4)
    assert generator.compiled_widths == {16}


# --- trained through the real pipeline --------------------------------------------------------
# 16 epochs (32 steps): all 20 pairs with seeds 7, 8 and 9; 12 left one answer to another
# question with some batch orders.
TRANSFORMER = {"model.cell": "transformer", "model.units": 64, "model.heads": 4,
               "training.learning_rate": 0.005, "training.epochs": 16}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from chatbot.training.pipeline import train

    out = tmp_path_factory.mktemp("models") / "transformer"
    return train(TINY_PAIRS, tiny_config(**TRANSFORMER), out, verbose=0)


def replies(bundle, tiny_pairs):
    """Replies to the 20 training questions and one it never saw, in one batch."""
    generator = Generator(bundle.model, bundle.tokenizer, bundle.config.data, bundle.config.decoding)
    return generator.generate([[q] for q, _ in tiny_pairs] + [["something it never saw"]])


@pytest.fixture(scope="module")
def trained_replies(trained, tiny_pairs):
    return replies(trained, tiny_pairs)


def test_a_tiny_transformer_learns_its_training_pairs(trained, trained_replies, tiny_pairs):
    """Decoded as one batch, whose rows end at different steps and leave it with their caches."""
    wrong = [(q, a, r.text) for (q, a), r in zip(tiny_pairs, trained_replies) if r.text != a]
    assert not wrong, wrong
    assert trained.metrics["train_exact_match"] == 1.0  # measured through the bot as well


def test_a_batch_of_transformer_replies_that_end_apart_decodes_as_each_input_alone(trained, tiny_pairs):
    """Rows that move to a narrower stage of the XLA greedy loop take their caches with them."""
    from test_model import assert_a_batch_decodes_as_each_input_alone, batch_ending_apart

    generator = Generator(trained.model, trained.tokenizer, trained.config.data, trained.config.decoding)
    assert_a_batch_decodes_as_each_input_alone(generator, batch_ending_apart(tiny_pairs))


def test_a_saved_transformer_loads_to_identical_replies(trained, trained_replies, tiny_pairs, tmp_path):
    from chatbot.model.bundle import Bundle

    trained.save(tmp_path / "copy")
    loaded = Bundle.load(tmp_path / "copy")
    assert loaded.config.model == trained.config.model and loaded.config.model.cell == "transformer"
    again = replies(loaded, tiny_pairs)
    assert [r.text for r in again] == [r.text for r in trained_replies]
    assert [r.score for r in again] == pytest.approx([r.score for r in trained_replies], abs=1e-6)


def test_a_format_4_transformer_bundle_loads_and_replies_as_the_model_it_was(trained, tiny_pairs, tmp_path):
    """A transformer bundle written before format 5: its config says copy_continuation (the
    default), its weights have no bonus. It loads without the bonus, with its own weights."""
    import json
    import shutil

    from chatbot.model.bundle import MANIFEST, WEIGHTS, Bundle, file_sha256

    old = tmp_path / "old"
    shutil.copytree(trained.path, old)
    config = dataclasses.replace(trained.config.model, copy_continuation=False)
    network = build_model(trained.tokenizer.vocab_size, config, trained.config.data.max_output_tokens)
    network.build_for_inference()
    network.save_weights(old / WEIGHTS)
    manifest = json.loads((old / MANIFEST).read_text())
    manifest["format_version"] = 4
    manifest["files"][WEIGHTS] = file_sha256(old / WEIGHTS)
    (old / MANIFEST).write_text(json.dumps(manifest))

    loaded = Bundle.load(old)
    assert not loaded.config.model.copy_continuation and not loaded.model.continuation
    for mine, saved in zip(loaded.model.get_weights(), network.get_weights()):
        np.testing.assert_array_equal(mine, saved)
    assert len(replies(loaded, tiny_pairs)) == len(tiny_pairs) + 1


# --- config --------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, key", [
    ({"model.units": 30, "model.heads": 4}, "model.heads"),
    ({"model.heads": 0}, "model.heads"),
    ({"model.feed_forward": -1}, "model.feed_forward"),
    ({"model.cell": "Transformer"}, "model.cell"),
])
def test_bad_transformer_settings_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"^invalid value for '{key}'"):
        Config().with_overrides({"model.cell": "transformer", **overrides})


def test_the_recurrent_settings_do_not_bind_a_transformer_nor_its_settings_an_rnn():
    config = Config().with_overrides({"model.cell": "transformer"})  # embedding 128, units 256: fine
    assert config.model.embedding_dim != config.model.units
    Config().with_overrides({"model.cell": "transformer", "model.attention": "none"})  # has its own pointer
    Config().with_overrides({"model.units": 30})  # heads 4 do not divide 30: only a transformer cares
    with pytest.raises(ConfigError, match="'model.copy_attention'"):
        Config().with_overrides({"model.attention": "none"})
