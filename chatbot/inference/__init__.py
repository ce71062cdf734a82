"""Inference: from a loaded model to reply text. Retrieval over the training pairs
(``retrieval``) and the compiled decode loops (``generator``: greedy, beam search, sampling).
It may import the model and data layers, never the dialogue manager or anything above.
"""
