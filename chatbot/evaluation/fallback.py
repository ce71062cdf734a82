"""Choosing ``dialogue.min_confidence`` on one's own questions.

Under that confidence a reply becomes the fallback text ("I'm not sure I understand"). A
threshold is only as good as the questions it was chosen on: the default model's came from its
dev sets (``bench/robustness.py``), and a model trained on another corpus has confidences of its
own. ``chatbot evaluate --unanswerable FILE`` asks the evaluation questions (a right reply should
be kept, a wrong one fall back) and questions the model should not answer (they should fall
back), and picks the threshold that gets the most of them right (``best_threshold``), but never
one above a right reply to a question the model was trained on: what it was taught must not
fall back. ``chatbot models set`` writes it into the bundle.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from chatbot.data.corpus import numbered_lines
from chatbot.data.text import clean_text
from chatbot.errors import CorpusError


def roc_auc(scores, labels) -> float | None:
    """Mann-Whitney ROC AUC: the chance that a random right reply scores above a random wrong
    one (ties count a half). None when one of the classes is empty."""
    import numpy as np

    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return None
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # 1-based, ties share the mean rank
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def best_threshold(scores, labels) -> dict:
    """The threshold t maximising the accuracy of "keep the reply if score >= t, else fall
    back" (kept right replies and dropped wrong ones count as correct), with the precision and
    recall of right replies among the kept ones. t lies halfway between the lowest kept score
    and the highest dropped one; on ties the rule keeping more replies wins."""
    import numpy as np

    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    n, n_right = len(s), int(y.sum())
    if not n:
        return {}
    order = np.argsort(-s, kind="mergesort")
    s_desc, y_desc = s[order], y[order]
    tp = np.concatenate([[0], np.cumsum(y_desc)])  # right replies among the k best-scored
    fp = np.concatenate([[0], np.cumsum(~y_desc)])
    accuracy = (tp + (n - n_right) - fp) / n
    cuttable = np.ones(n + 1, dtype=bool)
    cuttable[1:n] = s_desc[:-1] > s_desc[1:]  # only cut between different scores
    best = max((k for k in range(n + 1) if cuttable[k]), key=lambda k: (accuracy[k], k))
    if best == 0:
        threshold = None  # keep nothing: every reply is wrong
    elif best == n:
        threshold = float(s_desc[-1])
    else:
        threshold = float((s_desc[best - 1] + s_desc[best]) / 2)
    return {
        "threshold": None if threshold is None else round(threshold, 4),
        "accuracy": round(float(accuracy[best]), 4),
        "precision": round(float(tp[best] / best), 4) if best else None,
        "recall": round(float(tp[best] / n_right), 4) if n_right else None,
        "kept": round(best / n, 4),
        "accuracy_keep_all": round(n_right / n, 4),
    }


@dataclass(frozen=True)
class AtThreshold:
    """What one ``min_confidence`` does to the evaluated replies (None: no reply of that kind)."""

    min_confidence: float
    right_kept: float | None  # share of right replies kept
    wrong_dropped: float | None  # share of wrong replies that fall back
    unanswerable_answered: float | None  # share of unanswerable questions still answered
    accuracy: float  # right kept + wrong and unanswerable dropped, over all of them


def capped_best_threshold(scores, labels, cap: float | None) -> dict:
    """``best_threshold`` of the scores cut to ``cap``, so that no threshold above it can win
    (no cut falls between scores at the cap): every score at or above it is kept."""
    import numpy as np

    return best_threshold(scores if cap is None else np.minimum(np.asarray(scores, dtype=float), cap), labels)


@dataclass(frozen=True)
class FallbackChoice:
    right: int
    wrong: int
    unanswerable: int
    cap: float | None  # the lowest confidence of a right reply to a training question
    current: AtThreshold  # the model's own dialogue.min_confidence
    suggested: AtThreshold | None  # None: every reply was wrong, no threshold keeps a right one
    auc_right_vs_unanswerable: float | None  # how well the confidence tells them apart

    def to_json(self) -> dict:
        return asdict(self)


def _share(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def at_threshold(threshold: float, right, wrong, unanswerable) -> AtThreshold:
    kept = [c >= threshold for c in right]
    dropped = [c < threshold for c in wrong]
    answered = [c >= threshold for c in unanswerable]
    total = len(kept) + len(dropped) + len(answered)
    correct = sum(kept) + sum(dropped) + len(answered) - sum(answered)
    return AtThreshold(threshold, _share(kept), _share(dropped), _share(answered),
                       round(correct / total, 4) if total else 0.0)


def choose_min_confidence(right: Sequence[float], wrong: Sequence[float], unanswerable: Sequence[float],
                          current: float, taught: Sequence[float] = ()) -> FallbackChoice:
    """The confidences of right replies, wrong replies and replies to questions that should not
    be answered: the figures at ``current`` and at the threshold ``capped_best_threshold``
    picks, capped at the lowest of ``taught`` (right replies to training questions)."""
    scores = [*right, *wrong, *unanswerable]
    labels = [True] * len(right) + [False] * (len(wrong) + len(unanswerable))
    cap = min(taught) if taught else None
    best = capped_best_threshold(scores, labels, cap).get("threshold")
    auc = roc_auc([*right, *unanswerable], [True] * len(right) + [False] * len(unanswerable))
    return FallbackChoice(len(right), len(wrong), len(unanswerable), None if cap is None else round(cap, 4),
                          at_threshold(current, right, wrong, unanswerable),
                          None if best is None else at_threshold(best, right, wrong, unanswerable),
                          None if auc is None else round(auc, 4))


def load_questions(path: str | Path) -> list[str]:
    """Questions, one per line (blank lines and ``#`` comments skipped), or JSON lines with a
    ``question`` field (``.jsonl``). A bad line is a ``CorpusError`` naming the file and line."""
    path = Path(path)
    as_json = path.suffix.lower() == ".jsonl"
    questions = []
    for number, line in numbered_lines(path, "the questions"):
        if not line.strip() or (not as_json and line.lstrip().startswith("#")):
            continue
        if as_json:
            try:
                row = json.loads(line)
            except ValueError:
                raise CorpusError(path, number, "not a JSON object") from None
            if not isinstance(row, dict) or not isinstance(row.get("question"), str):
                raise CorpusError(path, number, "expected an object with a 'question' string")
            line = row["question"]
        question = clean_text(line)
        if not question:
            raise CorpusError(path, number, "empty question")
        questions.append(question)
    if not questions:
        raise CorpusError(path, None, "no questions (expected one per line)")
    return questions
