"""tf.data pipelines: encoded examples -> teacher-forcing batches, padded per batch.

Examples are bucketed by source and target length so a batch of short greetings is not padded
to the length of the longest code sample in the corpus.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from chatbot.data.corpus import Example
from chatbot.data.tokenizer import START, TextTokenizer


def encode_examples(examples: Sequence[Example], tokenizer: TextTokenizer, max_input_tokens: int,
                    max_output_tokens: int, retrieved: Sequence[Sequence[tuple[str, str, float]]] | None = None,
                    max_answer_tokens: int = 512) -> tuple[list[list[int]], list[list[int]]]:
    """Source ids (what retrieval showed, context turns, question) and target ids (answer + [END])."""
    retrieved = retrieved if retrieved is not None else [()] * len(examples)
    sources = [tokenizer.encode_input(list(e.context) + [e.question], max_input_tokens, shown, max_answer_tokens)
               for e, shown in zip(examples, retrieved)]
    targets = [tokenizer.encode_target(e.answer, max_output_tokens) for e in examples]
    return sources, targets


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


def batch_size_for(longest: int, batch_size: int) -> int:
    """The batch size of a bucket whose longest sequence has ``longest`` tokens (a token budget)."""
    return max(1, min(batch_size, batch_size * TOKENS_PER_BATCH_FACTOR // max(longest, 1)))


def bucket_of(source_lengths: np.ndarray, target_lengths: np.ndarray) -> np.ndarray:
    """Each example's bucket: one number per (source edge, target edge) cell."""
    rows = np.searchsorted(SOURCE_EDGES, source_lengths, side="right")
    return rows * (len(TARGET_EDGES) + 1) + np.searchsorted(TARGET_EDGES, target_lengths, side="right")


def make_dataset(sources: list[list[int]], targets: list[list[int]], batch_size: int,
                 shuffle: bool = False, seed: int = 0) -> tf.data.Dataset:
    """Yields ``((source, decoder_input), target)``; decoder_input is the target shifted
    right behind [START] (teacher forcing).

    Examples are assigned to length buckets once; each epoch shuffles within buckets and
    interleaves their batches at random. The number of batches is therefore the same every
    epoch (Keras counts the steps of the first epoch and would cut later, longer ones).
    """
    decoder_inputs = [[START] + t[:-1] for t in targets]
    columns = [_Ragged(sources), _Ragged(decoder_inputs), _Ragged(targets)]
    source_lengths = np.array([len(s) for s in sources])
    target_lengths = np.array([len(t) for t in targets])
    buckets = bucket_of(source_lengths, target_lengths)

    parts, batches = [], []
    for bucket in np.unique(buckets):
        members = np.flatnonzero(buckets == bucket)
        part = tf.data.Dataset.from_tensor_slices(members)
        if shuffle:
            part = part.shuffle(len(members), seed=seed + int(bucket), reshuffle_each_iteration=True)
        longest = int(max(source_lengths[members].max(), target_lengths[members].max()))
        size = batch_size_for(longest, batch_size)
        parts.append(part.map(lambda i: tuple(column[i] for column in columns)).padded_batch(size))
        batches.append(-(-len(members) // size))
    if shuffle:
        weights = [b / sum(batches) for b in batches]
        data = tf.data.Dataset.sample_from_datasets(parts, weights, seed=seed, stop_on_empty_dataset=False)
    else:
        data = parts[0]
        for part in parts[1:]:
            data = data.concatenate(part)
    data = data.apply(tf.data.experimental.assert_cardinality(sum(batches)))
    return data.map(lambda s, d, t: ((s, d), t)).prefetch(tf.data.AUTOTUNE)


class _Ragged:
    """Variable-length rows stored flat (values + offsets); ``column[i]`` slices row i in-graph.

    Cheaper than a Python generator and, unlike ragged tensor slices, gives the plain
    tensors that ``padded_batch`` needs.
    """

    def __init__(self, rows: list[list[int]]):
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(r) for r in rows])
        self.values = tf.constant(np.concatenate([np.asarray(r, dtype=np.int32) for r in rows]))
        self.offsets = tf.constant(offsets)

    def __getitem__(self, i):
        return self.values[self.offsets[i]:self.offsets[i + 1]]
