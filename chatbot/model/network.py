"""The Keras 3 encoder-decoder.

Luong-style layout: the decoder RNN starts from the encoder's final states, and attention
(when enabled) is applied on top of the decoder's outputs, ``tanh(W [h_t; context_t])``.
Because attention does not feed back into the RNN, teacher-forced training runs the whole
decoder sequence in one call, and inference reuses the same layers one step at a time:

* ``call((source, decoder_input))``: teacher forcing, returns logits ``[B, T, V]``;
* ``encode(source)`` then ``decode_step(token, states, ...)``: what the generator compiles.

With ``copy_attention`` (a pointer-generator, See, Liu & Manning 2017) the output is a mixture:
a learned switch ``p_gen`` weighs the vocabulary distribution against the attention weights
over the retrieved answers in the input, scattered onto their token ids, so a retrieved answer
can be copied token by token, exactly, however long (a word it holds that a word-level
vocabulary lacks is [UNK] there, and so in the copy: subword and character vocabularies spell
every word). Only retrieved answers are copyable (not
the user's question, whose typos would otherwise be copied into replies); an input without
retrieved pairs is pure generation. Source and target share one vocabulary, so no extended
vocabulary is needed. The outputs are then log-probabilities rather than logits; both go
through the same ``log_softmax`` (a no-op on log-probabilities), loss and decode loops.

With ``copy_continuation`` (dot attention and copying) the attention scores get two learned
bonuses: for the answer token that follows the token just emitted, and more for the one that
follows the last two (an answer's first token counts as following [START]). A copy then runs on
through the answer instead of jumping to another occurrence of the same token or back to
generating: what garbled long copies before. The features need only the previous two tokens,
so teacher forcing still runs in one call, and the decode loop carries the token before last
as one more state.

Padding (id 0) is masked explicitly everywhere: the encoder's final state is the state at
the last real token, and attention never looks at padding.

``build_model`` makes this network or, for ``model.cell = "transformer"``, the one in
``chatbot.model.transformer``; both are ``EncoderDecoder``s, so the generator, the training
pipeline and bundles treat them alike.
"""

from __future__ import annotations

import io

import keras
import tensorflow as tf
from keras import layers, ops

from chatbot.config import ModelConfig
from chatbot.files import write_atomically
from chatbot.data.tokenizer import ANS, END, PAD, RET, SEP, START


def _rnn(cell: str, units: int, name: str) -> layers.Layer:
    kind = layers.LSTM if cell == "lstm" else layers.GRU
    return kind(units, return_sequences=True, return_state=True, name=name)


class EncoderDecoder(keras.Model):
    """What every model kind shares: the interface the generator compiles (``call``, ``encode``,
    ``decode_step``, ``vocab_size``, ``stops_at_longest_input``), weights written atomically, and
    building before loading."""

    def save_weights(self, filepath, overwrite=True, max_shard_size=None):
        """Serialise the weights in memory, then write the file with plain I/O, atomically.

        Keras writes ``.weights.h5`` to disk through HDF5, and an HDF5 write that fails (disk
        full, quota) leaves the file half-open: pages of h5py errors, then a segfault at exit.
        A failed plain write is one ``OSError`` and leaves the previous file whole. Keras'
        checkpoint callbacks and ``Bundle.save`` all save through here.
        """
        if max_shard_size is not None or not overwrite or not str(filepath).endswith(".weights.h5"):
            return super().save_weights(filepath, overwrite=overwrite, max_shard_size=max_shard_size)
        # Keras has no public way to save weights into memory; these are what it uses itself.
        from keras.src.saving.saving_lib import H5IOStore, _save_state

        buffer = io.BytesIO()
        store = H5IOStore(buffer, mode="w")
        try:
            _save_state(self, weights_store=store, assets_store=None, inner_path="", visited_saveables=set())
        finally:
            store.close()
        write_atomically(filepath, buffer.getvalue())

    @property
    def stops_at_longest_input(self) -> bool:
        """Whether the encoder's work ends with a batch's longest input, however wide it is padded."""
        return False

    def build_for_inference(self) -> None:
        """Create every weight (needed before loading weights); a built model is left as it is,
        as calling it was (Keras' ``build`` would try to make its weights a second time)."""
        if not self.built:
            self.build(None)


