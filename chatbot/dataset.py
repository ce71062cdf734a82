"""tf.data pipelines: encoded examples -> teacher-forcing batches, padded per batch.

Examples are bucketed by length so a batch of short greetings is not padded to the length
of the longest code sample in the corpus.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from .corpus import Example
from .tokenizer import START, TextTokenizer


def encode_examples(examples: Sequence[Example], tokenizer: TextTokenizer, max_input_tokens: int,
                    max_output_tokens: int) -> tuple[list[list[int]], list[list[int]]]:
    """Source ids (context turns + question) and target ids (answer + [END])."""
    sources = [tokenizer.encode_input(list(e.context) + [e.question], max_input_tokens) for e in examples]
    targets = [tokenizer.encode_target(e.answer, max_output_tokens) for e in examples]
    return sources, targets


def bucket_boundaries(lengths: Sequence[int], buckets: int = 8) -> list[int]:
    """Boundaries at length quantiles, so each bucket holds a similar number of examples."""
    quantiles = np.quantile(np.asarray(lengths), np.linspace(0, 1, buckets + 1)[1:-1])
    return sorted({int(q) + 1 for q in quantiles})


def make_dataset(sources: list[list[int]], targets: list[list[int]], batch_size: int,
                 shuffle: bool = False, seed: int = 0) -> tf.data.Dataset:
    """Yields ``((source, decoder_input), target)``; decoder_input is the target shifted
    right behind [START] (teacher forcing)."""
    decoder_inputs = [[START] + t[:-1] for t in targets]
    columns = [_Ragged(sources), _Ragged(decoder_inputs), _Ragged(targets)]
    data = tf.data.Dataset.range(len(sources))
    if shuffle:
        data = data.shuffle(len(sources), seed=seed, reshuffle_each_iteration=True)
    data = data.map(lambda i: tuple(column[i] for column in columns),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    lengths = [max(len(s), len(t)) for s, t in zip(sources, targets)]
    boundaries = bucket_boundaries(lengths)
    data = data.bucket_by_sequence_length(
        element_length_func=lambda s, d, t: tf.maximum(tf.shape(s)[0], tf.shape(t)[0]),
        bucket_boundaries=boundaries,
        bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
    )
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
