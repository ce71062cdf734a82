"""A Transformer encoder-decoder (Vaswani et al. 2017) behind ``Seq2Seq``'s interface, so the
generator's three compiled loops, training and bundles take it as they are.

``units`` is the model width, ``layers`` the number of encoder layers and of decoder layers,
``heads`` the attention heads, ``feed_forward`` the width of each feed-forward block (0: 4 x
units); ``embedding_dim``, ``attention`` and ``bidirectional`` are recurrent settings and
ignored here (the token embeddings are ``units`` wide).

Layers are pre-norm (layer normalisation before each sublayer, a final one after the stack):
unlike the original post-norm layout they train without a learning-rate warm-up, which the
training pipeline does not have. Positions are sinusoidal, not learned: no weights, so the
encoder reads an input of any length the tokenizer lets through (``data.max_input_tokens``
plus the retrieved pairs) and ``data.max_output_tokens`` can change without changing the
weights (fine-tuning with another value keeps them).

Decoding is incremental. ``encode`` projects the encoder outputs to every decoder layer's
cross-attention keys and values once; they travel as the "encoder outputs", one tensor
``[B, S, parts, units]``. The decoder states are the position ``[B]`` and each layer's
self-attention keys and values so far, ``[B, capacity, units]`` each, so one step projects
only the new token. Every state is batch-first with a static shape apart from the batch, as
the loops need (XLA compiles them; beams gather them; finished rows are masked out of them).
Keras' ``MultiHeadAttention`` keeps its projections private and has no cache, so the decoder
attends with ``CachedAttention`` (Keras ``Dense`` projections); the encoder, which needs no
cache, uses ``MultiHeadAttention``.

The cache holds ``data.max_output_tokens + 1`` positions, one more than the longest decoder
input trained on: a reply ends with [END] after ``data.max_output_tokens`` tokens at most,
whatever ``decoding.max_length`` asks (``decode_step`` forces it; a ``decoding.min_length``
beyond that cannot be honoured).

With ``copy_attention`` the output mixes in copies of the retrieved answers' tokens exactly as
``Seq2Seq`` does (``mix_in_copies``), through a dedicated single-head pointer attention from
the final decoder output over the final encoder outputs, restricted to those tokens. A
dedicated head rather than the last cross-attention averaged over heads: the heads learn to
gather context from the question and retrieved questions too, and their average spreads the
pointer over all of it, while a copy must be sharp on the one next token of one answer.
With ``copy_continuation`` the pointer's scores get a learned bonus for each answer position
that follows the last ``CONTINUATION_TOKENS`` tokens emitted, one weight per matched length
(``continuation_bonus``; ``Seq2Seq`` matches two), and the marker closing each answer can be
copied as [END] (``copy_sources``). Without them the pointer lost its place in runs of
identical tokens (indentation, "Hawaii"): it cannot count, and it had no way to point at an
answer's end (5 of 69 answers over 64 tokens came out exact, bench/README.md). The decode loop
carries the tokens before the last one as the last state.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import layers

from chatbot.config import ModelConfig
from chatbot.data.tokenizer import END, PAD
from chatbot.model.network import (EncoderDecoder, continuation_bonus, copy_sources, fed_tokens, mix_in_copies,
                                   step_tokens)

MASKED = -1e9  # an attention score that softmax turns into 0 (finite: a row all masked stays finite)
# How many of the last tokens emitted the continuation bonus matches: 16 tells apart the runs of
# space tokens that indent code 8 or 12 spaces (8 did not, bench/README.md).
CONTINUATION_TOKENS = 16


class ContinuationBonus(layers.Layer):
    """The weights of ``continuation_bonus``, one per matched length, learned from 0 as
    ``ContinuingAttention``'s are."""

    def build(self, *_):
        self.bonus = self.add_weight(shape=(CONTINUATION_TOKENS,), initializer="zeros", name="bonus")

    def call(self, source, copyable, history):
        return continuation_bonus(self.bonus, source, copyable, history, tf.float32)


def sinusoid(positions, width: int):
    """Position encodings ``[..., width]`` for int ``positions``: sines and cosines of
    ``position / 10000 ** (2i / width)``."""
    half = (width + 1) // 2
    rates = tf.pow(10000.0, -2.0 * tf.range(half, dtype=tf.float32) / width)
    angles = tf.cast(positions, tf.float32)[..., None] * rates
    return tf.concat([tf.sin(angles), tf.cos(angles)], axis=-1)[..., :width]