class Seq2Seq(EncoderDecoder):
    def __init__(self, vocab_size: int, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.config = config
        self.states_per_layer = 2 if config.cell == "lstm" else 1
        # A bidirectional encoder's final states are [forward; backward], so the decoder
        # is twice as wide and takes them without an extra projection.
        self.decoder_units = config.units * (2 if config.bidirectional else 1)

        self.embedding = layers.Embedding(vocab_size, config.embedding_dim, name="embedding")
        self.encoder_rnns = []
        for i in range(config.layers):
            rnn = _rnn(config.cell, config.units, f"encoder_{i}")
            if config.bidirectional:
                rnn = layers.Bidirectional(rnn, merge_mode="concat", name=f"encoder_bi_{i}")
            self.encoder_rnns.append(rnn)
        self.decoder_rnns = [_rnn(config.cell, self.decoder_units, f"decoder_{i}")
                             for i in range(config.layers)]
        # The continuation bonus needs the copy switch and dot attention (see the module doc).
        self.continuation = config.copy_continuation and config.copy_attention and config.attention == "dot"
        if self.continuation:
            self.attention = ContinuingAttention(name="attention")
        elif config.attention == "dot":
            self.attention = layers.Attention(name="attention")
        elif config.attention == "additive":
            self.attention = layers.AdditiveAttention(name="attention")
        else:
            self.attention = None
        self.attention_combine = (layers.Dense(self.decoder_units, activation="tanh", name="attention_combine")
                                  if self.attention is not None else None)
        self.dropout = layers.Dropout(config.dropout, name="dropout")
        self.output_projection = layers.Dense(vocab_size, name="output_projection")
        self.copy_switch = (layers.Dense(1, activation="sigmoid", name="copy_switch")
                            if config.copy_attention and self.attention is not None else None)

    def build(self, inputs_shape=None):
        """Every weight, from the configuration alone: without this, Keras finds them by tracing
        the whole ``call`` first (0.3 s each time a model is loaded, and twice in a training)."""
        sequence = (None, None)
        self.embedding.build(sequence)
        width = self.config.embedding_dim
        for rnn in self.encoder_rnns:
            rnn.build((*sequence, width))
            width = self.decoder_units  # what a layer returns, both halves of a bidirectional one
        width = self.config.embedding_dim
        for rnn in self.decoder_rnns:
            rnn.build((*sequence, width))
            width = self.decoder_units
        outputs, both = (*sequence, self.decoder_units), (*sequence, 2 * self.decoder_units)
        if self.attention is not None:  # the query and the encoder's outputs are as wide
            self.attention.build([outputs, outputs])
            self.attention_combine.build(both)
        self.output_projection.build(outputs)
        if self.copy_switch is not None:
            self.copy_switch.build(both)

    # --- encoder -------------------------------------------------------------------------
    @property
    def stops_at_longest_input(self) -> bool:
        return not self.config.bidirectional  # (``rnn_to_longest``; Keras' loop runs the backward half)

    def encode(self, source, training=False):
        """Returns (encoder outputs, flat list of initial decoder states, source ids)."""
        source_mask = ops.not_equal(source, PAD)
        x = self.dropout(self.embedding(source), training=training)
        states = []
        for i, rnn in enumerate(self.encoder_rnns):
            if training or self.config.bidirectional:
                result = rnn(x, mask=source_mask, training=training)
                x, layer_states = result[0], list(result[1:])
            else:  # inference: the same outputs and states, without stepping over the padding
                x, layer_states = rnn_to_longest(rnn, x, source_mask)
            if self.config.bidirectional:
                half = len(layer_states) // 2
                layer_states = [ops.concatenate([f, b], axis=-1)
                                for f, b in zip(layer_states[:half], layer_states[half:])]
            states.extend(layer_states)
            if i + 1 < len(self.encoder_rnns):
                x = self.dropout(x, training=training)
        if self.continuation:  # the token before the last one: none yet
            states.append(ops.full((ops.shape(source)[0], 1), -1, dtype="int32"))
        return x, states, source

    # --- decoder -------------------------------------------------------------------------
    def _layer_states(self, states, i):
        n = self.states_per_layer
        return list(states[i * n:(i + 1) * n])

    def _project(self, decoder_outputs, encoder_outputs, source, training, previous=None):
        """Decoder outputs ``[B, T, units]`` -> logits, or log-probabilities with copying.
        ``previous``: the tokens fed at each step and the ones before them, each ``[B, T]``
        (read by ``copy_continuation``)."""
        if self.attention is None:
            return self.output_projection(self.dropout(decoder_outputs, training=training))
        source_mask = ops.not_equal(source, PAD)
        copying = copy_sources(source) if self.copy_switch is not None else None  # (copyable, ids)
        if self.continuation:  # implies copying
            context, weights = self.attention(decoder_outputs, encoder_outputs, source, copying[0], *previous)
        else:
            context, weights = self.attention([decoder_outputs, encoder_outputs], mask=[None, source_mask],
                                              return_attention_scores=True, training=training)
        combined = self.attention_combine(ops.concatenate([decoder_outputs, context], axis=-1))
        logits = self.output_projection(self.dropout(combined, training=training))
        if self.copy_switch is None:
            return logits
        generate = self.copy_switch(ops.concatenate([decoder_outputs, context], axis=-1))
        return mix_in_copies(logits, generate, weights, *copying, self.vocab_size)

    def call(self, inputs, training=False):
        source, decoder_input = inputs
        encoder_outputs, states, _ = self.encode(source, training=training)
        # No mask on the decoder side: padding only follows the real tokens, so it cannot
        # change their outputs, and the loss ignores padded positions. Skipping the mask
        # saves a select per RNN step.
        x = self.dropout(self.embedding(decoder_input), training=training)
        for i, rnn in enumerate(self.decoder_rnns):
            x = rnn(x, initial_state=self._layer_states(states, i), training=training)[0]
            if i + 1 < len(self.decoder_rnns):
                x = self.dropout(x, training=training)
        previous = fed_tokens(decoder_input, 2) if self.continuation else None
        return self._project(x, encoder_outputs, source, training, previous=previous)

    def decode_step(self, token, states, encoder_outputs, source):
        """One inference step: token ids ``[B]`` -> logits ``[B, V]`` and the new states."""
        x = self.embedding(token)
        new_states = []
        for i, rnn in enumerate(self.decoder_rnns):
            x, layer_states = rnn.cell(x, self._layer_states(states, i), training=False)
            new_states.extend(layer_states if isinstance(layer_states, (list, tuple)) else [layer_states])
        previous = None
        if self.continuation:
            previous, earlier = step_tokens(token, states[-1], 2)
            new_states.append(earlier)
        logits = self._project(ops.expand_dims(x, 1), encoder_outputs, source, False, previous=previous)
        return logits[:, 0, :], new_states


def rnn_to_longest(rnn: layers.RNN, inputs, mask):
    """``rnn(inputs, mask=mask)``'s outputs ``[B, S, D]`` (zeros after the longest input) and
    final states, for right-padded ``inputs``, stepping only as far as the longest input goes.

    Keras' loop steps over every column, and XLA compiles inputs at widths padded to a power of
    two: a third of an input's columns are padding on average, each a step of the recurrent
    cell. Same cell calls and masking as Keras', so the same values (bench/README.md, "The
    encoder stops at the longest input")."""
    if not rnn.built:  # what calling the layer would have done first
        rnn.build(inputs.shape)
    cell = rnn.cell
    batch, width = tf.shape(inputs)[0], tf.shape(inputs)[1]
    steps = tf.maximum(tf.reduce_max(tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)), 1)
    time_major, keep = tf.transpose(inputs, [1, 0, 2]), tf.transpose(mask)[:, :, None]
    sizes = cell.state_size if isinstance(cell.state_size, (list, tuple)) else [cell.state_size]
    states = tuple(tf.zeros([batch, size], inputs.dtype) for size in sizes)  # Keras' initial states
    outputs = tf.TensorArray(inputs.dtype, size=width, element_shape=[None, cell.units])  # unwritten: zeros

    def step(t, outputs, previous, *states):
        output, new_states = cell(time_major[t], list(states), training=False)
        new_states = new_states if isinstance(new_states, (list, tuple)) else [new_states]
        output = tf.where(keep[t], output, previous)  # a row past its end keeps its last output and states
        new_states = tuple(tf.where(keep[t], new, old) for new, old in zip(new_states, states))
        return (t + 1, outputs.write(t, output), output) + new_states

    start = (tf.constant(0), outputs, tf.zeros([batch, cell.units], inputs.dtype)) + states
    _, outputs, _, *states = tf.while_loop(lambda t, *_: t < steps, step, start)
    return tf.transpose(outputs.stack(), [1, 0, 2]), list(states)


