"""Two models on the same questions: how many each answers that the other does not, and whether
a difference that size could be chance.

Retraining changes a handful of replies, and a dev set of a hundred questions moves by a point
per question: a model that answers three more of them may be no better. McNemar's exact test
looks only at the questions the two models disagree on; if they were equally good, each of those
would go either way with probability one half.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from chatbot.errors import InputError
from chatbot.evaluation.metrics import distinct_inputs, input_key


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided p-value of McNemar's exact test: how likely a split at least this uneven of the
    ``only_first + only_second`` disagreements is between two equally good models (1.0: no
    disagreement). The binomial terms in logarithms (``lgamma``), so a corpus of millions of
    questions takes milliseconds, not the minutes exact integers would."""
    if only_first < 0 or only_second < 0:
        raise InputError("disagreement counts cannot be negative")
    n = only_first + only_second
    if n == 0:
        return 1.0
    whole = math.lgamma(n + 1) - n * math.log(2)
    tail = math.fsum(math.exp(whole - math.lgamma(k + 1) - math.lgamma(n - k + 1))
                     for k in range(min(only_first, only_second) + 1))
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Comparison:
    """The evaluated model against a baseline, question by question (exact match)."""

    baseline: str
    baseline_exact_match: float
    both: int  # right by both
    only_model: int  # right by the evaluated model alone
    only_baseline: int  # right by the baseline alone
    neither: int
    p_value: float  # McNemar's exact test on only_model vs only_baseline
    # Questions asked that each model was trained on (None: its training pairs are unknown). A
    # model's held-out split may be another's training data: the one that has seen more is favoured.
    seen_by_model: int | None = None
    seen_by_baseline: int | None = None

    def to_json(self) -> dict:
        return {**asdict(self), "baseline_exact_match": round(self.baseline_exact_match, 4),
                "p_value": round(self.p_value, 4)}


def tally(verdicts) -> tuple[int, int, int, int]:
    """(right by both, by the first only, by the second only, by neither) of (first, second)
    verdict pairs, one pair a question."""
    counts = {(True, True): 0, (True, False): 0, (False, True): 0, (False, False): 0}
    for pair in verdicts:
        counts[pair] += 1
    return counts[(True, True)], counts[(True, False)], counts[(False, True)], counts[(False, False)]


def paired(report, baseline) -> list[tuple]:
    """(``report``'s item, ``baseline``'s item) for each question, in ``report``'s order: two
    ``EvaluationReport``s of two models on the same examples."""
    theirs = {(item.context, item.question): item for item in baseline.items}
    if theirs.keys() != {(item.context, item.question) for item in report.items}:
        raise InputError("the two evaluations asked different questions: compare models on the same examples")
    return [(item, theirs[item.context, item.question]) for item in report.items]


def seen_in_training(examples, trained_on) -> int | None:
    """How many of ``examples``' distinct inputs (context and question, as written) are inputs of
    ``trained_on``, a model's training pairs (None when they are unknown)."""
    if trained_on is None:
        return None
    known = {input_key(example) for example in trained_on}
    return sum(key in known for key in distinct_inputs(examples))


def compare(report, baseline, seen: tuple[int | None, int | None] = (None, None)) -> Comparison:
    """``report`` and ``baseline`` paired question by question (``paired``); ``seen``: how many
    of the questions each was trained on (``seen_in_training``)."""
    both, only_model, only_baseline, neither = tally((ours.exact, theirs.exact)
                                                     for ours, theirs in paired(report, baseline))
    return Comparison(baseline.model, baseline.exact_match, both, only_model, only_baseline, neither,
                      mcnemar_exact(only_model, only_baseline), *seen)
