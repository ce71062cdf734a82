"""tf.data pipelines: encoded examples -> teacher-forcing batches, padded per batch.

Examples are bucketed by source and target length so a batch of short greetings is not padded
to the length of the longest code sample in the corpus. A training set that fits in one shuffle
window is held in memory (``make_dataset``); a bigger one is streamed from its token cache on
disk (``stream_dataset``), so that memory stays flat whatever the corpus' size.
"""

from __future__ import annotations

import functools
import itertools
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from chatbot.data.corpus import Example
from chatbot.data.token_cache import WRITE_CHUNK, Rows, TokenCache
from chatbot.data.tokenizer import TextTokenizer


def encode_examples(examples: Sequence[Example], tokenizer: TextTokenizer, max_input_tokens: int,
                    max_output_tokens: int, retrieved: Sequence[Sequence[tuple[str, str, float]]] | None = None,
                    max_answer_tokens: int = 512) -> tuple[list[list[int]], list[list[int]]]:
    """Source ids (what retrieval showed, context turns, question) and target ids (answer + [END])."""
    inputs = [list(e.context) + [e.question] for e in examples]
    if retrieved is None or not any(retrieved):
        sources = tokenizer.encode_inputs(inputs, max_input_tokens)
    else:
        sources = [tokenizer.encode_input(turns, max_input_tokens, shown, max_answer_tokens)
                   for turns, shown in zip(inputs, retrieved)]
    targets = tokenizer.encode_targets([e.answer for e in examples], max_output_tokens)
    return sources, targets


def encoded_rows(inputs: Iterable[tuple[Example, tuple]], tokenizer: TextTokenizer, max_input_tokens: int,
                 max_output_tokens: int, max_answer_tokens: int = 512) -> Iterator[tuple[list[int], list[int]]]:
    """``encode_examples`` over (example, what retrieval showed) pairs, a chunk at a time, for
    ``TokenCache.build``: a corpus of any size in memory for one chunk."""
    inputs = iter(inputs)
    while chunk := list(itertools.islice(inputs, WRITE_CHUNK)):
        examples, shown = zip(*chunk)
        yield from zip(*encode_examples(examples, tokenizer, max_input_tokens, max_output_tokens, shown,
                                        max_answer_tokens))


# Examples are bucketed by source length and target length together, so a batch is padded
# only a little on either side. Bucketing by the longer of the two padded the decoder side
# 2.8x on the English corpus with retrieval (a 20-token answer beside an 80-token input sat
# with 100-token answers); two axes pad 1.2x on each side, and an epoch of the default recipe
# took 35 s instead of 50 on 2 cores (bench/README.md, train_speed.py). The few long examples share coarse buckets with full-size
# batches: an RNN step costs about the same at batch 4 as at batch 32 on a CPU, so a long
# bucket split into many small batches would pay for its hundreds of steps again and again.
SOURCE_EDGES = (8, 12, 16, 24, 32, 48, 64, 96, 128, 256)
TARGET_EDGES = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)
TOKENS_PER_BATCH_FACTOR = 512  # caps memory only for very long examples: batch_size * 512 tokens