class ContinuingAttention(layers.Layer):
    """Dot attention as ``keras.layers.Attention`` computes it, plus ``copy_continuation``'s
    bonus ``w1 * follows(last token) + w2 * follows(last two tokens)`` at each retrieved
    answer's positions. Returns (context ``[B, T, D]``, weights ``[B, T, S]``). The bonus starts
    at 0, so copying on is learned like any weight (started at 2, it let a model trained one
    epoch copy well enough to pass the gates that must fail it)."""

    def build(self, *_):
        self.bonus = self.add_weight(shape=(2,), initializer="zeros", name="bonus")

    def call(self, query, value, source, copyable, last, before_last):
        """``copyable`` ``[B, S]``: the positions a copy may point at (``copy_sources``)."""
        scores = tf.matmul(query, value, transpose_b=True)
        scores += continuation_bonus(self.bonus, source, copyable, (last, before_last), query.dtype)
        scores = tf.where(tf.not_equal(source, PAD)[:, None, :], scores, tf.cast(-1e9, query.dtype))
        weights = tf.nn.softmax(scores, axis=-1)
        return tf.matmul(weights, value), weights


def fed_tokens(decoder_input, count: int) -> list:
    """What ``continuation_bonus`` reads under teacher forcing: the token fed at each step and
    the ``count - 1`` before it, newest first, each ``[B, T]`` (-1: none yet)."""
    decoder_input = tf.cast(decoder_input, tf.int32)
    steps = tf.shape(decoder_input)[1]
    return [tf.pad(decoder_input, [[0, 0], [k, 0]], constant_values=-1)[:, :steps] for k in range(count)]


