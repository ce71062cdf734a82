"""Evaluation: how good a model's replies are. Text metrics (``metrics``: the one exact-match
definition, BLEU/chrF, distinct-n), ``evaluate`` (figures on a split or a corpus), golden checks
(``golden``) and plots (``plots``). It judges models through ``ChatBot`` and may import the
dialogue layer and everything below; only training and the interfaces import it.
"""
