"""The answer memory: the pairs a model was trained on, searchable by fuzzy question match.

People reword and mistype questions. A seq2seq model trained to reproduce a corpus answers
its own questions well but drifts on inputs it has not seen. The memory finds the training
questions closest to what was typed (rapidfuzz edit-distance ratios, see ``similarity``), and
their answers then compete with the decoded reply, scored by the model itself
(``Generator.score``, ranking in ``Generator._rerank``). Inputs with no close training question
get the decoded reply alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from rapidfuzz import fuzz, process
from rapidfuzz.distance import OSA

from chatbot.data.corpus import Example
from chatbot.data.text import match_key

RAW_WEIGHT = 0.02  # share of the similarity taken from the raw text (see ``similarity``)


def similarity(text: str, key: str, other: str, other_key: str) -> float:
    """How alike two questions are, 0..1. On the folded keys: the mean of an edit-distance ratio
    (typos) and its transposition-aware form (swapped letters cost one edit, not two), or the
    same ratio on sorted words (reordered questions), whichever is higher; a little of the raw
    texts' ratio breaks ties between questions whose keys are equal ("I'm also good." vs
    "I am also good.").

    Measured on bench/robustness.py's dev sets, against the two keyed ratios alone: typo'd
    questions 0.983 -> 1.0 exact, reworded unchanged (0.889). token_set_ratio was tried and
    dropped: it calls "Robots" a perfect match for "Robots are dumb".
    """
    edits = (fuzz.ratio(key, other_key) / 100 + OSA.normalized_similarity(key, other_key)) / 2
    keyed = max(edits, fuzz.token_sort_ratio(key, other_key) / 100)
    return (1 - RAW_WEIGHT) * keyed + RAW_WEIGHT * fuzz.ratio(text, other) / 100


@dataclass(frozen=True)
class Match:
    question: str
    similarity: float  # 0..1, see ``similarity``
    answers: tuple[str, ...]


class AnswerMemory:
    def __init__(self, examples: Iterable[Example]):
        answers: dict[str, list[str]] = {}
        for ex in examples:
            if ex.context:  # the memory answers single questions; context examples are left out
                continue
            known = answers.setdefault(ex.question, [])
            if ex.answer not in known:
                known.append(ex.answer)
        self.questions = list(answers)
        self.answers = [tuple(answers[q]) for q in self.questions]
        self._keys = [match_key(q) for q in self.questions]

    def __len__(self) -> int:
        return len(self.questions)

    def nearest(self, question: str, k: int, min_similarity: float) -> list[Match]:
        """Up to ``k`` training questions per measure, at least ``min_similarity`` alike, best first."""
        key = match_key(question)
        if not key or not self._keys or k <= 0:
            return []
        found = {index for scorer in (fuzz.ratio, fuzz.token_sort_ratio)
                 for _, _, index in process.extract(key, self._keys, scorer=scorer, limit=k)}
        scored = ((i, similarity(question, key, self.questions[i], self._keys[i])) for i in found)
        ranked = sorted(((i, s) for i, s in scored if s >= min_similarity), key=lambda item: (-item[1], item[0]))
        return [Match(self.questions[i], s, self.answers[i]) for i, s in ranked]

    def candidates(self, question: str, k: int, min_similarity: float) -> dict[str, float]:
        """The distinct answers of the nearest questions, each with its question's similarity."""
        found: dict[str, float] = {}
        for match in self.nearest(question, k, min_similarity):
            for answer in match.answers:
                found.setdefault(answer, match.similarity)  # nearest first: the best similarity
        return found