def step_tokens(token, earlier, count: int):
    """What ``continuation_bonus`` reads at one decode step, from the token fed ``[B]`` and the
    decode state ``earlier`` ``[B, count - 1]`` (the ones before it, newest first): the tokens,
    each ``[B, 1]``, and the state for the next step."""
    earlier = tf.ensure_shape(tf.cast(earlier, tf.int32), [None, count - 1])  # graph loops lose it
    newest_first = tf.concat([tf.cast(token, tf.int32)[:, None], earlier], axis=1)
    return tf.unstack(newest_first[:, :, None], axis=1), newest_first[:, :-1]


def continuation_bonus(bonus, source, copyable, history, dtype):
    """``copy_continuation``'s attention bonus ``[B, T, S]``: at each ``copyable`` ``[B, S]``
    position, ``bonus[0]`` where the token before it is the last one fed (``history[0]``
    ``[B, T]``), plus ``bonus[1]`` where the one before that is also ``history[1]``, and so on:
    the longer the emitted tokens match what precedes a position, the surer the copy goes on
    there. ``history`` holds as many token sequences as ``bonus`` has weights, newest first (-1:
    none yet). An answer's first token follows [ANS], which counts as [START]."""
    source = tf.cast(source, tf.int32)
    marks = tf.where(tf.equal(source, ANS), START, source)
    width = tf.shape(source)[1]
    follows = copyable[:, None, :]
    matched = tf.zeros([], tf.int32)  # how many of the last tokens precede each position [B, T, S]
    for k, tokens in enumerate(history):
        before = tf.pad(marks, [[0, 0], [k + 1, 0]], constant_values=-2)[:, :width]  # the token k + 1 before j
        follows = tf.logical_and(follows, tf.equal(before[:, None, :], tf.cast(tokens, tf.int32)[:, :, None]))
        matched += tf.cast(follows, tf.int32)
    # One lookup rather than a sum of weighted masks: backpropagation keeps one int tensor of
    # the attention's size, not one float mask per weight.
    by_length = tf.concat([tf.zeros([1], dtype), tf.cumsum(tf.cast(bonus, dtype))], axis=0)
    return tf.gather(by_length, matched)


