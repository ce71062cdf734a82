"""Data: everything between a corpus file and the tensors a model trains on.

Owns text normalisation (``text``, the one place text is cleaned; ``spelling``, the one place
typos are corrected), corpus readers and tools (``corpus``, ``corpus_tools``), training noise
(``noise``), the tokenizer (``tokenizer``) and the tf.data pipeline (``dataset``). The first
step of the flow: it may import only the leaf modules (``chatbot.config``, ``chatbot.errors``,
``chatbot.files``, ``chatbot.version``).
"""
