"""Inference: from a loaded model to reply text. Retrieval over the training pairs
(``retrieval``, with the sentence encoder of hybrid retrieval in ``sentence_encoder``), the
compiled decode loops (``decoding``: greedy, beam search, sampling, scoring) and the generator
that runs one reply's whole path through them (``generator``).
It may import the model and data layers, never the dialogue manager or anything above.
"""
