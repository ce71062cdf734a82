"""The bundled default model: present, small, and right on the corpus' own questions, by its
decoded replies. The same checks fail a model that has not learned (so they judge the model,
not the retrieval beside it)."""

from __future__ import annotations

import random

import pytest

from chatbot.data.corpus import load_corpus
from chatbot.dialogue.bot import ChatBot, ReplyRequest
from chatbot.evaluation.metrics import answers_by_input, is_exact
from chatbot.model.bundle import MODELS_DIR, Bundle

DEFAULT = MODELS_DIR / "default"
ENGLISH = MODELS_DIR.parent / "corpora" / "english"
AI_ANSWERS = {
    "Artificial Intelligence is the branch of engineering and science devoted to constructing machines that think.",
    "AI is the field of science which concerns itself with building hardware and software that replicates the functions of the human mind.",
}


def wrong_replies(bot: ChatBot, examples, sample: int, seed: int = 0, decoding=None) -> list[tuple[str, str]]:
    """(question, reply) for each reply, of a seeded sample of training questions, that is not
    one of that question's corpus answers."""
    accepted = answers_by_input(examples)
    questions = sorted(q for (q,) in (k for k in accepted if len(k) == 1) if len(accepted[(q,)]) < 5)
    chosen = random.Random(seed).sample(questions, min(sample, len(questions)))
    replies = bot.generate(chosen, decoding=decoding)
    return [(q, r.text) for q, r in zip(chosen, replies) if not is_exact(r.text, accepted[(q,)])]


@pytest.fixture(scope="module")
def default_bot():
    with ChatBot.load() as bot:
        yield bot


@pytest.fixture(scope="module")
def english():
    return load_corpus(ENGLISH).examples()


def test_default_bundle_is_under_20_mb():
    size = sum(p.stat().st_size for p in DEFAULT.rglob("*") if p.is_file())
    assert 0 < size < 20 * 1024 * 1024


def test_default_model_answers_corpus_questions(default_bot, english):
    """A seeded sample of training questions: each reply must be one of that question's
    answers in the corpus (one miss allowed), with retrieval and with the decoder alone."""
    wrong = wrong_replies(default_bot, english, sample=24)
    assert len(wrong) <= 1, wrong
    alone = wrong_replies(default_bot, english, sample=24, decoding={"retrieval": False})
    assert len(alone) <= 1, alone


def test_default_model_knows_a_few_classics(default_bot):
    assert default_bot.ask("What is AI?") in AI_ANSWERS
    assert default_bot.ask("waht is AI") in AI_ANSWERS  # a typo: retrieval shows it, the model copies


OFF_CORPUS = ["What is the boiling point of mercury in kelvin?", "Book me a table for four at eight tonight",
              "My sister had twins last week", "qwzx plmo vvtr", "Translate good morning into Finnish",
              "Who won the 1994 World Cup?", "How many moons does Neptune have?", "Can you order me a pizza?",
              "What time does the bakery on Elm Street close?", "Remind me to water the plants"]


def test_the_default_model_falls_back_on_questions_its_corpus_cannot_answer(default_bot, english):
    """Its confidence (``decoding.unaided_weight``) and ``dialogue.min_confidence``: at least
    half of these off-corpus questions (none in bench/data; 6 of 10 when written, 5 with the
    confidence of the decoder with retrieval alone) get the fallback, and no training question of
    a seeded sample does (the threshold is capped below every right training reply's confidence)."""
    def replies(questions):  # stateless: nothing stored
        return default_bot.reply_many([ReplyRequest(q, store=False) for q in questions])

    fallbacks = [r.fallback for r in replies(OFF_CORPUS)]
    assert sum(fallbacks) >= 5, list(zip(OFF_CORPUS, fallbacks))
    questions = random.Random(1).sample(sorted({e.question for e in english if not e.context}), 24)
    assert not [(q, r.confidence) for q, r in zip(questions, replies(questions)) if r.fallback]


def test_the_checks_fail_the_same_model_with_untrained_weights(default_bot, english):
    """The default model's config and tokenizer with freshly initialised weights, the same
    training pairs for retrieval: the check above must fail (it judges the network)."""
    from chatbot.model.network import Seq2Seq

    shipped = default_bot.bundle
    untrained = Seq2Seq(shipped.tokenizer.vocab_size, shipped.config.model)
    untrained.build_for_inference()
    bundle = Bundle(shipped.config, shipped.tokenizer, untrained, train=shipped.train)
    with ChatBot(bundle, warm_up=False) as bot:
        wrong = wrong_replies(bot, english, sample=6, decoding={"max_length": 24})
    assert len(wrong) >= 5, wrong
