"""Evaluation: how good a model's replies are, measured on pairs it did not learn from.

Two kinds of figures, so that a new model can be compared with an old one:

* teacher-forced (perplexity, token accuracy): the training loss over every answer token alike
  (``token_figures``; the training log's ``val_loss`` averages per batch instead);
* generated (exact match, BLEU, chrF, distinct-n, the top-10 replies' share, the replies' own
  perplexity, reply length, latency): real batched
  replies with the model's decoding settings, as users get them.

A question of the corpus often has several accepted answers; a reply that equals any of them
counts (``metrics.is_exact``), and every one of them is a BLEU/chrF reference.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from chatbot.data.corpus import Example, load_corpus
from chatbot.evaluation.metrics import (
    answers_by_input, corpus_bleu, corpus_chrf, distinct_inputs, distinct_n, input_key, is_exact, perplexity,
    sentence_chrf, top_share, words,
)
from chatbot.errors import BundleError, CorpusError, InputError
from chatbot.evaluation.fallback import FallbackChoice, choose_min_confidence
from chatbot.evaluation.golden import as_chatbot

log = logging.getLogger(__name__)

# --- the report ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ItemResult:
    """One distinct input: what the model said and what would have been right."""

    context: tuple[str, ...]
    question: str
    reply: str
    references: tuple[str, ...]
    exact: bool
    score: float  # the generator's mean log-probability per token (0 is certain)
    confidence: float  # what dialogue.min_confidence is compared with
    chrf: float  # sentence chrF against all references
    tokens: int  # generated tokens, end token excluded
    latency_ms: float

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data.update(context=list(self.context), references=list(self.references),
                    score=round(self.score, 4), confidence=round(self.confidence, 4), chrf=round(self.chrf, 2),
                    latency_ms=round(self.latency_ms, 2))
        return data


@dataclass
class EvaluationReport:
    model: str
    source: str  # "validation", "train" or a corpus path
    pairs: int  # examples evaluated (teacher-forced); ``len(items)`` distinct inputs were asked
    decoding: dict[str, Any]
    loss: float
    perplexity: float
    token_accuracy: float
    exact_match: float
    bleu: float
    chrf: float
    distinct_1: float
    distinct_2: float
    top10_share: float  # share of replies that are one of the 10 most frequent ones
    reply_perplexity: float  # exp(-mean score): how likely the model found its own replies
    reply_tokens: float  # mean per reply
    reply_words: float
    latency_ms: dict[str, float]  # mean, p50, p90 per reply (batch time / batch size)
    items: list[ItemResult]
    fallback: FallbackChoice | None = None  # with questions it should not answer: min_confidence's choice

    @property
    def inputs(self) -> int:
        return len(self.items)

    @property
    def exact_count(self) -> int:
        return sum(item.exact for item in self.items)

    def summary(self) -> dict[str, Any]:
        """Every figure, rounded, without the per-item details: what ``--json`` prints."""
        r = lambda x, n=4: None if x is None else round(x, n)  # noqa: E731
        return {"model": self.model, "source": self.source, "pairs": self.pairs, "inputs": self.inputs,
                "loss": r(self.loss), "perplexity": r(self.perplexity, 3), "token_accuracy": r(self.token_accuracy),
                "exact_match": r(self.exact_match), "exact": self.exact_count,
                "bleu": r(self.bleu, 2), "chrf": r(self.chrf, 2),
                "distinct_1": r(self.distinct_1), "distinct_2": r(self.distinct_2),
                "top10_share": r(self.top10_share), "reply_perplexity": r(self.reply_perplexity, 3),
                "reply_tokens": r(self.reply_tokens, 2), "reply_words": r(self.reply_words, 2),
                "latency_ms": {k: r(v, 2) for k, v in self.latency_ms.items()},
                "decoding": self.decoding, **({"fallback": self.fallback.to_json()} if self.fallback else {})}


def teacher_forced(bundle, examples: Sequence[Example], retrieval: bool | None = None) -> tuple[float, float]:
    """(cross-entropy per target token, token accuracy), teacher-forced on the training's own
    tf.data pipeline, every real token weighed alike (``token_figures``). With ``retrieval``
    (default: the model's own decoding setting), the inputs carry what retrieval finds, as
    replies see them."""
    from chatbot.data.dataset import encode_examples, make_dataset
    from chatbot.data.spelling import speller_for
    from chatbot.inference.retrieval import memory_for
    from chatbot.model.network import token_figures

    config = bundle.config
    retrieved = None
    speller = speller_for(config.data, bundle.train)
    if speller is not None:  # the questions as the model reads them
        examples = [dataclasses.replace(e, question=speller.correct(e.question)) for e in examples]
    memory = memory_for(config.data, bundle.train, bundle.question_vectors)
    if memory is not None and (config.decoding.retrieval if retrieval is None else retrieval):
        retrieved = memory.retrieve_each([e.question for e in examples], config.data.retrieved_pairs)
    sources, targets = encode_examples(examples, bundle.tokenizer, config.data.max_input_tokens,
                                       config.data.max_output_tokens, retrieved,
                                       config.data.max_retrieved_answer_tokens)
    return token_figures(bundle.model, make_dataset(sources, targets, config.training.batch_size))


def evaluate(bot, examples: Sequence[Example], reference: Sequence[Example] | None = None,
             decoding=None, source: str = "examples", unanswerable: Sequence[str] = (),
             min_confidence: float | None = None) -> EvaluationReport:
    """Measure a model (a ``ChatBot`` or a ``Bundle``) on ``examples``.

    A reply counts as exact when it equals any answer its input has in ``reference`` (default:
    the examples themselves; their own answers always count). ``decoding`` overrides the
    model's decoding settings like ``ChatBot.generate``'s. Replies are judged as decoded: the
    dialogue's fallback (``min_confidence``, ``fallback_threshold``) is not applied, as it is
    not by ``generate``. With ``unanswerable`` questions (ones the model should not answer), the
    report also says what ``min_confidence`` (default: the bundle's) does to the replies, and
    which threshold would fall back on the most wrong and unanswerable ones while keeping the
    most right ones, never above a right reply to a training question
    (``fallback.choose_min_confidence``).
    """
    import numpy as np

    from chatbot.data.tokenizer import END

    if not examples:
        raise InputError("nothing to evaluate: no question/answer pairs")
    bot = as_chatbot(bot)
    config = bot.resolve_decoding(decoding)  # a bad setting fails before any work
    bot.wait_ready()
    loss, accuracy = teacher_forced(bot.bundle, examples, config.retrieval)  # with --no-retrieval, without

    accepted = answers_by_input([*(reference or ()), *examples])
    inputs = distinct_inputs(examples)
    generated = bot.generate([i[-1] for i in inputs], [i[:-1] for i in inputs], decoding=config)
    replies = [g.text for g in generated]
    references = [accepted[i] for i in inputs]
    items = [ItemResult(context=i[:-1], question=i[-1], reply=g.text, references=tuple(refs),
                        exact=is_exact(g.text, refs), score=g.score, confidence=g.confidence,
                        chrf=sentence_chrf(g.text, refs),
                        tokens=len(g.token_ids) - (1 if g.token_ids[-1:] == (END,) else 0),
                        latency_ms=g.latency_ms)
             for i, g, refs in zip(inputs, generated, references)]
    latency = np.array([g.latency_ms for g in generated])
    fallback = None
    if unanswerable:
        outside = bot.generate(list(unanswerable), decoding=config)
        current = bot.bundle.config.dialogue.min_confidence if min_confidence is None else min_confidence
        trained = {input_key(e) for e in bot.bundle.train}
        fallback = choose_min_confidence([i.confidence for i in items if i.exact],
                                         [i.confidence for i in items if not i.exact],
                                         [g.confidence for g in outside], current,
                                         taught=[i.confidence for i in items
                                                 if i.exact and (*i.context, i.question) in trained])
    return EvaluationReport(
        model=bot.name, source=source, pairs=len(examples),
        decoding=dataclasses.asdict(config.resolved()),
        loss=loss, perplexity=perplexity(loss), token_accuracy=accuracy,
        exact_match=sum(item.exact for item in items) / len(items),
        bleu=corpus_bleu(replies, references), chrf=corpus_chrf(replies, references),
        distinct_1=distinct_n(replies, 1), distinct_2=distinct_n(replies, 2),
        top10_share=top_share(replies, 10),
        reply_perplexity=perplexity(-float(np.mean([g.score for g in generated]))),
        reply_tokens=float(np.mean([item.tokens for item in items])),
        reply_words=float(np.mean([len(words(r)) for r in replies])),
        latency_ms={"mean": float(latency.mean()), "p50": float(np.percentile(latency, 50)),
                    "p90": float(np.percentile(latency, 90))},
        items=items, fallback=fallback)


# --- where examples come from --------------------------------------------------------------------
@dataclass(frozen=True)
class EvaluationSet:
    examples: list[Example]  # what is asked (and teacher-forced)
    reference: list[Example]  # where accepted answers are looked up
    source: str


def training_split(bundle, everything: list[Example] | None = None) -> list[Example]:
    """The pairs a bundle was trained on, as saved (mixed-in ones included); older bundles,
    without train.jsonl, rebuild them from the recorded corpus (``Bundle.training_examples``,
    or ``everything`` when the caller has it: its errors are the caller's)."""
    bundle = getattr(bundle, "bundle", bundle)
    if bundle.train:
        return list(bundle.train)
    everything = bundle.training_examples() if everything is None else everything
    held_out = {(e.context, e.question, e.answer) for e in bundle.validation}
    return [e for e in everything if (e.context, e.question, e.answer) not in held_out]


def evaluation_set(bundle, split: str | None = None, corpus: str | Path | None = None,
                   limit: int | None = None) -> EvaluationSet:
    """The examples to evaluate a bundle (or a ``ChatBot``) on.

    * ``corpus``: every pair of that corpus file or directory;
    * ``split="validation"``: the bundle's held-out pairs, so the numbers are on unseen data.
      Answers that the same questions have in the training split also count. A
      ``BundleError`` if the model kept none back (``data.validation_fraction`` 0);
    * ``split="train"``: the pairs the model was trained on (the bundle's ``train.jsonl``, or
      for bundles that do not keep it re-read from its corpus: a ``CorpusError`` if it moved or changed since);
    * ``split=None`` (default): the validation split if the model has one, else the training
      split. ``EvaluationSet.source`` says which ("validation" or "train").

    ``limit`` keeps the first N distinct inputs (a quick look at a large set).
    """
    bundle = getattr(bundle, "bundle", bundle)
    data = bundle.config.data
    if split is None and corpus is None:
        split = "validation" if bundle.validation else "train"
    if corpus is not None:
        examples = load_corpus(corpus).examples(data.context_turns, data.deduplicate)
        result = EvaluationSet(examples, examples, str(corpus))
    elif split == "validation":
        if not bundle.validation:
            raise BundleError(f"{bundle.path}: this model has no validation split (trained with "
                              "data.validation_fraction 0); evaluate on a corpus or the training split")
        try:
            everything = bundle.training_examples()
        except CorpusError as exc:  # the held-out answers alone still give a fair, if stricter, figure
            log.warning("%s; only the validation split's own answers count as references", exc)
            everything = bundle.validation
        result = EvaluationSet(bundle.validation, everything, "validation")
    elif split == "train":
        everything = bundle.training_examples()
        result = EvaluationSet(training_split(bundle, everything), everything, "train")
    else:
        raise InputError(f"unknown split '{split}' (expected 'validation' or 'train')")
    if limit is not None:
        keep = set(distinct_inputs(result.examples)[:max(limit, 0)])
        result = dataclasses.replace(result, examples=[e for e in result.examples if input_key(e) in keep])
    return result


def exact_match(bot, examples: Sequence[Example], reference: Sequence[Example], decoding=None) -> float:
    """Share of the distinct inputs of ``examples`` whose reply (from a ``ChatBot`` or a
    ``Bundle``, through the public reply path, with ``decoding`` overrides) equals one of their
    answers in ``reference`` (``metrics.is_exact``). What the training summary reports."""
    inputs = distinct_inputs(examples)
    if not inputs:
        return 0.0
    bot = as_chatbot(bot)
    accepted = answers_by_input(reference)
    replies = bot.generate([i[-1] for i in inputs], [i[:-1] for i in inputs], decoding=decoding)
    return sum(is_exact(r.text, accepted.get(i, ())) for i, r in zip(inputs, replies)) / len(inputs)
