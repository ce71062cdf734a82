"""Inference: from a loaded model to reply text. Retrieval over the training pairs
(``retrieval``, with the sentence encoder of hybrid retrieval in ``sentence_encoder``) and the compiled decode loops (``generator``: greedy, beam search, sampling).
It may import the model and data layers, never the dialogue manager or anything above.
"""
