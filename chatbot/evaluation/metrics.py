"""Metrics on plain text: exact match, perplexity, BLEU/chrF (sacrebleu), distinct-n, top-k share.

One definition of exact match for the whole project (evaluation, training summaries, golden
checks, benchmarks): a reply is right when it equals one accepted answer after
``chatbot.data.text.normalise_answer`` (case, whitespace runs and trailing punctuation aside).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

from chatbot.data.corpus import Example
from chatbot.data.text import characters_apart, normalise_answer
from chatbot.errors import InputError

Input = tuple[str, ...]  # what the model is asked: the context turns, then the question


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
    """A reply is right when it equals one accepted answer after ``normalise_answer``."""
    return normalise_answer(reply) in {normalise_answer(a) for a in accepted}


def perplexity(loss: float) -> float:
    """exp(mean token cross-entropy), capped so a diverged model gives a number, not inf."""
    return math.exp(min(float(loss), 50.0))


def words(text: str) -> list[str]:
    """The words of a reply, as distinct-n and reply lengths count them: where words cannot be
    told apart (Chinese, Japanese, Thai), each character counts as one."""
    return characters_apart(text).split()


def distinct_n(replies: Sequence[str], n: int) -> float:
    """Distinct n-grams / all n-grams over all replies (``words``): 1.0 means no reply
    repeats another's wording, a low value means the model says the same few things."""
    grams = [tuple(ws[i:i + n]) for ws in map(words, replies) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def top_share(replies: Sequence[str], k: int = 10) -> float:
    """Share of the replies that are one of the ``k`` most frequent replies (after
    ``normalise_answer``): near 1 for a model that answers everything with "yeah" or "i don't
    know", which distinct-n alone can hide when those few replies are long."""
    from collections import Counter

    counts = Counter(normalise_answer(r) for r in replies)
    return sum(n for _, n in counts.most_common(k)) / len(replies) if replies else 0.0


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

    # sacrebleu's default tokenizer splits at spaces, so a Chinese, Japanese or Thai sentence was
    # one token and a right answer scored 0; its "zh" tokenizer splits Han characters only (a
    # kana run stayed one token). Each character of a script without spaces is a token here.
    streams = [[None if text is None else characters_apart(text) for text in stream]
               for stream in _reference_streams(references)]
    return BLEU(tokenize="13a").corpus_score([characters_apart(r) for r in replies], streams).score


def corpus_chrf(replies: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus chrF (sacrebleu, 0-100): character n-grams, kinder than BLEU to short replies."""
    from sacrebleu.metrics import CHRF

    return CHRF().corpus_score(list(replies), _reference_streams(references)).score


def sentence_chrf(reply: str, references: Sequence[str]) -> float:
    from sacrebleu.metrics import CHRF

    return CHRF().sentence_score(reply, list(references)).score