class CachedAttention(layers.Layer):
    """Multi-head scaled dot-product attention whose keys and values are projected apart from
    the queries (``keys_values``), so that they can be computed once and kept."""

    def __init__(self, units: int, heads: int, **kwargs):
        super().__init__(**kwargs)
        self.heads = heads
        self.depth = units // heads
        self.query = layers.Dense(units, name="query")
        self.key = layers.Dense(units, name="key")
        self.value = layers.Dense(units, name="value")
        self.output_dense = layers.Dense(units, name="output")

    def build(self, input_shape):
        for dense in (self.query, self.key, self.value, self.output_dense):
            dense.build(input_shape)

    def keys_values(self, x):
        """``[B, S, units]`` -> projected keys and values, each ``[B, S, units]``."""
        return self.key(x), self.value(x)

    def _split(self, x):
        shape = tf.shape(x)
        return tf.reshape(x, [shape[0], shape[1], self.heads, self.depth])

    def call(self, x, keys, values, visible):
        """Queries from ``x`` ``[B, T, units]`` over projected ``keys``/``values``
        ``[B, S, units]``; ``visible``: bool ``[B or 1, T or 1, S]``."""
        q = self._split(self.query(x))
        scores = tf.einsum("bthd,bshd->bhts", q, self._split(keys)) / math.sqrt(self.depth)
        scores = tf.where(visible[:, None], tf.cast(scores, tf.float32), MASKED)
        weights = tf.cast(tf.nn.softmax(scores, axis=-1), q.dtype)
        context = tf.einsum("bhts,bshd->bthd", weights, self._split(values))
        shape = tf.shape(x)
        return self.output_dense(tf.reshape(context, [shape[0], shape[1], self.heads * self.depth]))


class FeedForward(layers.Layer):
    def __init__(self, units: int, width: int, dropout: float, **kwargs):
        super().__init__(**kwargs)
        self.inner = layers.Dense(width, activation="relu", name="inner")
        self.outer = layers.Dense(units, name="outer")
        self.dropout = layers.Dropout(dropout)

    def build(self, input_shape):
        self.inner.build(input_shape)
        self.outer.build((*input_shape[:-1], self.inner.units))

    def call(self, x, training=False):
        return self.outer(self.dropout(self.inner(x), training=training))


