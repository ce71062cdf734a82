"""model.copy_continuation: the attention bonus that keeps a copy running through a retrieved answer."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from chatbot.config import ModelConfig
from chatbot.data.tokenizer import ANS, PAD, RET, SEP, SIM_TOKENS, START
from chatbot.model.network import ContinuingAttention, Seq2Seq, copy_sources

VOCAB = 60
# [RET] [SIM] question [ANS] answer [RET] [SIM] question [ANS] answer [SEP] question, then padding
SOURCE = np.array([
    [RET, SIM_TOKENS[3], 20, 21, ANS, 30, 31, 32, 30, 33, RET, SIM_TOKENS[1], 22, ANS, 40, 41, SEP, 20, 21, PAD],
    [RET, SIM_TOKENS[2], 23, ANS, 50, 51, SEP, 23, 24, PAD, PAD, PAD, PAD, PAD, PAD, PAD, PAD, PAD, PAD, PAD],
], np.int32)


def model(**overrides) -> Seq2Seq:
    tf.random.set_seed(3)
    network = Seq2Seq(VOCAB, ModelConfig(**{"embedding_dim": 8, "units": 16, **overrides}))
    network.build_for_inference()
    return network


def copyable() -> tf.Tensor:
    """The positions of SOURCE a copy may point at, as the network hands them to the layer."""
    return copy_sources(tf.constant(SOURCE))[0]


def bonus_positions(last: int, before_last: int, row: int = 0) -> list[int]:
    """Source positions where the bonus lands after emitting ``before_last``, ``last``."""
    layer = ContinuingAttention()
    width = SOURCE.shape[1]
    query, value = tf.zeros([2, 1, 4]), tf.zeros([2, width, 4])  # all scores 0 but the bonus
    layer.build()
    layer.bonus.assign([1.0, 10.0])
    _, weights = layer(query, value, tf.constant(SOURCE), copyable(), tf.constant([[last]] * 2),
                       tf.constant([[before_last]] * 2))
    scores = np.log(weights.numpy()[row, 0] + 1e-30)
    base = scores[SOURCE[row] != PAD].min()
    return [int(j) for j in np.flatnonzero(scores > base + 0.5)]


def test_the_first_step_favours_the_first_token_of_each_retrieved_answer():
    assert bonus_positions(START, -1) == [5, 14]


def test_the_token_after_the_last_one_copied_is_favoured_within_answers_only():
    # 30 occurs twice in the first answer (positions 5 and 8): both successors get the 1-gram bonus;
    # the question's 20 (position 17) is not in an answer, so nothing after it is favoured.
    assert bonus_positions(30, -1) == [6, 9]
    assert bonus_positions(20, -1) == []


def test_the_last_two_tokens_pick_the_right_occurrence():
    # Both 6 and 9 follow a 30; only 6 follows "[START] 30" (the answer's first two tokens).
    layer = ContinuingAttention()
    layer.build()
    layer.bonus.assign([1.0, 10.0])
    width = SOURCE.shape[1]
    _, weights = layer(tf.zeros([2, 1, 4]), tf.zeros([2, width, 4]), tf.constant(SOURCE), copyable(),
                       tf.constant([[30]] * 2), tf.constant([[START]] * 2))
    assert weights.numpy()[0, 0, 6] > 100 * weights.numpy()[0, 0, 9]


def test_without_the_bonus_it_is_keras_dot_attention():
    width = SOURCE.shape[1]
    rng = np.random.default_rng(0)
    query = tf.constant(rng.standard_normal((2, 3, 8)), tf.float32)
    value = tf.constant(rng.standard_normal((2, width, 8)), tf.float32)
    layer = ContinuingAttention()
    layer.build()
    layer.bonus.assign([0.0, 0.0])
    previous = tf.constant([[START, 30, 31]] * 2)
    context, weights = layer(query, value, tf.constant(SOURCE), copyable(), previous, previous)
    mask = tf.constant(SOURCE != PAD)
    expected_context, expected_weights = tf.keras.layers.Attention()(
        [query, value], mask=[None, mask], return_attention_scores=True)
    np.testing.assert_allclose(weights.numpy(), expected_weights.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(context.numpy(), expected_context.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_step_decoding_carries_the_token_before_last_as_teacher_forcing_does(cell):
    """The decode loop's extra state must reproduce training's view of the previous two tokens."""
    network = model(cell=cell)
    assert network.continuation
    network.attention.bonus.assign([3.0, 4.0])
    decoder_input = np.array([[START, 30, 31, 32, 30], [START, 50, 51, 23, 24]], np.int32)
    full = network((SOURCE, decoder_input), training=False).numpy()
    encoder_outputs, states, source = network.encode(SOURCE)
    for t in range(decoder_input.shape[1]):
        logits, states = network.decode_step(decoder_input[:, t], states, encoder_outputs, source)
        np.testing.assert_allclose(logits.numpy(), full[:, t, :], rtol=1e-4, atol=1e-5)


def test_the_bonus_is_a_trained_weight_and_off_means_keras_attention():
    on, off = model(), model(copy_continuation=False)
    assert on.count_params() == off.count_params() + 2
    assert not off.continuation and isinstance(off.attention, tf.keras.layers.Attention)
    assert not model(attention="additive").continuation  # the bonus is defined for dot attention
    assert not model(copy_attention=False).continuation
