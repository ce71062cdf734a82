"""The compiled decode loops over one network: encode once, then one decoder step at a time
inside a ``tf.function``, so no Python runs per generated token.

* ``greedy``: greedy decoding of up to ``XLA_MAX_BATCH`` inputs as one XLA program, in stages
  that shrink as replies end;
* ``step``: greedy decoding and sampling (temperature, top-k, top-p) for a batch of any size, a
  graph loop, chosen per call by a boolean tensor; it also runs the repetition controls;
* ``beam``: beam search with a GNMT length penalty and an n-best list, a graph loop; and
  ``beam_xla``, the same for a few inputs as one XLA program, without repetition controls;
* ``scores``: how likely the model finds given answers (teacher forced), for re-ranking and
  the confidence of beam searches.

The confidence also asks how likely each reply is given its input without the retrieved pairs.
The greedy and sampling loops answer that as they decode: the bare inputs ride along as more rows
of the same batch, fed the tokens the real rows choose (in an XLA batch encoded in a call of their
own, which ends with the longest bare input: ``_encoded_with_bare_rows``). That adds nothing
measurable to the greedy loop's time for one question and 40% for eight, where a teacher-forced
pass over the replies afterwards added 60% (bench/README.md, "The unaided pass in the loop").
Beam search scores its n-best afterwards: bare rows would follow every hypothesis.

A reply decoded one step at a time is mostly per-step overhead: one GRU step is a few MFLOP,
but the graph loop runs dozens of small kernels, conditionals and bookkeeping ops per token.
XLA fuses the whole loop into a few kernels: about 3x faster per reply at batch 1 (bench/
decode_latency.py). XLA needs static shapes, so its loops take the input padded to a
power-of-two width and batch (padding is masked, so the tokens are the same; a test compares
them) and write into a history ``capacity`` long: they compile once per shape used (at most
``log2`` of the longest input per batch size), never per question.

The two graph loops run on one skeleton, ``_decode_until_done``, which owns the bookkeeping
they share (inputs that finish are written out and leave the running batch), so each loop body
holds only its strategy. Every loop takes a fixed signature (``[batch, time]`` int32 source ids
and scalar tensors for every setting, including the max length), so each is traced once and
never per question or per setting. Repetition control (``no_repeat_ngram_size``,
``repetition_penalty``, ``min_length``) is shared by both graph loops.

Scores are always computed from the model's own log-probabilities (temperature 1, no
penalties), so they stay comparable across strategies and settings.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from chatbot.config import DecodingConfig
from chatbot.data.tokenizer import END, PAD, START
from chatbot.model.network import EncoderDecoder

NEG_INF = float("-inf")
SCORE_BATCH = 64  # answers scored per forward pass
XLA_MIN_WIDTH = 16  # the narrowest input ``_greedy_loop`` is compiled for (widths double from it)
# Batches up to this size decode greedily in ``_greedy_loop`` too (a server's requests that
# arrived together), in shrinking stages so that few rows run on after they end.
# Larger batches take the graph loops, which drop rows as they end with no compilation per
# shape: staged XLA programs compile for seconds each (bench/README.md, "shrinking stages").
XLA_MAX_BATCH = 8
XLA_MAX_BEAM = 8  # wider beams take the graph loop


def xla_width(width: int) -> int:
    """The padded width an input of ``width`` tokens is decoded at by ``_greedy_loop``."""
    return max(XLA_MIN_WIDTH, 1 << (max(width, 1) - 1).bit_length())


def xla_padded(source: np.ndarray, width: int | None = None) -> np.ndarray:
    """``source`` padded to its XLA width (or ``width``) and batch. The padding rows copy the
    first input, so they end with it and cost the loop no extra steps."""
    rows, columns = source.shape
    padded = np.zeros((xla_batch(rows), width or xla_width(columns)), np.int32)
    padded[:, :columns] = source[0]
    padded[:rows, :columns] = source
    return padded


def greedy_shape(rows: int, width: int, bare_width: int | None, bare_as_wide: bool = False) -> tuple[int, int, int]:
    """The (batch, width, bare width) ``_greedy_loop`` decodes ``rows`` inputs ``width`` wide
    at, with bare inputs ``bare_width`` wide (None: none; 0 in the result). One input encodes
    its bare row beside it, at its width. A batch's bare inputs are padded as wide as the others
    too when that costs their encoder nothing (``bare_as_wide``: a recurrent encoder stops at the
    longest input), for one program per batch and width; else to their own width."""
    batch = xla_batch(rows)
    if bare_width is None:
        return batch, xla_width(width), 0
    padded = xla_width(max(width, bare_width))
    return batch, padded, padded if batch == 1 or bare_as_wide else xla_width(bare_width)


def xla_batch(rows: int) -> int:
    """The padded batch ``rows`` inputs are decoded in by ``_greedy_loop``: a power of two, so
    that it is compiled for a few batch sizes only."""
    return 1 << (max(rows, 1) - 1).bit_length()


def padded_rows(rows: Sequence[Sequence[int]]) -> np.ndarray:
    """Id rows of any lengths as one int32 matrix, [PAD] after each to the longest (at least 1 wide)."""
    width = max(1, max((len(row) for row in rows), default=0))
    return keras.utils.pad_sequences(rows, maxlen=width, dtype="int32", padding="post", value=PAD)


def _scalar(dtype) -> tf.TensorSpec:
    return tf.TensorSpec([], dtype)


def _decode_until_done(batch, max_length, outputs, search, decoder, advance, results,
                       rows_per_input=None, stacked=1):
    """Step ``advance`` until every input is done or ``max_length`` steps have run; returns
    ``outputs`` (``batch`` rows each) with every input's ``results`` written to its row.

    ``search`` holds per-input tensors, ``decoder`` per-row ones (token, states, encoder
    outputs: ``rows_per_input`` rows per input, one when None; ``stacked`` such blocks one after
    another: the inputs, then their bare rows). ``advance(step, search,
    decoder)`` returns both updated and a ``done`` mask over the inputs. Done inputs are
    written out at once (``results(steps, search)``: one tensor per output, by input) and
    leave the batch, so later steps cost only what still runs; inputs running at
    ``max_length`` are written as they stand. The batch shrinks, so no shape is invariant.
    """
    def write(index, done, steps, search, outputs):
        where = tf.boolean_mask(index, done)[:, None]
        return tuple(tf.tensor_scatter_nd_update(out, where, tf.boolean_mask(value, done))
                     for out, value in zip(outputs, results(steps, search)))

    def body(step, index, search, decoder, outputs):
        search, decoder, done = advance(step, search, decoder)
        steps = step + 1

        def drop_done():
            keep = tf.logical_not(done)
            keep_rows = keep if rows_per_input is None else tf.repeat(keep, rows_per_input)
            keep_rows = tf.tile(keep_rows, [stacked]) if stacked > 1 else keep_rows
            mask = lambda tensors, kept: tf.nest.map_structure(  # noqa: E731
                lambda t: tf.boolean_mask(t, kept), tensors)
            return (mask(index, keep), mask(search, keep), mask(decoder, keep_rows),
                    write(index, done, steps, search, outputs))

        def keep_all():
            return index, search, decoder, outputs

        return (steps, *tf.cond(tf.reduce_any(done), drop_done, keep_all))

    def running(step, index, *_):
        return tf.logical_and(step < max_length, tf.size(index) > 0)

    unknown = lambda t: tf.TensorShape([None] * len(t.shape))  # noqa: E731
    loop_vars = (tf.constant(0), tf.range(batch), search, decoder, outputs)
    step, index, search, _, outputs = tf.while_loop(
        running, body, loop_vars, shape_invariants=tf.nest.map_structure(unknown, loop_vars))
    return write(index, tf.ones_like(index, tf.bool), step, search, outputs)


def _padded_to(width, t):
    """``t`` ``[B, S, ...]`` padded with zeros (ids: [PAD]) along ``S`` to ``width``."""
    return tf.pad(t, [[0, 0], [0, width - tf.shape(t)[1]]] + [[0, 0]] * (len(t.shape) - 2))


def _encoded_with_bare_rows(model, source, bare, one_input: bool):
    """``model.encode``'s (outputs, states, source ids) for ``source`` then, as more rows, for
    ``bare`` (padding ids are masked, so what a row decodes is the same as unpadded). A batch
    encodes its bare inputs in a call of their own, which ends long before the inputs with
    retrieved pairs do (``greedy_shape``), then pads their outputs to ``source``'s width. One
    input encodes both rows in one call: there the second row costs nothing and a second call
    does."""
    width = tf.shape(source)[1]
    if one_input:
        return model.encode(tf.concat([source, _padded_to(width, bare)], axis=0), training=False)
    outputs, states, ids = model.encode(source, training=False)
    bare_outputs, bare_states, bare_ids = model.encode(bare, training=False)
    return (tf.concat([outputs, _padded_to(width, bare_outputs)], axis=0),
            [tf.concat(pair, axis=0) for pair in zip(states, bare_states)],
            tf.concat([ids, _padded_to(width, tf.cast(bare_ids, ids.dtype))], axis=0))


def xla_stages(batch: int) -> int:
    """The stages ``_greedy_loop`` decodes a batch of ``batch`` rows in: that size, then a
    quarter of it, and so on down to one row (8, 2, 1: three). Each stage is code of its own
    to compile; halving instead would leave fewer idle rows running but compile more stages."""
    stages = 1
    while batch > 1:
        batch, stages = max(batch // 4, 1), stages + 1
    return stages


def _shrinking_stages(step_over, max_length, batch, search, decoder, results, stages, stacked=1):
    """Run an XLA greedy step (``step_over(encoder outputs, source ids)`` gives the loop body over
    those rows) in ``stages`` loops of shrinking batch. A stage runs until no more of its rows run
    than the next stage holds (a quarter as many, at least one; the last stage until all are
    done); then its rows are written to ``results`` (by input, from ``search``'s history, total,
    lengths and bare total), and the rows still running, first, move on. Sizes are static for XLA
    (they follow from the batch's shape). ``_decode_until_done`` does the same for the graph
    loops at every step, with boolean masks: shapes there may change at will.

    ``search``: per-input (history, total, lengths, done, bare total); ``decoder``: per-row
    (token, states, encoder outputs, source ids), ``stacked`` blocks of ``batch`` rows."""
    origin = tf.range(batch)  # each row's input
    step = tf.constant(0)
    for stage in range(stages):
        size = tf.shape(origin)[0]
        last = stage == stages - 1
        next_size = 0 if last else tf.maximum(size // 4, 1)

        def running(step, token, states, history, total, lengths, done, *_):
            alive = tf.reduce_sum(tf.cast(tf.logical_not(done), tf.int32))
            return tf.logical_and(step < max_length, alive > next_size)

        token, states, encoder_outputs, source_ids = decoder
        step, token, states, *search = tf.while_loop(
            running, step_over(encoder_outputs, source_ids), (step, token, states, *search))
        history, total, lengths, done, bare_total = search
        if stages == 1:
            return history, total, lengths, bare_total
        results = tuple(tf.tensor_scatter_nd_update(out, origin[:, None], value)
                        for out, value in zip(results, (history, total, lengths, bare_total)))
        if last:
            break
        keep = tf.argsort(tf.cast(done, tf.int32), stable=True)[:next_size]  # running rows first
        kept_rows = tf.concat([keep + size * block for block in range(stacked)], axis=0)
        origin = tf.gather(origin, keep)
        search = [tf.gather(t, keep) for t in search]
        decoder = tf.nest.map_structure(lambda t: tf.gather(t, kept_rows), (token, states, encoder_outputs, source_ids))
    return results


class DecodeLoops:
    """The loops, compiled on first use, with what they were compiled for (``trace_count``,
    ``compiled_shapes``). ``capacity``: the history of the XLA loops, the longest reply they
    decode (``decoding.max_length``); longer replies take the graph loops."""

    def __init__(self, model: EncoderDecoder, capacity: int):
        self.model = model
        source = tf.TensorSpec([None, None], tf.int32)
        self.capacity = capacity
        # (batch, width, bare width) ``_greedy_loop`` was compiled for (bare width 0: no bare rows)
        self.compiled_shapes: set[tuple[int, int, int]] = set()
        self.compiled_beam_shapes: set[tuple[int, int, int, int]] = set()  # (beam, n_best, batch, width)
        # ``autograph=False`` throughout: the loops are written with ``tf.while_loop`` and
        # ``tf.cond`` already, and converting their Python source cost every process about 1.3 s
        # of its start-up (the warm-up of `chatbot ask` took 2.6 s with it, 1.3 s without).
        # (with bare rows, stages) -> ``_greedy_loop``, traced on first use: one input decodes in
        # one stage, a batch in ``xla_stages``.
        self._greedy: dict[tuple[bool, int], Any] = {}
        self._score = tf.function(self._score_batch, autograph=False, input_signature=[source, source])
        step_signature = [
            source, _scalar(tf.int32),  # max_length
            _scalar(tf.bool), _scalar(tf.float32), _scalar(tf.int32), _scalar(tf.float32),  # sample, t, k, p
            _scalar(tf.float32), _scalar(tf.int32), _scalar(tf.int32),  # repetition, ngram, min_length
            tf.TensorSpec([None, 2], tf.int32),  # each input's random key (``row_keys``)
        ]
        self._step = tf.function(self._step_loop, autograph=False, input_signature=step_signature)
        self._step_unaided = tf.function(functools.partial(self._step_loop, unaided=True), autograph=False,
                                         input_signature=step_signature)
        self._beam_xla: dict[tuple[int, int], Any] = {}  # (beam, n_best) -> ``_beam_xla_loop``, compiled
        self._beam = tf.function(self._beam_loop, autograph=False, input_signature=[
            source, _scalar(tf.int32),  # max_length
            _scalar(tf.int32), _scalar(tf.int32), _scalar(tf.float32),  # beam, n_best, length penalty
            _scalar(tf.float32), _scalar(tf.int32), _scalar(tf.int32),  # repetition, ngram, min_length
        ])

    @property
    def trace_count(self) -> int:
        """Traces of all compiled functions together (each is traced once, on first use)."""
        return sum(f.experimental_get_tracing_count()
                   for f in (*self._greedy.values(), self._step, self._step_unaided, self._beam,
                             self._score, *self._beam_xla.values()))

    # --- scoring given answers ---------------------------------------------------------------
    def _score_batch(self, source, target):
        """Mean log-probability per token of each ``target`` row (its [END] included, padding
        left out) given its ``source`` row: the same figure as ``generator.Generation.score``."""
        decoder_input = tf.concat([tf.fill([tf.shape(target)[0], 1], START), target[:, :-1]], axis=1)
        logits = tf.cast(self.model((source, decoder_input), training=False), tf.float32)
        picked = tf.gather(tf.nn.log_softmax(logits), target, axis=2, batch_dims=2)
        real = tf.cast(tf.not_equal(target, PAD), tf.float32)
        return tf.reduce_sum(picked * real, axis=1) / tf.maximum(tf.reduce_sum(real, axis=1), 1.0)

    def scores(self, sources: Sequence[np.ndarray], hypotheses: Sequence[np.ndarray]) -> np.ndarray:
        """Each hypothesis' mean log-probability per token given its source row (ids, as
        ``Generator.encode_inputs`` makes them), in batches of ``SCORE_BATCH``: the logits are batch x
        length x vocabulary."""
        scores = []
        for start in range(0, len(hypotheses), SCORE_BATCH):
            source = padded_rows(sources[start:start + SCORE_BATCH])
            target = padded_rows(hypotheses[start:start + SCORE_BATCH])
            scores.append(self._score(tf.constant(source), tf.constant(target)).numpy())
        return np.concatenate(scores) if scores else np.zeros([0], np.float32)

    # --- shared: repetition control ----------------------------------------------------------
    def _forbid(self, logits, step, min_length):
        """[PAD] and [START] forbidden always (no reply holds them: the training targets never
        did, so nothing taught a model to avoid them, and a hypothesis holding one was scored
        differently by the loops, which counted it, and the scoring pass, which masks padding),
        and [END] before ``min_length`` tokens: the constraints the XLA loops keep."""
        ids = tf.range(self.model.vocab_size)[None, :]
        never = tf.logical_or(tf.equal(ids, PAD), tf.equal(ids, START))
        early_end = tf.logical_and(step < min_length, tf.equal(ids, END))
        return tf.where(tf.logical_or(never, early_end), NEG_INF, logits)

    def _constrain(self, logits, history, step, repetition_penalty, ngram, min_length):
        """Logits ``[N, V]`` with repetition control applied, given each row's tokens so far
        (``history[:, :step]``). Forbidden tokens get -inf."""
        rows, vocab = tf.shape(logits)[0], tf.shape(logits)[1]
        width = tf.shape(history)[1]
        positions = tf.range(width)
        row_ids = tf.broadcast_to(tf.range(rows)[:, None], tf.shape(history))

        def token_mask(row_index, token_index):
            """[N, V] bool, True at the given (row, token) pairs."""
            pairs = tf.stack([row_index, token_index], axis=1)
            hits = tf.scatter_nd(pairs, tf.ones(tf.shape(row_index), tf.int32), tf.stack([rows, vocab]))
            return hits > 0

        def penalise():  # CTRL: divide positive logits, multiply negative ones
            seen_at = tf.broadcast_to(positions[None, :] < step, tf.shape(history))
            seen = token_mask(tf.boolean_mask(row_ids, seen_at), tf.boolean_mask(history, seen_at))
            penalised = tf.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
            return tf.where(seen, penalised, logits)

        logits = tf.cond(tf.logical_and(repetition_penalty > 1.0, step > 0), penalise, lambda: logits)

        def block_ngrams():
            # An n-gram starting at j is (history[j], ..., history[j+n-1]); its first n-1
            # tokens matching the last n-1 generated forbid history[j+n-1] now.
            match = tf.broadcast_to(positions[None, :] <= step - ngram, tf.shape(history))

            def compare(i, match):
                shifted = tf.roll(history, -i, axis=1)
                recent = tf.gather(history, step - ngram + 1 + i, axis=1)
                return i + 1, tf.logical_and(match, tf.equal(shifted, recent[:, None]))

            _, match = tf.while_loop(lambda i, _: i < ngram - 1, compare, [tf.constant(0), match])
            following = tf.roll(history, -(ngram - 1), axis=1)
            banned = token_mask(tf.boolean_mask(row_ids, match), tf.boolean_mask(following, match))
            return tf.where(banned, NEG_INF, logits)

        logits = tf.cond(tf.logical_and(ngram > 0, step >= ngram - 1), block_ngrams, lambda: logits)
        logits = self._forbid(logits, step, min_length)
        # A row with every token forbidden (a tiny vocabulary, a strict n-gram ban) ends.
        stuck = tf.reduce_all(tf.equal(logits, NEG_INF), axis=1, keepdims=True)
        return tf.where(tf.logical_and(stuck, tf.equal(tf.range(vocab), END)[None, :]), 0.0, logits)

    # --- greedy and sampling -----------------------------------------------------------------
    @staticmethod
    def _sample(scores, temperature, top_k, top_p, keys, step):
        """A token per row drawn from its tempered, truncated distribution, by the Gumbel-max
        trick with noise from the row's own key and the step: a row draws the same tokens
        whatever else is decoded beside it and wherever it sits in the batch."""
        z = scores / temperature
        vocab = tf.shape(z)[1]

        def keep_top_k():
            kth = tf.math.top_k(z, tf.minimum(top_k, vocab)).values[:, -1:]
            return tf.where(z < kth, NEG_INF, z)

        z = tf.cond(top_k > 0, keep_top_k, lambda: z)

        def keep_top_p():  # the smallest set of most likely tokens whose mass reaches top_p
            ordered = tf.sort(z, axis=-1, direction="DESCENDING")
            mass_before = tf.cumsum(tf.nn.softmax(ordered), axis=-1, exclusive=True)
            threshold = tf.reduce_min(tf.where(mass_before < top_p, ordered, float("inf")),
                                      axis=-1, keepdims=True)
            return tf.where(z < threshold, NEG_INF, z)

        z = tf.cond(top_p < 1.0, keep_top_p, lambda: z)
        keys = tf.ensure_shape(keys, [None, 2])  # the loop forgets static shapes
        tiny = float(np.finfo(np.float32).tiny)
        uniform = tf.map_fn(  # one stateless draw per row: its key folded with the step
            lambda key: tf.random.stateless_uniform(
                [vocab], tf.random.experimental.stateless_fold_in(key, step), minval=tiny, maxval=1.0),
            keys, fn_output_signature=tf.float32)
        gumbel = -tf.math.log(-tf.math.log(uniform))
        return tf.argmax(z + gumbel, axis=-1, output_type=tf.int32)

    def _step_loop(self, source, max_length, sample, temperature, top_k, top_p,
                   repetition_penalty, ngram, min_length, keys, *, unaided: bool = False):
        """Greedy decoding or sampling for a batch: ids ``[B, max_length]``, the model's own
        log-prob sums and lengths, each ``[B]``, and with ``unaided`` (bare rows after the
        inputs, as ``_greedy_loop`` takes them) the replies' log-prob sums given the bare
        inputs (else zeros). A row that ends leaves the batch at once (``_decode_until_done``),
        so a batch does not pay full price until its longest reply ends."""
        encoder_outputs, states, source_ids = self.model.encode(source, training=False)
        batch = tf.shape(source)[0] // 2 if unaided else tf.shape(source)[0]
        positions = tf.range(max_length)

        def advance(step, search, decoder):
            history, total, bare_total, keys = search  # tokens so far, log-prob sums, random keys
            token, states, encoder_outputs, source_ids = decoder
            logits, states = self.model.decode_step(token, states, encoder_outputs, source_ids)
            logits = tf.cast(logits, tf.float32)
            if unaided:
                logits, bare_logits = tf.split(logits, 2)
            logprobs = tf.nn.log_softmax(logits)  # the model's own, for the score
            scores = self._constrain(logits, history, step, repetition_penalty, ngram, min_length)
            best = tf.cond(sample,
                           lambda: self._sample(scores, temperature, top_k, top_p, keys, step),
                           lambda: tf.argmax(scores, axis=-1, output_type=tf.int32))
            total += tf.gather(logprobs, best, axis=1, batch_dims=1)
            if unaided:
                bare_total += tf.gather(tf.nn.log_softmax(bare_logits), best, axis=1, batch_dims=1)
            history = tf.where(tf.equal(positions, step)[None, :], best[:, None], history)
            token = tf.concat([best, best], axis=0) if unaided else best
            return (history, total, bare_total, keys), (token, states, encoder_outputs, source_ids), tf.equal(best, END)

        def results(steps, search):
            history, total, bare_total, _ = search
            return history, total, tf.fill(tf.shape(total), steps), bare_total

        outputs = (tf.zeros([batch, max_length], tf.int32), tf.zeros([batch], tf.float32),
                   tf.zeros([batch], tf.int32), tf.zeros([batch], tf.float32))
        search = (tf.zeros([batch, max_length], tf.int32), tf.zeros([batch], tf.float32), tf.zeros([batch], tf.float32),
                  keys)
        decoder = (tf.fill([tf.shape(source)[0]], START), states, encoder_outputs, source_ids)
        return _decode_until_done(batch, max_length, outputs, search, decoder, advance, results,
                                  stacked=2 if unaided else 1)

    # --- greedy, up to XLA_MAX_BATCH inputs, XLA --------------------------------------------
    def _greedy_function(self, unaided: bool, stages: int):
        """``_greedy_loop`` compiled with XLA, with bare rows or not, in ``stages`` stages."""
        key = (unaided, stages)
        if key not in self._greedy:  # two decoding threads may both get here: the first one's is kept
            signature = [tf.TensorSpec([None, None], tf.int32), _scalar(tf.int32), _scalar(tf.int32)]
            self._greedy.setdefault(key, tf.function(  # source, max_length, min_length (, bare)
                functools.partial(self._greedy_loop, stages=stages), jit_compile=True, autograph=False,
                input_signature=signature + signature[:1] * unaided))
        return self._greedy[key]

    def trace_greedy(self, unaided: bool) -> None:
        """Trace ``_greedy_loop`` for every batch size (each stage count) now, in a fixed order.

        A server meets batch sizes in the order its requests happen to come in, and traced each
        loop then. But a compiled program is found in the disk cache (``compile_cache``) by its
        function's name, which carries a counter of all traces in the process: traced in another
        order, the names, and so the keys, changed from one start to the next, and each start
        compiled its programs again, seconds each, under load (bench/README.md, "Programs
        compiled again")."""
        for stages in range(1, xla_stages(XLA_MAX_BATCH) + 1):
            self._greedy_function(unaided, stages).get_concrete_function()

    def _greedy_loop(self, source, max_length, min_length, bare=None, *, stages: int = 1):
        """Greedy decoding, ``_step_loop``'s result without its repetition controls, as one XLA
        program: ids ``[B, capacity]``, log-prob sums and lengths ``[B]``, and with ``bare`` (the
        same inputs without their retrieved pairs, ``[B, width]``, at most ``source``'s width)
        each reply's log-prob sum given its bare input (else zeros).

        The bare inputs ride along as ``B`` more rows of the decoder's batch, fed the tokens the
        first rows choose (``_encoded_with_bare_rows``).

        XLA needs static shapes, so rows that end emit padding while the others run. So that a
        batch does not pay its longest reply's steps on every row, it runs in ``stages`` stages,
        each a quarter the size of the one before (``_shrinking_stages``)."""
        unaided = bare is not None
        if unaided:  # (a batch of one is decoded in one stage)
            encoder_outputs, states, source_ids = _encoded_with_bare_rows(self.model, source, bare,
                                                                          one_input=stages == 1)
        else:
            encoder_outputs, states, source_ids = self.model.encode(source, training=False)
        batch = tf.shape(source)[0]
        positions = tf.range(self.capacity)

        def step_over(encoder_outputs, source_ids):  # one stage's loop body, over its rows' encoding
            def body(step, token, states, history, total, lengths, done, bare_total):
                logits, states = self.model.decode_step(token, states, encoder_outputs, source_ids)
                logits = tf.cast(logits, tf.float32)
                if unaided:
                    logits, bare_logits = tf.split(logits, 2)
                logprobs = tf.nn.log_softmax(logits)
                allowed = self._forbid(logits, step, min_length)
                best = tf.where(done, PAD, tf.argmax(allowed, axis=-1, output_type=tf.int32))
                total += tf.where(done, 0.0, tf.gather(logprobs, best, axis=1, batch_dims=1))
                if unaided:
                    bare_logprobs = tf.nn.log_softmax(bare_logits)
                    bare_total += tf.where(done, 0.0, tf.gather(bare_logprobs, best, axis=1, batch_dims=1))
                lengths += tf.cast(tf.logical_not(done), tf.int32)
                history = tf.where(tf.equal(positions, step)[None, :], best[:, None], history)
                token = tf.concat([best, best], axis=0) if unaided else best
                return (step + 1, token, states, history, total, lengths, tf.logical_or(done, tf.equal(best, END)),
                        bare_total)
            return body

        results = (tf.zeros([batch, self.capacity], tf.int32), tf.zeros([batch], tf.float32),
                   tf.zeros([batch], tf.int32), tf.zeros([batch], tf.float32))
        search = results[:3] + (tf.zeros([batch], tf.bool), results[3])  # history, total, lengths, done, bare
        decoder = (tf.fill([tf.shape(source_ids)[0]], START), states, encoder_outputs, source_ids)
        return _shrinking_stages(step_over, max_length, batch, search, decoder, results, stages,
                                 stacked=2 if unaided else 1)

    def greedy(self, source: np.ndarray, max_length: int, min_length: int, bare: np.ndarray | None = None):
        """``_greedy_loop`` on ``source`` (and ``bare``, the same inputs without retrieved
        pairs) padded to its XLA width and batch (``xla_padded``): ids, log-prob sums and
        lengths, and with ``bare`` the replies' log-prob sums given those as a fourth result."""
        shape = self.greedy_shape(len(source), source.shape[1], None if bare is None else bare.shape[1])
        self.compiled_shapes.add(shape)
        batch, width, bare_width = shape
        arguments = [tf.constant(xla_padded(source, width)), tf.constant(max_length, tf.int32),
                     tf.constant(min_length, tf.int32)]
        if bare is not None:
            arguments.append(tf.constant(xla_padded(bare, bare_width)))
        out = self._greedy_function(bare is not None, xla_stages(batch))(*arguments)
        return tuple(t[:source.shape[0]] for t in out[:3 if bare is None else 4])

    def greedy_shape(self, rows: int, width: int, bare_width: int | None) -> tuple[int, int, int]:
        """``greedy_shape`` for this model."""
        return greedy_shape(rows, width, bare_width, bare_as_wide=self.model.stops_at_longest_input)

    def _xla_can_run(self, config: DecodingConfig, batch: int) -> bool:
        """What both XLA loops need: up to ``XLA_MAX_BATCH`` inputs, a reply fitting their
        history, no repetition controls (their shapes change as they run: XLA cannot compile them)."""
        return (batch <= XLA_MAX_BATCH and config.max_length <= self.capacity
                and config.repetition_penalty == 1.0 and config.no_repeat_ngram_size == 0)

    def uses_xla(self, config: DecodingConfig, batch: int) -> bool:
        """Whether a call decodes with ``_greedy_loop``: greedy, where ``_xla_can_run``."""
        return config.effective_strategy == "greedy" and self._xla_can_run(config, batch)

    # --- beam search -------------------------------------------------------------------------
    def _beam_parts(self, source, max_length, width, k, n_best, length_penalty, constrain):
        """One beam search, for ``_beam_loop`` (any batch, a graph loop) and ``_beam_xla_loop``
        (up to ``XLA_MAX_BATCH`` inputs, XLA): the start state and its ``advance`` and ``results``.

        A hypothesis that has ended stays in the beam with its score and only extends by
        padding (at no cost), so it competes with the live ones until better ones push it
        out; it is also kept, from the step it ends, among the input's ``n_best`` best ended
        ones, which only better ended ones replace: a reply once found is not lost when live
        hypotheses that look better push it out and then end worse, or never end. An input is
        done when all its hypotheses have ended, or when live hypotheses can no longer enter
        its n-best. Hypotheses are ranked by sum of log-probs / ((5 + length) / 6) **
        length_penalty (GNMT). ``width`` is the history's width (at least ``max_length``);
        ``constrain(logits, history, step)`` forbids tokens.
        """
        vocab = self.model.vocab_size
        batch = tf.shape(source)[0]
        encoder_outputs, states, source_ids = self.model.encode(source, training=False)
        encoder_outputs = tf.repeat(encoder_outputs, k, axis=0)
        source_ids = tf.repeat(source_ids, k, axis=0)
        states = [tf.repeat(s, k, axis=0) for s in states]

        def penalty(length):
            return tf.pow((5.0 + tf.cast(length, tf.float32)) / 6.0, length_penalty)

        positions = tf.range(width)
        pad_only = tf.equal(tf.range(vocab), PAD)[None, None, :]

        def kept_best(ended, candidates, take):
            """The ``n_best`` best of the ended hypotheses so far and ``candidates`` (the same
            fields, ``[B, n]`` and ``[B, n, width]``) that ``take`` marks."""
            keys = tf.concat([ended[0], tf.where(take, candidates[0], NEG_INF)], axis=1)
            best = tf.math.top_k(keys, n_best).indices
            return tuple(tf.gather(tf.concat([old, new], axis=1), best, batch_dims=1)
                         for old, new in zip(ended, candidates))

        def advance(step, search, decoder):
            # sums: ranking sums (with constraints); raw: the model's own log-prob sums;
            # decided: inputs whose n-best can no longer change; ended: the best ended
            # hypotheses so far (keys, raw sums, lengths, ids).
            sums, raw, lengths, finished, decided, history, ended = search
            token, states, encoder_outputs, source_ids = decoder
            searching = tf.shape(sums)[0]
            rows = searching * k
            logits, states = self.model.decode_step(token, states, encoder_outputs, source_ids)
            logits = tf.cast(logits, tf.float32)
            raw_logprobs = tf.reshape(tf.nn.log_softmax(logits), [searching, k * vocab])
            constrained = constrain(logits, tf.reshape(history, [rows, width]), step)
            logprobs = tf.reshape(tf.nn.log_softmax(constrained), [searching, k, vocab])
            extended = sums[:, :, None] + logprobs
            kept = tf.where(pad_only, sums[:, :, None], NEG_INF)  # ended: one candidate, PAD
            candidates = tf.where(finished[:, :, None], kept, extended)
            new_lengths = lengths + tf.cast(tf.logical_not(finished), tf.int32)
            keys = candidates / penalty(new_lengths)[:, :, None]
            top = tf.math.top_k(tf.reshape(keys, [searching, k * vocab]), k).indices  # [B, K]
            parent = top // vocab
            chosen = top % vocab
            parent_finished = tf.gather(finished, parent, batch_dims=1)
            sums = tf.gather(tf.reshape(candidates, [searching, k * vocab]), top, batch_dims=1)
            raw = tf.gather(raw, parent, batch_dims=1) + tf.where(
                parent_finished, 0.0, tf.gather(raw_logprobs, top, batch_dims=1))
            lengths = tf.gather(new_lengths, parent, batch_dims=1)
            chosen = tf.where(parent_finished, PAD, chosen)
            history = tf.gather(history, parent, batch_dims=1)
            history = tf.where(tf.equal(positions, step)[None, None, :], chosen[:, :, None], history)
            finished = tf.logical_or(parent_finished, tf.equal(chosen, END))
            ended = kept_best(ended, (sums / penalty(lengths), raw, lengths, history),
                              tf.logical_and(finished, tf.logical_not(parent_finished)))
            flat_parent = tf.reshape(parent + tf.range(searching)[:, None] * k, [rows])
            states = [tf.gather(s, flat_parent) for s in states]
            token = tf.reshape(chosen, [rows])
            # An input is decided once its n-best are ended hypotheses that no live one can
            # still beat: a live sum only falls and the penalty is at most lp(max_length),
            # so sum / lp(max_length) bounds its final key. Stopping then gives the same
            # n-best as searching on, without running live hypotheses to max_length.
            nth_ended = ended[0][:, -1]
            best_live = tf.reduce_max(tf.where(finished, NEG_INF, sums / penalty(max_length)), axis=1)
            decided = tf.logical_or(decided, tf.logical_and(nth_ended > NEG_INF, nth_ended > best_live))
            done = tf.logical_or(decided, tf.reduce_all(finished, axis=1))
            return ((sums, raw, lengths, finished, decided, history, ended),
                    (token, states, encoder_outputs, source_ids), done)

        def results(_, search):
            """Each input's n-best: ids, raw sums, lengths and keys, best first: the ended
            hypotheses kept, and, unless the input is decided (no live one can still enter its
            n-best), the live ones as they stand at ``max_length``."""
            sums, raw, lengths, finished, decided, history, ended = search
            live = tf.logical_and(tf.logical_not(finished), tf.logical_not(decided)[:, None])
            keys, raw, lengths, history = kept_best(ended, (sums / penalty(lengths), raw, lengths, history), live)
            return history, raw, lengths, keys

        first_only = tf.concat([[0.0], tf.fill([k - 1], NEG_INF)], axis=0)  # one start hypothesis
        no_ended = (tf.fill([batch, n_best], NEG_INF), tf.zeros([batch, n_best], tf.float32),
                    tf.zeros([batch, n_best], tf.int32), tf.zeros([batch, n_best, width], tf.int32))
        search = (tf.tile(first_only[None, :], [batch, 1]), tf.zeros([batch, k], tf.float32),
                  tf.zeros([batch, k], tf.int32), tf.zeros([batch, k], tf.bool),
                  tf.zeros([batch], tf.bool), tf.zeros([batch, k, width], tf.int32), no_ended)
        decoder = (tf.fill([batch * k], START), states, encoder_outputs, source_ids)
        return search, decoder, advance, results

    def _beam_loop(self, source, max_length, beam, n_best, length_penalty,
                   repetition_penalty, ngram, min_length):
        """Beam search over ``beam`` hypotheses per input, all inputs in one batch
        (``_beam_parts``); an input leaves the batch when it is done (``_decode_until_done``).
        Returns ids ``[B, n_best, max_length]``, the model's own log-prob sums, lengths and
        ranking keys, each ``[B, n_best]``, best first."""
        def constrain(logits, history, step):
            return self._constrain(logits, history, step, repetition_penalty, ngram, min_length)

        search, decoder, advance, results = self._beam_parts(source, max_length, max_length, beam, n_best,
                                                             length_penalty, constrain)
        batch = tf.shape(source)[0]
        outputs = (tf.zeros([batch, n_best, max_length], tf.int32), tf.zeros([batch, n_best], tf.float32),
                   tf.zeros([batch, n_best], tf.int32), tf.zeros([batch, n_best], tf.float32))
        return _decode_until_done(batch, max_length, outputs, search, decoder, advance, results,
                                  rows_per_input=beam)

    def _beam_xla_loop(self, source, max_length, length_penalty, min_length, *, beam: int, n_best: int):
        """``_beam_loop`` for a few inputs as one XLA program: ``beam`` and ``n_best`` are fixed
        (one compilation each), the history is ``capacity`` wide, and no repetition controls
        (their shapes change as they run). Returns ``_beam_loop``'s results, ``capacity`` wide."""
        def constrain(logits, history, step):
            return self._forbid(logits, step, min_length)

        search, decoder, advance, results = self._beam_parts(source, max_length, self.capacity, beam, n_best,
                                                             length_penalty, constrain)

        def body(step, search, decoder, done):
            search, decoder, done = advance(step, search, decoder)
            return step + 1, search, decoder, done

        def running(step, search, decoder, done):
            return tf.logical_and(step < max_length, tf.logical_not(tf.reduce_all(done)))

        done = tf.zeros([tf.shape(source)[0]], tf.bool)
        steps, search, _, _ = tf.while_loop(running, body, (tf.constant(0), search, decoder, done))
        return results(steps, search)

    def beam_xla(self, source: np.ndarray, config: DecodingConfig):
        """``_beam_xla_loop`` on ``source`` padded to its XLA width and batch (``xla_padded``),
        compiled once per beam width and n-best size (and padded shape)."""
        key = (config.beam, config.n_best)
        padded = xla_padded(source)
        self.compiled_beam_shapes.add((*key, *padded.shape))
        out = self._beam_function(*key)(tf.constant(padded), tf.constant(config.max_length, tf.int32),
                                        tf.constant(config.length_penalty, tf.float32),
                                        tf.constant(config.min_length, tf.int32))
        return tuple(t[:source.shape[0]] for t in out)

    def _beam_function(self, beam: int, n_best: int):
        """``_beam_xla_loop`` for this beam width and n-best size, made on first use."""
        if (beam, n_best) not in self._beam_xla:
            self._beam_xla[(beam, n_best)] = tf.function(
                functools.partial(self._beam_xla_loop, beam=beam, n_best=n_best),
                jit_compile=True, autograph=False,
                input_signature=[tf.TensorSpec([None, None], tf.int32), _scalar(tf.int32),
                                 _scalar(tf.float32), _scalar(tf.int32)])
        return self._beam_xla[(beam, n_best)]

    def trace_beam(self, config: DecodingConfig) -> None:
        """Trace ``_beam_xla_loop`` for ``config``'s beam width and n-best size now (0.15 s for
        the default model): traced in the order requests come in, its name, and so its key in
        the disk cache, would change from one start to the next (``trace_greedy``)."""
        self._beam_function(config.beam, config.n_best).get_concrete_function()

    def uses_xla_beam(self, config: DecodingConfig, batch: int) -> bool:
        """Whether a beam search runs in ``_beam_xla_loop``: beams of at most ``XLA_MAX_BEAM``,
        where ``_xla_can_run``."""
        return (config.effective_strategy == "beam" and config.beam <= XLA_MAX_BEAM
                and self._xla_can_run(config, batch))

    # --- the entry points of the graph loops, and their arguments ----------------------------
    def step(self, source: np.ndarray, config: DecodingConfig, row_keys: np.ndarray | int | None = None,
             bare: np.ndarray | None = None):
        """``_step_loop`` on a batch of any size with ``config``'s settings: greedy, or sampling
        with each input's random key (``row_keys``, [inputs, 2]: its seed and stream, as
        ``Generator.row_keys`` makes them; an int: that seed for every input; None: seed 0);
        with ``bare`` (the same inputs without retrieved pairs) the replies' log-prob sums
        given those as a fourth result."""
        if row_keys is None or isinstance(row_keys, int):
            keys = np.zeros((len(source), 2), np.int32)
            keys[:, 0] = row_keys or 0
        else:
            keys = np.asarray(row_keys, np.int32)
        if bare is None:
            return self._step(tf.constant(source), *self._step_args(config, keys))[:3]
        stacked = padded_rows([*source, *bare])  # the inputs, then their bare rows
        return self._step_unaided(tf.constant(stacked), *self._step_args(config, keys))

    def beam(self, source: np.ndarray, config: DecodingConfig):
        """``_beam_loop`` on a batch of any size with ``config``'s beam settings."""
        return self._beam(tf.constant(source), *self._beam_args(config))

    @staticmethod
    def _constraint_args(config: DecodingConfig) -> list[tf.Tensor]:
        return [tf.constant(config.repetition_penalty, tf.float32),
                tf.constant(config.no_repeat_ngram_size, tf.int32),
                tf.constant(config.min_length, tf.int32)]

    def _step_args(self, config: DecodingConfig, row_keys: np.ndarray) -> list[tf.Tensor]:
        return [tf.constant(config.max_length, tf.int32),
                tf.constant(config.effective_strategy == "sample"),
                tf.constant(config.temperature, tf.float32),
                tf.constant(config.top_k, tf.int32),
                tf.constant(config.top_p, tf.float32),
                *self._constraint_args(config),
                tf.constant(row_keys, tf.int32)]

    def _beam_args(self, config: DecodingConfig) -> list[tf.Tensor]:
        return [tf.constant(config.max_length, tf.int32),
                tf.constant(config.beam, tf.int32),
                tf.constant(config.n_best, tf.int32),
                tf.constant(config.length_penalty, tf.float32),
                *self._constraint_args(config)]
