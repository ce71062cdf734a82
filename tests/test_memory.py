"""The answer memory and reranking: training answers of the questions nearest to what was
typed compete with the decoded reply, scored by the model (``decoding.rerank``)."""

from __future__ import annotations

import numpy as np
import pytest

from chatbot.model.bundle import TRAIN, Bundle
from chatbot.data.corpus import Example
from chatbot.errors import ConfigError
from chatbot.inference.retrieval import AnswerMemory
from chatbot.data.text import match_key

RERANK = {"rerank": 4, "rerank_min_similarity": 0.6}


def test_match_key_folds_case_punctuation_and_contractions():
    assert match_key("What's  YOUR name?!") == match_key("what is your name") == "what is your name"
    assert match_key("I can’t hear") == match_key("i cannot hear") == "i can not hear"
    assert match_key("whats ur name") == "what is your name"
    assert match_key("?!") == ""


def test_nearest_finds_typos_and_reordering_and_respects_the_threshold():
    memory = AnswerMemory([Example((), "Tell me a joke", "Knock knock."),
                           Example((), "Tell me a joke", "Why not?"),
                           Example((), "Where are you from?", "The cloud."),
                           Example((), "What is two plus two?", "Four."),
                           Example(("Hi",), "Who are you?", "Skipped: it has context.")])
    assert len(memory) == 3  # the example with context turns is not a single question
    best = memory.nearest("tell me a jkoe", k=2, min_similarity=0.6)[0]
    assert best.question == "Tell me a joke" and best.answers == ("Knock knock.", "Why not?")
    assert 0.9 < best.similarity < 1.0
    assert memory.nearest("from where are you", k=2, min_similarity=0.6)[0].question == "Where are you from?"
    assert memory.nearest("Explain quantum chromodynamics", k=3, min_similarity=0.6) == []
    found = memory.candidates("Tell me a joke!", 2, 0.6)
    assert list(found) == ["Knock knock.", "Why not?"] and 0.99 < found["Why not?"] < 1.0
    # Equal keys: the raw text breaks the tie.
    twins = AnswerMemory([Example((), "I'm also good.", "Good to hear."), Example((), "I am also good.", "Good.")])
    assert [m.question for m in twins.nearest("I am alos good.", 2, 0.6)] == ["I am also good.", "I'm also good."]
    # A swapped pair of letters costs one edit: "ahet" is nearer "hate" than "eat".
    swapped = AnswerMemory([Example((), "do you eat", "No."), Example((), "Do you hate?", "Never.")])
    assert swapped.nearest("Do you ahet?", 2, 0.6)[0].question == "Do you hate?"


def test_bundles_store_their_training_pairs(tiny_bundle_path, tiny_pairs):
    bundle = Bundle.load(tiny_bundle_path)
    assert TRAIN in bundle.manifest["files"]
    assert sorted((e.question, e.answer) for e in bundle.train) == sorted(tiny_pairs)


def test_rerank_answers_mistyped_and_reworded_questions_from_memory(tiny_bot, tiny_pairs):
    questions = ["waht is yuor name", "the capital of France is what?", "how old are you"]
    expected = ["My name is Tiny.", "Paris is the capital of France.", "I was trained a moment ago."]
    plain = tiny_bot.generate(questions[:2])
    assert [g.text for g in plain] != expected[:2] and {g.origin for g in plain} == {"decoded"}

    reranked = tiny_bot.generate(questions, decoding=RERANK)
    assert [g.text for g in reranked] == expected
    assert reranked[0].origin == "memory" and reranked[2].origin == "decoded"  # a corpus question decodes right
    # The reply's score is the model's own: its mean log-probability given what was typed.
    forced = tiny_bot.generator.score([[q] for q in questions], expected)
    assert np.allclose([g.score for g in reranked], forced, atol=1e-4)
    assert reranked[0].alternatives[0] == (expected[0], reranked[0].score)
    # The n-best list keeps its asked-for length: the best candidates, memory answers included.
    [nbest] = tiny_bot.generate(questions[:1], decoding={**RERANK, "beam": 3, "n_best": 2})
    assert len(nbest.alternatives) == 2 and nbest.alternatives[0][0] == expected[0]
    # One by one gives the same replies as the batch.
    assert [tiny_bot.generate([q], decoding=RERANK)[0].text for q in questions] == expected


def test_inputs_unlike_any_training_question_are_decoded(tiny_bot):
    [far] = tiny_bot.generate(["xylophone quantum zebra"], decoding=RERANK)
    [plain] = tiny_bot.generate(["xylophone quantum zebra"])
    assert far.origin == "decoded" and far.text == plain.text and far.alternatives == plain.alternatives


def test_rerank_does_not_retrace(tiny_bot, tiny_pairs):
    tiny_bot.generate(["warm up the scorer"] + [q for q, _ in tiny_pairs[:2]], decoding=RERANK)
    before = tiny_bot.generator.trace_count
    for n in range(1, 12):
        tiny_bot.generate([q[:-1] + "??" for q, _ in tiny_pairs[:n]], decoding=RERANK)
    assert tiny_bot.generator.trace_count == before


def test_rerank_settings_are_validated(tiny_bot):
    for bad, message in [({"rerank": -1}, "rerank"), ({"rerank_min_similarity": 1.5}, "rerank_min_similarity")]:
        with pytest.raises(ConfigError, match=message):
            tiny_bot.generate(["hi"], decoding=bad)