def mix_in_copies(logits, generate, weights, copyable, ids, vocab_size: int):
    """The pointer-generator's log-probabilities ``[B, T, V]``: the vocabulary distribution of
    ``logits`` weighed by the switch ``generate`` ``[B, T, 1]`` against the attention ``weights``
    ``[B, T, S]`` over the ``copyable`` positions ``[B, S]``, scattered onto the ``ids`` they
    copy (both from ``copy_sources``)."""
    generate = ops.cast(generate, "float32")
    vocabulary = ops.softmax(ops.cast(logits, "float32"), axis=-1)
    copyable = ops.cast(copyable, "float32")[:, None, :]  # [B, 1, S]
    weights = ops.cast(weights, "float32") * copyable
    mass = ops.sum(weights, axis=-1, keepdims=True)
    copied = scatter_to_vocabulary(weights / ops.maximum(mass, 1e-9), ids, vocab_size)
    # Nothing to copy (no retrieved pairs): the vocabulary alone.
    generate = ops.where(ops.any(copyable > 0, axis=-1, keepdims=True), generate, 1.0)
    return ops.log(generate * vocabulary + (1.0 - generate) * copied + 1e-9)


def retrieved_answer_positions(source):
    """True at the tokens of retrieved answers in ``[B, S]`` source ids. The input reads
    ``[RET] [SIMn] question [ANS] answer ... [SEP] turns``: a position is inside an answer when
    as many answers have opened ([ANS]) as segments have ([RET], [SEP]) and at least one has."""
    source = tf.cast(source, tf.int32)
    opened = tf.cumsum(tf.cast(tf.equal(source, ANS), tf.int32), axis=1)
    segments = tf.cumsum(tf.cast(tf.logical_or(tf.equal(source, RET), tf.equal(source, SEP)), tf.int32), axis=1)
    return tf.logical_and(tf.logical_and(opened > 0, tf.equal(opened, segments)), tf.not_equal(source, ANS))


def copy_sources(source, copy_end: bool = False):
    """What a pointer may copy from ``[B, S]`` source ids: (mask ``[B, S]``, the id each
    position copies). The retrieved answers' tokens; with ``copy_end``, also the marker that
    closes each answer, copied as [END], so that a copy can end where its answer does."""
    source = tf.cast(source, tf.int32)
    real = tf.not_equal(source, PAD)
    inside = tf.logical_and(retrieved_answer_positions(source), real)
    if not copy_end:
        return inside, source
    ends = tf.logical_and(tf.pad(inside[:, :-1], [[0, 0], [1, 0]]), tf.logical_not(inside))
    ends = tf.logical_and(ends, real)  # an answer cut off by the padding has no marker to copy
    return tf.logical_or(inside, ends), tf.where(ends, END, source)


