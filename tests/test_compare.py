"""McNemar's exact test and the question-by-question comparison of two evaluations."""

import pytest
from hypothesis import given, strategies as st
from scipy.stats import binomtest

from chatbot.errors import InputError
from chatbot.evaluation.compare import compare, mcnemar_exact
from chatbot.evaluation.evaluate import EvaluationReport, ItemResult


@pytest.mark.parametrize("first, second, p", [(0, 0, 1.0), (0, 2, 0.5), (0, 5, 0.0625), (1, 9, 22 / 1024),
                                              (3, 3, 1.0), (9, 1, 22 / 1024)])
def test_known_values(first, second, p):
    assert mcnemar_exact(first, second) == pytest.approx(p)


@given(st.integers(0, 400), st.integers(0, 400))
def test_it_is_the_two_sided_binomial_test_on_the_disagreements(first, second):
    p = mcnemar_exact(first, second)
    assert p == mcnemar_exact(second, first) and 0 < p <= 1
    if first + second:
        assert p == pytest.approx(binomtest(first, first + second, 0.5).pvalue, rel=1e-9)


def test_counts_far_beyond_floating_point_factorials():
    assert mcnemar_exact(50_000, 50_000) == 1.0
    assert 0 < mcnemar_exact(5_000, 5_400) < 1e-4
    with pytest.raises(InputError):
        mcnemar_exact(-1, 3)


def report(name: str, rights: dict[str, bool]) -> EvaluationReport:
    items = [ItemResult((), question, "reply", ("answer",), right, 0.0, 1.0, 0.0, 1, 1.0)
             for question, right in rights.items()]
    exact = sum(rights.values()) / len(rights)
    return EvaluationReport(name, "test", len(items), {}, 0.0, 1.0, 0.0, exact, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0,
                            1.0, 1.0, {}, items)


def test_compare_pairs_questions_not_positions():
    ours = report("new", {"a": True, "b": True, "c": False, "d": True})
    theirs = report("old", {"d": False, "c": False, "b": True, "a": False})
    c = compare(ours, theirs)
    assert (c.both, c.only_model, c.only_baseline, c.neither) == (1, 2, 0, 1)
    assert c.baseline == "old" and c.baseline_exact_match == 0.25 and c.p_value == 0.5
    with pytest.raises(InputError, match="different questions"):
        compare(ours, report("old", {"a": True}))