class EncoderLayer(layers.Layer):
    def __init__(self, units: int, heads: int, width: int, dropout: float, **kwargs):
        super().__init__(**kwargs)
        self.attention_norm = layers.LayerNormalization(epsilon=1e-6, name="attention_norm")
        self.attention = layers.MultiHeadAttention(heads, units // heads, name="attention")
        self.feed_forward_norm = layers.LayerNormalization(epsilon=1e-6, name="feed_forward_norm")
        self.feed_forward = FeedForward(units, width, dropout, name="feed_forward")
        self.dropout = layers.Dropout(dropout)

    def build(self, input_shape):
        self.attention_norm.build(input_shape)
        self.attention.build(input_shape, input_shape)
        self.feed_forward_norm.build(input_shape)
        self.feed_forward.build(input_shape)

    def call(self, x, visible, training=False):
        h = self.attention_norm(x)
        x = x + self.dropout(self.attention(h, h, attention_mask=visible, training=training), training=training)
        h = self.feed_forward_norm(x)
        return x + self.dropout(self.feed_forward(h, training=training), training=training)


class DecoderLayer(layers.Layer):
    def __init__(self, units: int, heads: int, width: int, dropout: float, **kwargs):
        super().__init__(**kwargs)
        self.self_attention_norm = layers.LayerNormalization(epsilon=1e-6, name="self_attention_norm")
        self.self_attention = CachedAttention(units, heads, name="self_attention")
        self.cross_attention_norm = layers.LayerNormalization(epsilon=1e-6, name="cross_attention_norm")
        self.cross_attention = CachedAttention(units, heads, name="cross_attention")
        self.feed_forward_norm = layers.LayerNormalization(epsilon=1e-6, name="feed_forward_norm")
        self.feed_forward = FeedForward(units, width, dropout, name="feed_forward")
        self.dropout = layers.Dropout(dropout)

    def build(self, input_shape):
        for layer in (self.self_attention_norm, self.self_attention, self.cross_attention_norm, self.cross_attention,
                      self.feed_forward_norm, self.feed_forward):
            layer.build(input_shape)

    def call(self, x, visible, cross_keys, cross_values, source_visible, cache=None, training=False):
        """``x`` ``[B, T, units]`` -> (output, this layer's self-attention keys and values).
        Teacher forcing: ``visible`` is the causal mask over ``x``'s own positions. One step
        (``cache``: keys, values and the (row, slot) pairs ``[B, 2]`` to write): ``x`` is one
        position, written into the cache in place, and ``visible`` covers the cache's slots."""
        h = self.self_attention_norm(x)
        keys, values = self.self_attention.keys_values(h)
        if cache is not None:
            cached_keys, cached_values, slot = cache
            keys = tf.tensor_scatter_nd_update(cached_keys, slot, keys[:, 0])
            values = tf.tensor_scatter_nd_update(cached_values, slot, values[:, 0])
        x = x + self.dropout(self.self_attention(h, keys, values, visible), training=training)
        h = self.cross_attention_norm(x)
        x = x + self.dropout(self.cross_attention(h, cross_keys, cross_values, source_visible),
                             training=training)
        h = self.feed_forward_norm(x)
        return x + self.dropout(self.feed_forward(h, training=training), training=training), (keys, values)


class Transformer(EncoderDecoder):
    def __init__(self, vocab_size: int, config: ModelConfig, max_output_tokens: int, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.config = config
        self.units = config.units
        self.max_output_tokens = max_output_tokens
        self.capacity = max_output_tokens + 1  # decoder positions cached
        width = config.feed_forward or 4 * config.units
        args = (config.units, config.heads, width, config.dropout)
        # Unit variance once scaled by sqrt(units), as the positions have: Keras' default
        # (uniform +-0.05) leaves the tokens drowned by their positions, and learning slow.
        self.embedding = layers.Embedding(vocab_size, config.units, name="embedding",
                                          embeddings_initializer=keras.initializers.RandomNormal(
                                              stddev=config.units ** -0.5))
        self.encoder_layers = [EncoderLayer(*args, name=f"encoder_{i}") for i in range(config.layers)]
        self.encoder_norm = layers.LayerNormalization(epsilon=1e-6, name="encoder_norm")
        self.decoder_layers = [DecoderLayer(*args, name=f"decoder_{i}") for i in range(config.layers)]
        self.decoder_norm = layers.LayerNormalization(epsilon=1e-6, name="decoder_norm")
        self.dropout = layers.Dropout(config.dropout, name="dropout")
        self.output_projection = layers.Dense(vocab_size, name="output_projection")
        self.copying = config.copy_attention
        if self.copying:
            self.copy_query = layers.Dense(config.units, use_bias=False, name="copy_query")
            self.copy_key = layers.Dense(config.units, use_bias=False, name="copy_key")
            self.copy_switch = layers.Dense(1, activation="sigmoid", name="copy_switch")
        self.continuation = self.copying and config.copy_continuation
        if self.continuation:
            self.copy_continuation = ContinuationBonus(name="copy_continuation")

    def build(self, inputs_shape=None):
        """Every weight, from the configuration alone (``Seq2Seq.build`` says why)."""
        sequence = (None, None, self.units)
        self.embedding.build((None, None))
        for layer in (*self.encoder_layers, self.encoder_norm, *self.decoder_layers, self.decoder_norm,
                      self.output_projection):
            layer.build(sequence)
        if self.copying:
            self.copy_query.build(sequence)
            self.copy_key.build(sequence)
            self.copy_switch.build((None, None, 2 * self.units))
        if self.continuation:
            self.copy_continuation.build()

    def _embed(self, ids, positions, training):
        x = self.embedding(ids) * math.sqrt(self.units)
        x += tf.cast(sinusoid(positions, self.units), x.dtype)
        return self.dropout(x, training=training)

    # --- encoder -------------------------------------------------------------------------
    def _encode(self, source, training):
        """The encoder's outputs ``[B, S, units]`` and what the decoder reads of them: each
        layer's cross-attention (keys, values), and the pointer's keys when copying."""
        x = self._embed(source, tf.range(tf.shape(source)[1])[None, :], training)
        visible = tf.not_equal(source, PAD)[:, None, :]
        for layer in self.encoder_layers:
            x = layer(x, visible, training=training)
        memory = self.encoder_norm(x)
        cross = [layer.cross_attention.keys_values(memory) for layer in self.decoder_layers]
        return memory, cross, self.copy_key(memory) if self.copying else None

    def encode(self, source, training=False):
        """Returns (encoder outputs, flat list of initial decoder states, source ids). The
        encoder outputs are the parts ``_encode`` returns, stacked: ``[B, S, parts, units]``."""
        memory, cross, copy_keys = self._encode(source, training)
        parts = [tensor for pair in cross for tensor in pair]
        if self.copying:
            parts += [memory, copy_keys]
        batch = tf.shape(source)[0]
        empty = tf.zeros([batch, self.capacity, self.units], memory.dtype)
        states = [tf.zeros([batch], tf.int32)] + [empty] * (2 * len(self.decoder_layers))
        if self.continuation:  # the tokens before the last one, newest first: none yet
            states.append(tf.fill([batch, CONTINUATION_TOKENS - 1], -1))
        return tf.stack(parts, axis=2), states, source

    def _unstack(self, encoder_outputs):
        count = len(self.decoder_layers)
        # The graph loops let every shape vary: say again what is static.
        parts = tf.unstack(tf.ensure_shape(encoder_outputs, [None, None, 2 * count + 2 * self.copying, self.units]),
                           axis=2)
        cross = [(parts[2 * i], parts[2 * i + 1]) for i in range(count)]
        return (parts[2 * count], cross, parts[2 * count + 1]) if self.copying else (None, cross, None)

    # --- decoder -------------------------------------------------------------------------
    def _project(self, x, memory, copy_keys, source, training, history=()):
        """Final decoder outputs ``[B, T, units]`` -> logits, or log-probabilities with copying.
        ``history``: the tokens fed at each step and the ``CONTINUATION_TOKENS - 1`` before them,
        newest first, each ``[B, T]`` (read by ``copy_continuation``)."""
        logits = self.output_projection(self.dropout(x, training=training))
        if not self.copying:
            return logits
        copyable, ids = copy_sources(source, copy_end=self.continuation)
        scores = tf.cast(tf.einsum("btd,bsd->bts", self.copy_query(x), copy_keys), tf.float32) / math.sqrt(self.units)
        if self.continuation:
            scores += self.copy_continuation(source, copyable, history)
        weights = tf.nn.softmax(tf.where(copyable[:, None, :], scores, MASKED), axis=-1)
        context = tf.einsum("bts,bsd->btd", tf.cast(weights, memory.dtype), memory)
        generate = self.copy_switch(tf.concat([x, context], axis=-1))
        return mix_in_copies(logits, generate, weights, copyable, ids, self.vocab_size)

    def call(self, inputs, training=False):
        source, decoder_input = inputs
        memory, cross, copy_keys = self._encode(source, training)
        steps = tf.range(tf.shape(decoder_input)[1])
        x = self._embed(decoder_input, steps[None, :], training)
        causal = (steps[:, None] >= steps[None, :])[None]  # [1, T, T]
        source_visible = tf.not_equal(source, PAD)[:, None, :]
        for layer, (keys, values) in zip(self.decoder_layers, cross):
            x, _ = layer(x, causal, keys, values, source_visible, training=training)
        history = fed_tokens(decoder_input, CONTINUATION_TOKENS) if self.continuation else ()
        logits = self._project(self.decoder_norm(x), memory, copy_keys, source, training, history)
        # Scoring a decoded reply sees what decoding saw: only [END] past the cap. (Training never
        # reaches it: its targets are at most max_output_tokens long.)
        return logits if training else self._ends_at_cap(logits, steps[None, :])

    def _ends_at_cap(self, logits, positions):
        """From ``max_output_tokens`` on, a reply ends: at those ``positions`` (``logits``' shape
        without the vocabulary) only [END] is possible."""
        end_only = tf.cast(tf.where(tf.equal(tf.range(self.vocab_size), END), 0.0, MASKED), logits.dtype)
        return tf.where((positions >= self.max_output_tokens)[..., None], end_only, logits)

    def decode_step(self, token, states, encoder_outputs, source):
        """One inference step: token ids ``[B]`` -> logits ``[B, V]`` and the new states. The
        token at ``position`` is written into each layer's cache slot ``position``; from
        ``max_output_tokens`` on, the reply ends ([END] only)."""
        position = states[0]
        caches = [tf.ensure_shape(cache, [None, self.capacity, self.units])
                  for cache in states[1:1 + 2 * len(self.decoder_layers)]]
        memory, cross, copy_keys = self._unstack(encoder_outputs)
        x = self._embed(token[:, None], position[:, None], False)
        slots = tf.range(self.capacity)[None, :]
        # (row, position) to write. Decoding goes past the cache only where min_length forbids
        # the forced [END]; those positions overwrite the last slot (out of range is an error).
        slot = tf.stack([tf.range(tf.shape(position)[0]), tf.minimum(position, self.capacity - 1)], axis=1)
        visible = (slots <= position[:, None])[:, None, :]  # [B, 1, capacity]
        source_visible = tf.not_equal(source, PAD)[:, None, :]
        new_states = [position + 1]
        for i, (layer, (keys, values)) in enumerate(zip(self.decoder_layers, cross)):
            x, cache = layer(x, visible, keys, values, source_visible,
                             cache=(caches[2 * i], caches[2 * i + 1], slot))
            new_states.extend(cache)
        history = ()
        if self.continuation:
            history, earlier = step_tokens(token, states[-1], CONTINUATION_TOKENS)
            new_states.append(earlier)
        logits = tf.cast(self._project(self.decoder_norm(x), memory, copy_keys, source, False, history)[:, 0, :],
                         tf.float32)
        return self._ends_at_cap(logits, position), new_states