def batch_size_for(source: int, target: int, batch_size: int, vocab_size: int = 0, max_cells: int = 0) -> int:
    """The batch size of a bucket whose longest source and target have these many tokens: a token
    budget on the longer of the two and, with ``max_cells``, a budget on its ``target`` decoder
    positions each reading ``source`` + ``vocab_size`` values (``training.max_batch_cells``)."""
    size = min(batch_size, batch_size * TOKENS_PER_BATCH_FACTOR // max(source, target, 1))
    if max_cells:
        size = min(size, max_cells // max(target * (source + vocab_size), 1))
    return max(1, size)


def bucket_of(source_lengths: np.ndarray, target_lengths: np.ndarray) -> np.ndarray:
    """Each example's bucket: one number per (source edge, target edge) cell."""
    rows = np.searchsorted(SOURCE_EDGES, source_lengths, side="right")
    return rows * (len(TARGET_EDGES) + 1) + np.searchsorted(TARGET_EDGES, target_lengths, side="right")


EpochOf = Callable[[], int]  # the training loop's current epoch (0 first)


def _epoch_counter(epoch_of: EpochOf | None) -> tuple[EpochOf, Callable[[], None]]:
    """(the epoch an order is drawn for, what to call when an epoch was read to its end): the
    training loop's epoch when given, so that a resumed training shuffles its epochs as the
    uninterrupted one did (Keras opens two iterators an epoch, so counting them would not do);
    else the epochs read to the end so far."""
    completed = [0]

    def finished() -> None:
        completed[0] += 1

    return epoch_of or (lambda: completed[0]), finished


def make_dataset(sources: list[list[int]] | Rows, targets: list[list[int]] | Rows, batch_size: int,
                 shuffle: bool = False, seed: int = 0, vocab_size: int = 0, max_cells: int = 0,
                 epoch_of: EpochOf | None = None) -> tf.data.Dataset:
    """Yields ``((source, decoder_input), target)``; decoder_input is the target shifted
    right behind [START] (teacher forcing). The rows are held in memory. A bucket's batches
    are smaller when its examples are long (``batch_size_for``).

    Examples are assigned to length buckets once; each epoch shuffles within buckets and
    deals their batches in a random order, drawn from (``seed``, the epoch: ``_epoch_counter``).
    The number of batches is therefore the same every epoch (Keras counts the steps of the
    first epoch and would cut later, longer ones).
    """
    sources = sources if isinstance(sources, Rows) else Rows.from_lists(sources)
    targets = targets if isinstance(targets, Rows) else Rows.from_lists(targets)
    source_lengths, target_lengths = sources.lengths(), targets.lengths()
    buckets = bucket_of(source_lengths, target_lengths)

    groups = []  # (the bucket's examples, its batch size)
    for bucket in np.unique(buckets):
        members = np.flatnonzero(buckets == bucket)
        source, target = int(source_lengths[members].max()), int(target_lengths[members].max())
        groups.append((members, batch_size_for(source, target, batch_size, vocab_size, max_cells)))
    batches = sum(-(-len(members) // size) for members, size in groups)
    if shuffle:
        epoch, finished = _epoch_counter(epoch_of)

        def shuffled():
            rng = np.random.default_rng([seed, 1 + epoch()])
            cuts = []
            for members, size in groups:
                order = rng.permutation(members)
                cuts += [order[i:i + size] for i in range(0, len(order), size)]
            yield from (cuts[i] for i in rng.permutation(len(cuts)))
            finished()

        data = tf.data.Dataset.from_generator(shuffled, output_signature=tf.TensorSpec([None], tf.int64))
    else:  # bucket after bucket
        parts = [tf.data.Dataset.from_tensor_slices(members).batch(size) for members, size in groups]
        data = functools.reduce(tf.data.Dataset.concatenate, parts)
    data = data.apply(tf.data.experimental.assert_cardinality(batches))
    # The rows are gathered after batching, by one function: a tensor captured by a function
    # of each bucket was copied into each (2 GB for 200k pairs in 50 buckets).
    columns = [tf.RaggedTensor.from_row_splits(tf.constant(rows.values), tf.constant(rows.offsets))
               for rows in (sources, targets.shifted_right(), targets)]

    def gather(indices):
        source, decoder_input, target = (tf.gather(column, indices).to_tensor() for column in columns)
        return (source, decoder_input), target

    return data.map(gather).prefetch(tf.data.AUTOTUNE)


# A training set bigger than ``data.shuffle_window`` examples is streamed from its token cache:
# its blocks of consecutive examples are dealt into windows once, and each epoch reads the
# windows in a new order, one at a time, sorts each by length and cuts it into batches within
# ``make_dataset``'s budgets (OpenNMT-tf and fairseq batch the same way). A window's batches
# depend only on which examples it holds, so every epoch has the same number, as Keras needs.
BLOCK = 512


def windows_of(window: int) -> tuple[int, int]:
    """(examples per block, blocks per window) for a window of about ``window`` examples."""
    block = max(1, min(BLOCK, window))
    return block, max(1, window // block)


def window_rows(count: int, window: int, seed: int) -> list[np.ndarray]:
    """The example numbers of each window: blocks dealt at random (the one short block last)."""
    block, per_window = windows_of(window)
    edges = list(range(0, count, block)) + [count]
    blocks = [np.arange(a, b) for a, b in zip(edges[:-1], edges[1:])]
    short = [blocks.pop()] if count % block else []
    order = np.random.default_rng([seed, 0]).permutation(len(blocks)).tolist()
    dealt = [blocks[i] for i in order] + short
    return [np.concatenate(dealt[i:i + per_window]) for i in range(0, len(dealt), per_window)]


def window_cuts(source_lengths: np.ndarray, target_lengths: np.ndarray, batch_size: int, vocab_size: int = 0,
                max_cells: int = 0, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Positions of a window's examples cut into batches: sorted by length bucket, then length
    (ties at random with ``rng``), cut every ``batch_size``, and a cut of long examples cut again
    to its ``batch_size_for`` budget. How many batches depends only on the lengths."""
    ties = rng.random(len(source_lengths)) if rng is not None else np.zeros(len(source_lengths))
    order = np.lexsort((ties, source_lengths, target_lengths, bucket_of(source_lengths, target_lengths)))
    cuts = []
    for first in range(0, len(order), batch_size):
        rows = order[first:first + batch_size]
        size = batch_size_for(int(source_lengths[rows].max()), int(target_lengths[rows].max()),
                              batch_size, vocab_size, max_cells)
        cuts += [rows[i:i + size] for i in range(0, len(rows), size)]
    return cuts


def stream_dataset(cache: TokenCache, batch_size: int, window: int, seed: int = 0, vocab_size: int = 0,
                   max_cells: int = 0, epoch_of: EpochOf | None = None) -> tf.data.Dataset:
    """``make_dataset``'s batches from a ``TokenCache`` on disk, in memory for one window."""
    windows = window_rows(cache.count, window, seed)
    block, per_window = windows_of(window)
    full = len(windows) - (cache.count % (block * per_window) > 0)  # a short window is read last
    source_lengths, target_lengths = cache.lengths("sources"), cache.lengths("targets")
    batches_per_epoch = sum(len(window_cuts(source_lengths[rows], target_lengths[rows], batch_size, vocab_size,
                                            max_cells)) for rows in windows)
    # The epoch's order is drawn from the epoch (``_epoch_counter``): without the training loop's,
    # from how many epochs were read to the end, so an iterator opened and dropped after a batch
    # (a distribution strategy looking at the data first) takes no epoch's.
    epoch, finished = _epoch_counter(epoch_of)

    def batches():
        rng = np.random.default_rng([seed, 1 + epoch()])
        for number in [*rng.permutation(full), *range(full, len(windows))]:
            rows = windows[number]  # runs of consecutive examples: one read per block
            starts = np.flatnonzero(np.diff(rows, prepend=-2) != 1)
            runs = [(int(rows[a]), int(rows[b - 1]) + 1) for a, b in zip(starts, [*starts[1:], len(rows)])]
            sources = _concatenated([cache.read("sources", a, b) for a, b in runs])
            targets = _concatenated([cache.read("targets", a, b) for a, b in runs])
            decoder_inputs = targets.shifted_right()
            cuts = window_cuts(sources.lengths(), targets.lengths(), batch_size, vocab_size, max_cells, rng)
            for cut in (cuts[i] for i in rng.permutation(len(cuts))):
                yield sources.padded(cut), decoder_inputs.padded(cut), targets.padded(cut)
        finished()

    spec = tf.TensorSpec((None, None), tf.int32)
    data = tf.data.Dataset.from_generator(batches, output_signature=(spec, spec, spec))
    data = data.apply(tf.data.experimental.assert_cardinality(batches_per_epoch))
    return data.map(lambda s, d, t: ((s, d), t)).prefetch(tf.data.AUTOTUNE)


def _concatenated(parts: list[Rows]) -> Rows:
    offsets = [parts[0].offsets]
    for part in parts[1:]:
        offsets.append(part.offsets[1:] + offsets[-1][-1])
    return Rows(np.concatenate([p.values for p in parts]), np.concatenate(offsets))
