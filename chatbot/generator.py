"""Inference: encode once, then a ``tf.function``-compiled greedy loop over decoder steps.

The whole loop is one graph with a fixed signature (``[batch, time]`` int32 source ids and
a scalar max length), so it is traced once per generator and never per question, and no
Python runs per generated token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import tensorflow as tf

from .config import DataConfig, DecodingConfig
from .model import Seq2Seq
from .tokenizer import END, PAD, START, TextTokenizer


@dataclass(frozen=True)
class Generation:
    text: str
    score: float  # mean log-probability per generated token ([END] included); 0 is certain
    tokens: int
    latency_ms: float


class Generator:
    def __init__(self, model: Seq2Seq, tokenizer: TextTokenizer, data: DataConfig,
                 decoding: DecodingConfig, max_batch: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.data = data
        self.decoding = decoding
        self.max_batch = max_batch
        self._greedy = tf.function(
            self._greedy_loop,
            input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([], tf.int32)],
        )

    def warm_up(self) -> None:
        """Trace and run the compiled loop once, so the first real reply does not pay for it."""
        self._greedy(tf.constant([[START]], tf.int32), tf.constant(2, tf.int32))

    @property
    def trace_count(self) -> int:
        return self._greedy.experimental_get_tracing_count()

    def _greedy_loop(self, source, max_length):
        encoder_outputs, states, source_mask = self.model.encode(source, training=False)
        batch = tf.shape(source)[0]
        token = tf.fill([batch], START)
        finished = tf.zeros([batch], tf.bool)
        total_logprob = tf.zeros([batch], tf.float32)
        lengths = tf.zeros([batch], tf.int32)
        output = tf.TensorArray(tf.int32, size=0, dynamic_size=True)
        for step in tf.range(max_length):
            logits, states = self.model.decode_step(token, states, encoder_outputs, source_mask)
            logprobs = tf.nn.log_softmax(tf.cast(logits, tf.float32))
            best = tf.argmax(logprobs, axis=-1, output_type=tf.int32)
            best_logprob = tf.gather(logprobs, best, axis=1, batch_dims=1)
            best = tf.where(finished, PAD, best)
            total_logprob += tf.where(finished, 0.0, best_logprob)
            lengths += tf.cast(tf.logical_not(finished), tf.int32)
            output = output.write(step, best)
            finished = tf.logical_or(finished, tf.equal(best, END))
            token = best
            if tf.reduce_all(finished):
                break
        return tf.transpose(output.stack()), total_logprob, lengths

    def encode_inputs(self, inputs: Sequence[Sequence[str]]) -> np.ndarray:
        """Each input is a list of turns (context..., question); returns padded ids."""
        ids = [self.tokenizer.encode_input(list(turns), self.data.max_input_tokens) or [PAD]
               for turns in inputs]
        width = max(len(i) for i in ids)
        batch = np.zeros((len(ids), width), dtype=np.int32)
        for row, seq in enumerate(ids):
            batch[row, :len(seq)] = seq
        return batch

    def generate(self, inputs: Sequence[Sequence[str]], max_length: int | None = None) -> list[Generation]:
        """Replies for many inputs, decoded together in batches of ``max_batch``."""
        max_length = max_length or self.decoding.max_length
        results: list[Generation] = []
        for start in range(0, len(inputs), self.max_batch):
            chunk = inputs[start:start + self.max_batch]
            began = time.perf_counter()
            ids, logprob, lengths = self._greedy(tf.constant(self.encode_inputs(chunk)),
                                                 tf.constant(max_length, tf.int32))
            ids, logprob, lengths = ids.numpy(), logprob.numpy(), lengths.numpy()
            latency = (time.perf_counter() - began) * 1000 / len(chunk)
            for row in range(len(chunk)):
                n = int(lengths[row])
                results.append(Generation(
                    text=self.tokenizer.decode(ids[row, :n]),
                    score=float(logprob[row] / max(n, 1)),
                    tokens=n,
                    latency_ms=latency,
                ))
        return results
