"""Model: the Keras encoder-decoder (``network``) and the bundle that stores it on disk
(``bundle``: config, tokenizer, weights, training pairs, metrics; written atomically, loaded
safely). It reads the data layer's tokenizer and examples and nothing above it.
"""
