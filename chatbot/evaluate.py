"""Evaluation: how good a model's replies are, measured on pairs it did not learn from.

Two kinds of figures, so that a new model can be compared with an old one:

* teacher-forced (perplexity, token accuracy): the model's compiled Keras ``evaluate`` with
  the training loss, so they read like the ``val_loss`` of the training log;
* generated (exact match, BLEU, chrF, distinct-n, reply length, latency): real batched
  replies with the model's decoding settings, as users get them.

A question of the corpus often has several accepted answers; a reply that equals any of them
counts, and every one of them is a BLEU/chrF reference. Golden checks are hand-written
question -> expected answer cases that a model must pass before it replaces another.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from .corpus import JSONL_SUFFIXES, YAML_SUFFIXES, Example, clean_text, load_corpus
from .errors import BundleError, CorpusError, InputError

log = logging.getLogger(__name__)

Input = tuple[str, ...]  # what the model is asked: the context turns, then the question


# --- shared helpers (training's exact match uses them too) ------------------------------------
def input_key(example: Example) -> Input:
    return example.context + (example.question,)


def distinct_inputs(examples: Iterable[Example]) -> list[Input]:
    """Each input once, in first-seen order: a question with three answers is asked once."""
    return list(dict.fromkeys(input_key(e) for e in examples))


def answers_by_input(reference: Iterable[Example]) -> dict[Input, list[str]]:
    """Every accepted answer of each input, stripped, each once, in corpus order."""
    table: dict[Input, list[str]] = {}
    for ex in reference:
        answers = table.setdefault(input_key(ex), [])
        answer = ex.answer.strip()
        if answer not in answers:
            answers.append(answer)
    return table


def is_exact(reply: str, accepted: Iterable[str]) -> bool:
    """A reply is right when it equals one accepted answer, surrounding whitespace aside."""
    return reply.strip() in {a.strip() for a in accepted}


# --- metrics on plain text ---------------------------------------------------------------------
def perplexity(loss: float) -> float:
    """exp(mean token cross-entropy), capped so a diverged model gives a number, not inf."""
    return math.exp(min(float(loss), 50.0))


def distinct_n(replies: Sequence[str], n: int) -> float:
    """Distinct n-grams / all n-grams over all replies (whitespace words): 1.0 means no reply
    repeats another's wording, a low value means the model says the same few things."""
    grams = [tuple(words[i:i + n]) for words in (r.split() for r in replies)
             for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """sacrebleu wants one stream per reference slot; inputs with fewer answers get None
    there (sacrebleu drops it), so a varying number of references per input is scored right."""
    if any(not refs for refs in references):
        raise InputError("every reply needs at least one reference answer")
    width = max((len(refs) for refs in references), default=0)
    return [[refs[j] if j < len(refs) else None for refs in references] for j in range(width)]


def corpus_bleu(replies: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU (sacrebleu, 0-100); ``references[i]`` are all accepted answers of reply i."""
    from sacrebleu.metrics import BLEU

    return BLEU().corpus_score(list(replies), _reference_streams(references)).score


def corpus_chrf(replies: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus chrF (sacrebleu, 0-100): character n-grams, kinder than BLEU to short replies."""
    from sacrebleu.metrics import CHRF

    return CHRF().corpus_score(list(replies), _reference_streams(references)).score


def sentence_chrf(reply: str, references: Sequence[str]) -> float:
    from sacrebleu.metrics import CHRF

    return CHRF().sentence_score(reply, list(references)).score


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
    chrf: float  # sentence chrF against all references
    tokens: int  # generated tokens, end token excluded
    latency_ms: float

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data.update(context=list(self.context), references=list(self.references),
                    score=round(self.score, 4), chrf=round(self.chrf, 2), latency_ms=round(self.latency_ms, 2))
        return data


@dataclass
class EvaluationReport:
    model: str
    source: str  # "validation", "train" or a corpus path
    pairs: int  # examples evaluated (teacher-forced); ``len(items)`` distinct inputs were asked
    decoding: dict[str, Any]
    loss: float
    perplexity: float
    token_accuracy: float | None
    exact_match: float
    bleu: float
    chrf: float
    distinct_1: float
    distinct_2: float
    reply_tokens: float  # mean per reply
    reply_words: float
    latency_ms: dict[str, float]  # mean, p50, p90 per reply (batch time / batch size)
    items: list[ItemResult]

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
                "reply_tokens": r(self.reply_tokens, 2), "reply_words": r(self.reply_words, 2),
                "latency_ms": {k: r(v, 2) for k, v in self.latency_ms.items()},
                "decoding": self.decoding}


def _as_bot(bot):
    """A ``ChatBot``, or a ``Bundle`` wrapped in one (training checks a model before saving it)."""
    from .bot import ChatBot

    return bot if isinstance(bot, ChatBot) else ChatBot(bot, warm_up=False)


def teacher_forced(bundle, examples: Sequence[Example]) -> tuple[float, float | None]:
    """(loss, token accuracy) from the model's compiled Keras ``evaluate``: the training loss
    on the same tf.data pipeline, so the numbers match the training log's ``val_loss``."""
    from .dataset import encode_examples, make_dataset
    from .model import compile_model

    config, model = bundle.config, bundle.model
    if not getattr(model, "compiled", False):  # a loaded bundle is not; a training model keeps its own
        compile_model(model, config.training.learning_rate, config.training.clipnorm)
    sources, targets = encode_examples(examples, bundle.tokenizer, config.data.max_input_tokens,
                                       config.data.max_output_tokens)
    results = model.evaluate(make_dataset(sources, targets, config.training.batch_size),
                             verbose=0, return_dict=True)
    accuracy = results.get("masked_accuracy")
    return float(results["loss"]), None if accuracy is None else float(accuracy)


def evaluate(bot, examples: Sequence[Example], reference: Sequence[Example] | None = None,
             decoding=None, source: str = "examples") -> EvaluationReport:
    """Measure a model (a ``ChatBot`` or a ``Bundle``) on ``examples``.

    A reply counts as exact when it equals any answer its input has in ``reference`` (default:
    the examples themselves; their own answers always count). ``decoding`` overrides the
    model's decoding settings like ``ChatBot.generate``'s.
    """
    import numpy as np

    from .tokenizer import END

    if not examples:
        raise InputError("nothing to evaluate: no question/answer pairs")
    bot = _as_bot(bot)
    config = bot.generator.resolve(decoding)  # a bad setting fails before any work
    bot.wait_ready()
    loss, accuracy = teacher_forced(bot.bundle, examples)

    accepted = answers_by_input([*(reference or ()), *examples])
    inputs = distinct_inputs(examples)
    generated = bot.generator.generate([list(i) for i in inputs], decoding=config)
    replies = [g.text for g in generated]
    references = [accepted[i] for i in inputs]
    items = [ItemResult(context=i[:-1], question=i[-1], reply=g.text, references=tuple(refs),
                        exact=is_exact(g.text, refs), score=g.score, chrf=sentence_chrf(g.text, refs),
                        tokens=len(g.token_ids) - (1 if g.token_ids[-1:] == (END,) else 0),
                        latency_ms=g.latency_ms)
             for i, g, refs in zip(inputs, generated, references)]
    latency = np.array([g.latency_ms for g in generated])
    return EvaluationReport(
        model=bot.name, source=source, pairs=len(examples),
        decoding=dataclasses.asdict(config.resolved()),
        loss=loss, perplexity=perplexity(loss), token_accuracy=accuracy,
        exact_match=sum(item.exact for item in items) / len(items),
        bleu=corpus_bleu(replies, references), chrf=corpus_chrf(replies, references),
        distinct_1=distinct_n(replies, 1), distinct_2=distinct_n(replies, 2),
        reply_tokens=float(np.mean([item.tokens for item in items])),
        reply_words=float(np.mean([len(r.split()) for r in replies])),
        latency_ms={"mean": float(latency.mean()), "p50": float(np.percentile(latency, 50)),
                    "p90": float(np.percentile(latency, 90))},
        items=items)


# --- where examples come from --------------------------------------------------------------------
@dataclass(frozen=True)
class EvaluationSet:
    examples: list[Example]  # what is asked (and teacher-forced)
    reference: list[Example]  # where accepted answers are looked up
    source: str


def evaluation_set(bundle, split: str = "validation", corpus: str | Path | None = None,
                   limit: int | None = None) -> EvaluationSet:
    """The examples to evaluate a bundle (or a ``ChatBot``) on.

    * ``corpus``: every pair of that corpus file or directory;
    * ``split="validation"`` (default): the bundle's held-out pairs, so the numbers are on
      unseen data. Answers that the same questions have in the training split also count;
    * ``split="train"``: the pairs the model was trained on, re-read from the bundle's corpus
      (a ``CorpusError`` if it moved or changed since).

    ``limit`` keeps the first N distinct inputs (a quick look at a large set).
    """
    bundle = getattr(bundle, "bundle", bundle)
    data = bundle.config.data
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
        if bundle.train:  # the pairs it was trained on, as saved (mixed-in ones included)
            train, everything = list(bundle.train), list(bundle.train) + list(bundle.validation)
        else:  # older bundles: rebuild from the corpus
            held_out = {(e.context, e.question, e.answer) for e in bundle.validation}
            everything = bundle.training_examples()
            train = [e for e in everything if (e.context, e.question, e.answer) not in held_out]
        result = EvaluationSet(train, everything, "train")
    else:
        raise InputError(f"unknown split '{split}' (expected 'validation' or 'train')")
    if limit is not None:
        keep = set(distinct_inputs(result.examples)[:max(limit, 0)])
        result = dataclasses.replace(result, examples=[e for e in result.examples if input_key(e) in keep])
    return result


# --- golden checks -------------------------------------------------------------------------------
@dataclass(frozen=True)
class GoldenCase:
    question: str
    answers: tuple[str, ...]  # any of them passes
    source: str  # "file:line" of the case's first line


@dataclass(frozen=True)
class GoldenOutcome:
    case: GoldenCase
    reply: str
    score: float


@dataclass
class GoldenResult:
    passed: list[GoldenOutcome]
    failed: list[GoldenOutcome]

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_json(self) -> dict:
        return {"passed": len(self.passed), "failed": [
            {"question": o.case.question, "reply": o.reply, "expected": list(o.case.answers),
             "source": o.case.source} for o in self.failed]}


def load_golden(path: str | Path) -> list[GoldenCase]:
    """Golden cases from ``question<TAB>expected answer`` lines (``.tsv``/``.txt``; blank
    lines and ``#`` comments skipped; the same question on several lines accepts any of those
    answers), or from a YAML/JSONL corpus (each pair a case; multi-line answers need these).

    Any bad line is a ``CorpusError`` naming the file and line: a golden file must be exact.
    """
    path = Path(path)
    if path.suffix.lower() in YAML_SUFFIXES + JSONL_SUFFIXES:
        pairs = [(e.question, e.answer, e.source) for e in load_corpus(path, strict=True).examples()]
    else:
        pairs = list(_golden_lines(path))
    cases: dict[str, GoldenCase] = {}
    for question, answer, where in pairs:
        case = cases.get(question)
        if case is None:
            cases[question] = GoldenCase(question, (answer,), where)
        elif answer not in case.answers:
            cases[question] = dataclasses.replace(case, answers=case.answers + (answer,))
    if not cases:
        raise CorpusError(path, None, "no golden cases (expected 'question<TAB>expected answer' lines)")
    return list(cases.values())


def _golden_lines(path: Path):
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CorpusError(path, None, f"cannot read golden file ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CorpusError(path, raw[:exc.start].count(b"\n") + 1, "invalid UTF-8") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        question, tab, answer = line.partition("\t")
        if not tab:
            raise CorpusError(path, number, "expected 'question<TAB>expected answer', found no tab")
        question, answer = clean_text(question), clean_text(answer)
        if not question or not answer:
            raise CorpusError(path, number, f"empty {'question' if not question else 'expected answer'}")
        yield question, answer, f"{path}:{number}"


def check_golden(bot, cases: Sequence[GoldenCase], decoding=None) -> GoldenResult:
    """Ask a model (a ``ChatBot`` or a ``Bundle``) every golden question in one batch; a case
    passes when the reply equals one of its answers, surrounding whitespace aside."""
    bot = _as_bot(bot)
    config = bot.generator.resolve(decoding)
    bot.wait_ready()
    replies = bot.generator.generate([[case.question] for case in cases], decoding=config) if cases else []
    result = GoldenResult([], [])
    for case, reply in zip(cases, replies):
        outcome = GoldenOutcome(case, reply.text, reply.score)
        (result.passed if is_exact(reply.text, case.answers) else result.failed).append(outcome)
    return result
