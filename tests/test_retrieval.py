"""Retrieval feeds the decoder: the training pairs nearest to what was typed are added to the
model's input, and the reply is always what the decode loop produced."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz import fuzz

from chatbot.config import Config
from chatbot.errors import ConfigError
from chatbot.model.bundle import TRAIN, Bundle
from chatbot.data.corpus import Example
from chatbot.inference import retrieval
from chatbot.inference.retrieval import AnswerMemory, _sorted_words
from chatbot.data.text import match_key


def test_match_key_folds_case_punctuation_and_contractions():
    assert match_key("What's  YOUR name?!") == match_key("what is your name") == "what is your name"
    assert match_key("I can’t hear") == match_key("i cannot hear") == "i can not hear"
    assert match_key("whats ur name") == "what is your name"
    assert match_key("?!") == ""
    assert match_key("❤️ !") == "❤️" and match_key("👋👋") == "👋👋"  # an emoji question is still found
    # Combining marks stay in their word: "who" and "ear" in Hindi were one key ('यह क न ह').
    assert match_key("यह कौन है?") == "यह कौन है" != match_key("यह कान है?")
    # Arabic and Hebrew vowel points are optional: with or without them, one question (they
    # made these 0.70-0.78 alike); Turkish "İ" casefolds to "i" and a dot, "NEDİR" is "nedir".
    assert match_key("مَا اسْمُكَ؟") == match_key("ما اسمك؟") == "ما اسمك"
    assert match_key("מַה הַשָּׁעָה?") == match_key("מה השעה?")
    assert match_key("İSTANBUL'UN NÜFUSU NEDİR?") == match_key("istanbul'un nüfusu nedir") == "istanbul'un nüfusu nedir"


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
    [(question, answer, alike)] = memory.retrieve("Tell me a joke!", 1)
    assert (question, answer) == ("Tell me a joke", "Knock knock.") and 0.99 < alike < 1.0
    # Equal keys: the raw text breaks the tie.
    twins = AnswerMemory([Example((), "I'm also good.", "Good to hear."), Example((), "I am also good.", "Good.")])
    assert [m.question for m in twins.nearest("I am alos good.", 2, 0.6)] == ["I am also good.", "I'm also good."]
    # A swapped pair of letters costs one edit: "ahet" is nearer "hate" than "eat".
    swapped = AnswerMemory([Example((), "do you eat", "No."), Example((), "Do you hate?", "Never.")])
    assert swapped.nearest("Do you ahet?", 2, 0.6)[0].question == "Do you hate?"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text("abcdeé'", min_size=1, max_size=6), min_size=1, max_size=6),
       st.lists(st.text("abcdeé'", min_size=1, max_size=6), min_size=1, max_size=6))
def test_the_memory_scores_reordered_words_as_token_sort_ratio_does(words, other_words):
    """The scan compares pre-sorted keys with ``fuzz.ratio`` instead of calling
    ``token_sort_ratio`` (which sorts both sides per comparison): the same scores."""
    key, other = " ".join(words), " ".join(other_words)
    assert fuzz.ratio(_sorted_words(key), _sorted_words(other)) == fuzz.token_sort_ratio(key, other)


def test_a_large_memory_finds_reordered_questions_among_its_index_candidates(monkeypatch):
    monkeypatch.setattr(retrieval, "INDEX_MIN_QUESTIONS", 3)  # build the index on a small memory
    memory = AnswerMemory([Example((), q, a) for q, a in (("Where are you from?", "The cloud."),
                                                          ("What is two plus two?", "Four."),
                                                          ("Tell me a joke", "Knock knock."))])
    assert memory._index is not None and memory._sorted_keys is None
    assert memory.nearest("from where are you", k=1, min_similarity=0.6)[0].question == "Where are you from?"


def test_bundles_store_their_training_pairs(tiny_bundle_path, tiny_pairs):
    bundle = Bundle.load(tiny_bundle_path)
    assert TRAIN in bundle.manifest["files"]
    assert sorted((e.question, e.answer) for e in bundle.train) == sorted(tiny_pairs)


def test_retrieve_shows_one_answer_per_question_and_can_leave_one_out():
    memory = AnswerMemory([Example((), "Tell me a joke", "Knock knock."),
                           Example((), "Tell me a joke", "Why not?"),
                           Example((), "Where are you from?", "The cloud.")])
    shown = memory.retrieve("tell me a jkoe", 2)
    assert [(q, a) for q, a, _ in shown] == [("Tell me a joke", "Knock knock."), ("Where are you from?", "The cloud.")]
    assert shown[0][2] > shown[1][2]  # most alike first
    assert memory.retrieve("tell me a joke", 1, prefer="Why not?")[0][1] == "Why not?"  # training shows its own
    assert [q for q, _, _ in memory.retrieve("tell me a joke", 2, exclude="Tell me a joke")] == ["Where are you from?"]


def test_the_reply_is_always_the_decoded_text(tiny_bot, tiny_pairs):
    """Retrieval only adds to the model's input: every reply's ids are the decode loop's own,
    and its text is exactly those ids decoded, with or without retrieval."""
    questions = ["waht is yuor name", "the capital of France is what?", "xylophone quantum zebra"]
    for decoding in ({}, {"retrieval": False}, {"beam": 3, "n_best": 2}):
        for g in tiny_bot.generate(questions, decoding=decoding):
            assert g.text == tiny_bot.bundle.tokenizer.decode(g.token_ids)
            assert 0.0 <= g.confidence <= 1.0 and np.isclose(g.confidence, np.exp(g.score), atol=1e-6)


@pytest.mark.parametrize("decoding", [
    {"beam": 3, "n_best": 2},  # each input alone, in the XLA beam loop, then the scoring pass
    {"beam": 3, "n_best": 1},  # one XLA beam loop for the batch, then the scoring pass
    {"strategy": "greedy"},  # the XLA greedy loop
    {"strategy": "sample", "seed": 5},  # the graph loop
], ids=["beam-alone", "beam-batch", "greedy", "sample"])
def test_the_unaided_weight_doubts_replies_that_only_the_retrieved_pairs_support(tiny_bot, decoding):
    """``decoding.unaided_weight`` w: each hypothesis' confidence is exp(score + w x its score
    given the question without retrieved pairs), whichever loop decoded it (greedy and sampling
    score it as they decode, beam search's replies are scored after). The replies and their ranking
    stay the same; a reply copied from a shown pair to a question the corpus does not hold loses most."""
    known = ["What is your name?", "waht is yuor name", "How old are you?"]
    unknown = ["xylophone quantum zebra", "do you like pizza on mondays"]
    plain = tiny_bot.generate(known + unknown, decoding=decoding)
    weighed = tiny_bot.generate(known + unknown, decoding={**decoding, "unaided_weight": 0.5})
    for question, p, g in zip(known + unknown, plain, weighed):
        assert (g.text, g.token_ids) == (p.text, p.token_ids)
        assert [t for t, _ in g.alternatives] == [t for t, _ in p.alternatives]
        # The same tokens, scored in a batch of another shape (with or without bare rows): equal
        # up to float rounding.
        assert np.allclose([s for _, s in g.alternatives], [s for _, s in p.alternatives], rtol=1e-6, atol=1e-7)
        texts = [text for text, _ in g.alternatives]
        unaided = tiny_bot.generator.score([[question]] * len(texts), texts, retrieval=False)
        expected = [np.exp(score + 0.5 * u) for (_, score), u in zip(g.alternatives, unaided)]
        assert np.allclose(g.confidences, expected, rtol=1e-4) and g.confidence == g.confidences[0]
        if len(g.alternatives) > 1:
            assert g.choose(1).confidence == g.confidences[1]
    drop = [g.confidence / p.confidence for p, g in zip(plain, weighed)]
    # Every unknown question's reply loses more than any known one's (how much each loses is the
    # tiny model's own: the one TensorFlow 2.21 trained kept 0.62 and 0.76 of them; another one's
    # decoder alone liked its reply to "xylophone quantum zebra", 0.97).
    assert min(drop[:len(known)]) > 0.99 > max(drop[len(known):])
    # Without retrieval there is nothing to weigh: the confidence is exp(score).
    for g in tiny_bot.generate(unknown, decoding={**decoding, "retrieval": False, "unaided_weight": 0.5}):
        assert np.isclose(g.confidence, np.exp(g.score), atol=1e-6)


def test_a_batch_too_big_for_the_xla_loop_gets_the_same_confidences(tiny_bot):
    """Batches above ``XLA_MAX_BATCH`` decode in the graph loop, where rows leave as they end
    (bare rows with them): the confidences agree with the XLA loop's."""
    from chatbot.inference.decoding import XLA_MAX_BATCH

    questions = ["What is your name?", "waht is yuor name", "How old are you?", "xylophone quantum zebra"]
    many = (questions * XLA_MAX_BATCH)[:XLA_MAX_BATCH + 2]
    settings = {"strategy": "greedy", "unaided_weight": 0.5}
    together = tiny_bot.generate(many, decoding=settings)
    for question, g in zip(many, together):
        [alone] = tiny_bot.generate([question], decoding=settings)
        assert g.token_ids == alone.token_ids
        assert np.isclose(g.confidence, alone.confidence, rtol=1e-4)


def test_retrieval_helps_the_model_with_mistyped_questions(tiny_bot):
    questions = ["waht is yuor name", "how old are yuo", "What is the capitl of France"]
    expected = ["My name is Tiny.", "I was trained a moment ago.", "Paris is the capital of France."]
    with_retrieval = tiny_bot.generate(questions)
    assert [g.text for g in with_retrieval] == expected
    assert all(g.retrieved and g.retrieved[0][1] == answer for g, answer in zip(with_retrieval, expected))
    alone = tiny_bot.generate(questions, decoding={"retrieval": False})
    assert all(g.retrieved == () for g in alone)
    # One by one gives the same replies as the batch.
    assert [tiny_bot.generate([q])[0].text for q in questions] == expected


def test_what_the_model_was_shown_is_stored_with_the_reply(bot, tiny_pairs):
    reply = bot.reply("waht is yuor name")
    assert reply.retrieved and reply.retrieved[0][0] == "What is your name?"
    stored = bot.history(reply.session_id)[-1]
    assert stored.details["retrieved"][0] == {"question": "What is your name?", "answer": "My name is Tiny.",
                                              "similarity": round(reply.retrieved[0][2], 4)}
    assert stored.confidence == reply.confidence and stored.details["dialogue"]["min_confidence"] == 0.0


def test_retrieval_does_not_retrace(tiny_bot, tiny_pairs):
    # Both greedy loops once: the XLA one (up to 8 inputs) and the graph one (more).
    tiny_bot.generate(["warm up"] + [q for q, _ in tiny_pairs[:2]])
    tiny_bot.generate(["warm up"] + [q for q, _ in tiny_pairs[:10]])
    before = tiny_bot.generator.trace_count
    for n in range(1, 12):
        tiny_bot.generate([q[:-1] + "??" for q, _ in tiny_pairs[:n]])
        tiny_bot.generate([q for q, _ in tiny_pairs[:n]], decoding={"retrieval": False})
    assert tiny_bot.generator.trace_count == before


def test_a_format_1_bundle_loads_as_the_model_it_was(tiny_bundle_path, tmp_path):
    """Bundles written before retrieve and refine (decoding.rerank, no retrieval markers) load
    with retrieval and copying off; their old rerank setting is dropped."""
    from chatbot.model.bundle import CONFIG, FORMAT_VERSION, upgrade_config

    raw = json.loads((tiny_bundle_path / CONFIG).read_text())
    for key in ("retrieved_pairs", "noisy_copies", "retriever"):
        raw["data"].pop(key)
    raw["model"].pop("copy_attention")
    raw["decoding"]["retrieval"] = True
    raw["decoding"].update(rerank=8, rerank_min_similarity=0.6)
    old = upgrade_config(raw, 1)
    assert old["data"]["retrieved_pairs"] == 0 and old["model"]["copy_attention"] is False
    assert "rerank" not in old["decoding"] and "rerank" in raw["decoding"]  # the input is left alone
    assert old["data"]["retriever"] == "lexical"
    whole = json.loads((tiny_bundle_path / CONFIG).read_text())
    assert upgrade_config(whole, FORMAT_VERSION) == whole
    assert upgrade_config(whole, 4) == whole  # a recurrent model's format 4 is today's
    # Keys whose defaults became the default recipe's: a config written without one meant the
    # default of its day, at every format (old = format 1: no noisy copies before retrieval).
    del whole["data"]["leave_out_own"], whole["data"]["substitute_words"], whole["training"]["batch_size"]
    today = upgrade_config(whole, FORMAT_VERSION)
    assert (today["data"]["leave_out_own"], today["data"]["substitute_words"], today["training"]["batch_size"]) \
        == (0.25, False, 32)
    assert (old["data"]["noisy_copies"], Config().data.noisy_copies, Config().training.batch_size) == (0, 3, 64)


def test_an_old_bundles_config_given_to_train_means_what_loading_it_means(tiny_bundle_path, tmp_path):
    """`train --config OLD/config.json` and `train --from OLD` read the file raw: a format-1
    bundle's decoding.rerank was an unknown key, a format-3 one's copy_continuation the new
    default, though loading the same bundle upgrades both."""
    import shutil

    from chatbot.model.bundle import CONFIG, MANIFEST, config_file

    old = tmp_path / "old"
    shutil.copytree(tiny_bundle_path, old)
    raw = json.loads((old / CONFIG).read_text())  # as format 1 wrote it
    for key in ("retrieved_pairs", "noisy_copies", "retriever"):
        raw["data"].pop(key)
    raw["model"].pop("copy_attention")
    raw["decoding"].update(rerank=8, rerank_min_similarity=0.6)
    (old / CONFIG).write_text(json.dumps(raw))
    manifest = json.loads((old / MANIFEST).read_text())
    (old / MANIFEST).write_text(json.dumps({**manifest, "format_version": 1}))
    config = config_file(old / CONFIG)
    assert config.data.retrieved_pairs == 0 and config.model.copy_attention is False
    shutil.copy(old / CONFIG, tmp_path / "config.json")  # the same file outside a bundle: as written
    with pytest.raises(ConfigError, match="unknown config key 'decoding.rerank'"):
        config_file(tmp_path / "config.json")


def test_a_format_3_bundle_reads_words_as_typed_and_copies_without_the_continuation_bonus(tiny_bundle_path):
    from chatbot.config import Config
    from chatbot.model.bundle import CONFIG, upgrade_config

    raw = json.loads((tiny_bundle_path / CONFIG).read_text())
    raw["data"].pop("spelling")
    raw["model"].pop("copy_continuation")
    upgraded = Config.from_dict(upgrade_config(raw, 3))
    assert upgraded.data.spelling is False and upgraded.model.copy_continuation is False
    assert upgraded.data.retriever == raw["data"]["retriever"]  # nothing else changes
    assert Config.from_dict(raw).data.spelling is True  # today's default for new models


def test_a_format_2_bundle_keeps_the_lexical_retrieval_it_was_trained_with(tiny_bundle_path):
    from chatbot.model.bundle import CONFIG, upgrade_config

    raw = json.loads((tiny_bundle_path / CONFIG).read_text())
    raw["data"].pop("retriever")
    upgraded = upgrade_config(raw, 2)
    assert upgraded["data"]["retriever"] == "lexical"
    assert upgraded["data"]["retrieved_pairs"] == raw["data"]["retrieved_pairs"]  # nothing else changes


def test_retrieved_bonus_reranks_only_what_the_beam_decoded(tiny_bot):
    """``decoding.retrieved_bonus`` moves a hypothesis that repeats a retrieved answer up the
    beam's n-best list; it adds no text the decoder did not produce, and a reply keeps its own
    score."""
    from chatbot.data.text import normalise_answer

    questions = ["waht is yuor name", "the capital of France is what?", "xylophone quantum zebra",
                 "how old are yuo"]
    plain = tiny_bot.generate(questions, decoding={"beam": 4, "n_best": 4})
    ranked = tiny_bot.generate(questions, decoding={"beam": 4, "n_best": 4, "retrieved_bonus": 2.0})
    moved = 0
    for before, after in zip(plain, ranked):
        assert sorted(before.alternatives) == sorted(after.alternatives)  # the same hypotheses
        alike = {normalise_answer(answer): similarity for _, answer, similarity in after.retrieved}
        keys = [score + 2.0 * alike.get(normalise_answer(text), 0.0) for text, score in after.alternatives]
        assert keys == sorted(keys, reverse=True)
        assert (after.text, after.score) == after.alternatives[0]  # its own score, not the bonus
        moved += after.alternatives != before.alternatives
    assert moved  # the bonus changed some order here, so the assertions above test something
    # n_best 1 takes the best of the whole ranked beam; without retrieval there is nothing to rank by.
    assert [g.text for g in tiny_bot.generate(questions, decoding={"beam": 4, "retrieved_bonus": 2.0})] == \
        [g.text for g in ranked]
    assert [g.alternatives for g in tiny_bot.generate(
        questions, decoding={"beam": 4, "n_best": 4, "retrieval": False, "retrieved_bonus": 2.0})] == \
        [g.alternatives for g in tiny_bot.generate(questions, decoding={"beam": 4, "n_best": 4, "retrieval": False})]