def scatter_to_vocabulary(weights, source, vocab_size: int):
    """Attention weights ``[B, T, S]`` summed per source token id: ``[B, T, V]``.

    A segment sum over (row, token id) rather than a one-hot matmul: its memory is that of
    the output, not ``B x S x V`` (a long retrieved answer makes S several hundred)."""
    batch, steps, width = tf.shape(weights)[0], tf.shape(weights)[1], tf.shape(weights)[2]
    per_source = tf.reshape(tf.transpose(weights, [0, 2, 1]), [batch * width, steps])
    segments = tf.reshape(tf.cast(source, tf.int32) + vocab_size * tf.range(batch)[:, None], [-1])
    summed = tf.math.unsorted_segment_sum(per_source, segments, batch * vocab_size)
    return tf.transpose(tf.reshape(summed, [batch, vocab_size, steps]), [0, 2, 1])


def masked_accuracy(y_true, y_pred):
    """Token accuracy over real (non-padding) target positions only: the training log's
    figure, a mean of per-batch means (``token_figures`` weighs every token alike)."""
    y_true = ops.cast(y_true, "int32")
    mask = ops.cast(ops.not_equal(y_true, PAD), "float32")
    hits = ops.cast(ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), y_true), "float32")
    return ops.sum(hits * mask) / ops.maximum(ops.sum(mask), 1.0)


def token_figures(model, dataset) -> tuple[float, float]:
    """(cross-entropy per target token, token accuracy) of a teacher-forced ``dataset``, summed
    over its real tokens. Keras' ``evaluate`` averages per-batch means weighted by examples, so
    a batch of long answers counted no more than one of short ones, and perplexity was not
    per token."""
    totals = tf.Variable([0.0, 0.0, 0.0], dtype=tf.float64, trainable=False)  # loss, hits, tokens

    @tf.function(reduce_retracing=True)
    def add(inputs, target):
        target = tf.cast(target, tf.int32)
        scores = tf.cast(model(inputs, training=False), tf.float32)
        real = tf.not_equal(target, PAD)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target, logits=scores)
        hits = tf.logical_and(real, tf.equal(tf.argmax(scores, axis=-1, output_type=tf.int32), target))
        totals.assign_add(tf.cast(tf.stack([tf.reduce_sum(tf.where(real, loss, 0.0)),
                                            tf.reduce_sum(tf.cast(hits, tf.float32)),
                                            tf.reduce_sum(tf.cast(real, tf.float32))]), tf.float64))

    for inputs, target in dataset:
        add(inputs, target)
    loss, hits, tokens = totals.numpy()
    return (float(loss / tokens), float(hits / tokens)) if tokens else (0.0, 0.0)


def build_model(vocab_size: int, config: ModelConfig, max_output_tokens: int) -> EncoderDecoder:
    """The network ``config`` describes. ``max_output_tokens`` (``data.max_output_tokens``) bounds
    a transformer's decoder cache; a recurrent decoder has no such bound."""
    if config.cell == "transformer":
        from chatbot.model.transformer import Transformer  # it builds on this module

        return Transformer(vocab_size, config, max_output_tokens)
    return Seq2Seq(vocab_size, config)


def compile_model(model: EncoderDecoder, learning_rate: float, clipnorm: float, ema_momentum: float = 0.0) -> None:
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate, clipnorm=clipnorm or None,
                                      use_ema=ema_momentum > 0, ema_momentum=ema_momentum or 0.99)
    # ignore_class rescales the mean over real tokens only, so padding never counts.
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD)
    model.compile(optimizer=optimizer, loss=loss, metrics=[masked_accuracy], jit_compile=False)
