"""Diversity (issue 18): the top-k share metric and maximum mutual information reranking."""

from __future__ import annotations

import numpy as np
import pytest

from chatbot.evaluation.metrics import distinct_n, top_share

QUESTIONS = ["hello", "what is your name", "xylophone quantum zebra", "how old are you",
             "tell me a joke", "do you like music"]


def test_top_share_counts_the_replies_that_are_one_of_the_k_most_frequent():
    replies = ["yeah"] * 5 + ["Yeah."] * 2 + ["i don't know"] * 2 + ["a", "b", "c"]
    assert top_share(replies, 1) == pytest.approx(7 / 12)  # "yeah" and "Yeah." are one reply
    assert top_share(replies, 2) == pytest.approx(9 / 12)
    assert top_share(replies, 10) == 1.0 and top_share([], 10) == 0.0
    assert top_share([f"reply {i}" for i in range(100)], 10) == pytest.approx(0.1)
    assert distinct_n(replies, 1) < distinct_n([f"reply {i}" for i in range(12)], 1)


def test_unconditional_scores_are_the_models_scores_given_an_empty_input(tiny_bot):
    generator = tiny_bot.generator
    answers = ["My name is Tiny.", "I am a bot."]
    ids = [np.array(generator.tokenizer.encode_target(a, 40), np.int32) for a in answers]
    assert generator.unconditional_scores(ids) == pytest.approx(generator.score([[""], [""]], answers), abs=1e-5)
    assert generator.unconditional_scores([]).shape == (0,)


def test_mmi_reranks_only_what_the_beam_decoded(tiny_bot, monkeypatch):
    """``decoding.mmi_weight`` w orders the beam's hypotheses by score - w x (score given an empty
    input); it adds no text, each hypothesis keeps its own score, and greedy decoding ignores it.

    The anti-language model is replaced here by a known one (longer replies are less likely
    whatever the input), because a beam may spell a text in other subword ids than the
    tokenizer would, so its real figure cannot be recomputed from the text."""
    generator = tiny_bot.generator
    generic = lambda text: -len(text) / 10  # noqa: E731
    monkeypatch.setattr(generator, "unconditional_scores", lambda hypotheses: np.array(
        [generic(generator.tokenizer.decode(ids)) for ids in hypotheses], np.float32))
    weight = 0.5
    plain = tiny_bot.generate(QUESTIONS, decoding={"beam": 4, "n_best": 4, "retrieval": False})
    ranked = tiny_bot.generate(QUESTIONS, decoding={"beam": 4, "n_best": 4, "retrieval": False,
                                                    "mmi_weight": weight})
    moved = 0
    for before, after in zip(plain, ranked):
        assert sorted(before.alternatives) == sorted(after.alternatives)  # the same hypotheses
        assert (after.text, after.score) == after.alternatives[0]  # its own score
        keys = [score - weight * generic(text) for text, score in after.alternatives]
        assert keys == pytest.approx(sorted(keys, reverse=True), abs=1e-5)
        moved += after.alternatives != before.alternatives
    assert moved  # the weight changed some order here, so the assertions above test something
    # n_best 1 takes the best of the whole reranked beam; greedy decoding has nothing to rerank.
    best = tiny_bot.generate(QUESTIONS, decoding={"beam": 4, "retrieval": False, "mmi_weight": weight})
    assert [g.text for g in best] == [g.text for g in ranked]
    greedy = {"strategy": "greedy", "retrieval": False}
    assert [g.text for g in tiny_bot.generate(QUESTIONS, decoding={**greedy, "mmi_weight": weight})] == \
        [g.text for g in tiny_bot.generate(QUESTIONS, decoding=greedy)]
