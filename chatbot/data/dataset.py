"""tf.data pipelines: encoded examples -> teacher-forcing batches, padded per batch.

Examples are bucketed by length so a batch of short greetings is not padded to the length
of the longest code sample in the corpus.
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


# Short examples get fine buckets (a batch is padded only to its own longest member); the few
# long ones share coarse buckets with full-size batches. An RNN step costs about the same at
# batch 4 as at batch 32 on a CPU, so a long bucket split into many small batches pays for
# its hundreds of steps again and again (measured: +12% samples/s on the English corpus).
BUCKET_EDGES = (4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 64, 96, 128, 256)
TOKENS_PER_BATCH_FACTOR = 512  # caps memory only for very long examples: batch_size * 512 tokens


def bucket_plan(max_length: int, batch_size: int) -> tuple[list[int], list[int]]:
    """Bucket boundaries up to ``max_length`` and a batch size per bucket (token budget)."""
    edges = [e for e in BUCKET_EDGES if e <= max_length] or [max_length]
    budget = batch_size * TOKENS_PER_BATCH_FACTOR
    sizes = [max(1, min(batch_size, budget // edge)) for edge in edges + [max_length + 1]]
    return edges, sizes


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
    lengths = np.array([max(len(s), len(t)) for s, t in zip(sources, targets)])
    boundaries, batch_sizes = bucket_plan(int(lengths.max()), batch_size)
    bucket_of = np.searchsorted(boundaries, lengths, side="right")

    parts, batches = [], []
    for bucket in np.unique(bucket_of):
        members = np.flatnonzero(bucket_of == bucket)
        part = tf.data.Dataset.from_tensor_slices(members)
        if shuffle:
            part = part.shuffle(len(members), seed=seed + int(bucket), reshuffle_each_iteration=True)
        size = batch_sizes[bucket]
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
