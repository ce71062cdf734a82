"""Retrieval over the pairs a model was trained on: what the model is shown beside the input.

People reword and mistype questions. Retrieve and refine (Weston, Dinan & Miller 2018): the
training questions closest to what was typed (rapidfuzz edit-distance ratios, see
``similarity``, fused with sentence embeddings for the hybrid retriever, see ``AnswerMemory``)
and their answers are added to the encoder's input, each marked with how alike its question
is; the decoder learns to copy a fitting answer and to ignore the rest.
Retrieval never replaces the reply: the reply is always the decoded text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from rapidfuzz import fuzz, process
from rapidfuzz.distance import OSA

from chatbot.data.corpus import Example
from chatbot.data.text import match_key

RAW_WEIGHT = 0.02  # share of the similarity taken from the raw text (see ``similarity``)
# A memory of at least this many questions builds a trigram index (``GramIndex``) and
# ``nearest`` scores only the index's candidates; a smaller one scans every question (exact).
INDEX_MIN_QUESTIONS = 5000
INDEX_CANDIDATES = 256  # questions the index hands to the exact scorers per lookup (at least)
INDEX_MAX_POSTINGS = 150_000  # posting entries read per lookup, rarest grams first
HYBRID_CANDIDATES = 4  # the hybrid retriever ranks at least this many candidates per measure
# Keys this short ("yes", "hi u") have too few trigrams for the index: one typo can spoil all
# of them ("yse" shares none with "yes"). The index also finds them by their one-deletion
# variants (as SymSpell does), which catches every stored key one edit away from a query this
# short (stored keys up to one character longer are kept for that).
SHORT_KEY = 6
VECTOR_PROBES = 16  # groups of embeddings a large memory's VectorIndex scores per lookup


def _sorted_words(key: str) -> str:
    return " ".join(sorted(key.split()))


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


def _grams(keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The character trigrams of folded keys, each word padded with a space on both sides
    (" do", "do ") so that the grams ignore word order, as ``token_sort_ratio`` does, and a
    typo spoils at most three of them. Returns (gram codes, the key each came from): a gram is
    three code points in one 63-bit integer. Keys are joined as " w1  w2 " (words one space
    apart in a key, as ``match_key`` writes them): exactly the grams whose middle character is
    not a space lie inside one padded word."""
    text = "".join(f" {key.replace(' ', '  ')} " for key in keys)
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
    if len(points) < 3:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    codes = (points[:-2] << np.uint64(42)) | (points[1:-1] << np.uint64(21)) | points[2:]
    lengths = np.fromiter((len(key) + key.count(" ") + 2 for key in keys), dtype=np.int64, count=len(keys))
    owner = np.repeat(np.arange(len(keys), dtype=np.int64), lengths)[:-2]
    inside = points[1:-1] != ord(" ")
    return codes[inside], owner[inside]


def _deletions(key: str) -> set[str]:
    """``key`` and every string one character shorter: two keys one edit apart (a substitution,
    insertion, deletion or swap of neighbours) share at least one of these."""
    return {key} | {key[:i] + key[i + 1:] for i in range(len(key))}


class GramIndex:
    """Candidate questions for a lookup without a scan: an inverted index from character
    trigrams of the folded keys to the questions holding them (all numpy: a 100k-question
    memory builds in about a second).

    A lookup sums, per question, the IDF weights (log N/df) of the trigrams it shares with the
    query (``np.bincount`` over the concatenated posting arrays), divides by the two keys'
    total weights (a weighted Dice coefficient, close to what an edit-distance ratio rewards)
    and keeps the best ``count``. Posting lists are read rarest first up to
    ``INDEX_MAX_POSTINGS`` entries: grams found in a large share of the questions carry little
    information and would dominate the work. The exact scorers then rank the candidates.
    """

    def __init__(self, keys: list[str]):
        self.size = len(keys)
        codes, owner = _grams(keys)
        order = np.argsort(codes, kind="stable")  # by gram, then by question (owner ascends)
        codes, owner = codes[order], owner[order]
        first = np.ones(len(codes), dtype=bool)
        first[1:] = codes[1:] != codes[:-1]
        gram = np.cumsum(first) - 1  # gram ids, in code order
        self._codes = codes[first]
        once = first.copy()  # one posting per (gram, question): a word may repeat a gram
        once[1:] |= owner[1:] != owner[:-1]
        gram, self._postings = gram[once], owner[once].astype(np.int32)
        self._df = np.bincount(gram, minlength=len(self._codes)).astype(np.int64)
        self._offsets = np.concatenate(([0], np.cumsum(self._df)))
        self._idf = np.log(self.size / np.maximum(self._df, 1))
        self._unseen = float(np.log(self.size + 1))  # the weight of a gram no stored key has
        self._weight = np.bincount(self._postings, weights=self._idf[gram], minlength=self.size)
        # Short keys by the hashes of their deletion variants, sorted (a collision only adds a
        # candidate: the exact scorers rank them all). Python's str hash differs between
        # processes; the index lives in this process's memory only and is never stored.
        pairs = [(hash(variant), index) for index, key in enumerate(keys) if len(key) <= SHORT_KEY + 1
                 for variant in _deletions(key)]
        hashes, owners = (np.array(column, np.int64) for column in zip(*pairs)) if pairs else (
            np.zeros(0, np.int64), np.zeros(0, np.int64))
        order = np.argsort(hashes, kind="stable")
        self._short_hashes, self._short_owners = hashes[order], owners[order].astype(np.int32)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self._codes, self._postings, self._df, self._offsets, self._idf,
                                      self._weight, self._short_hashes, self._short_owners))

    def candidates(self, key: str, count: int, least: int) -> np.ndarray | None:
        """Up to ``count`` question indices (ascending) sharing the most weighted trigrams with
        ``key``; None when fewer than ``least`` share any (the caller then scans everything)."""
        codes = np.unique(_grams([key])[0])
        where = np.minimum(np.searchsorted(self._codes, codes), max(len(self._codes) - 1, 0))
        known = self._codes[where] == codes if len(self._codes) else np.zeros(len(codes), bool)
        grams = where[known]
        grams = grams[np.argsort(self._df[grams], kind="stable")]  # rarest first
        query_weight = self._idf[grams].sum() + (len(codes) - len(grams)) * self._unseen
        budget = np.cumsum(self._df[grams])
        grams = grams[:max(1, int(np.searchsorted(budget, INDEX_MAX_POSTINGS, side="right")))]
        if not len(grams):
            return None
        postings = np.concatenate([self._postings[self._offsets[g]:self._offsets[g + 1]] for g in grams])
        shared = np.bincount(postings, weights=np.repeat(self._idf[grams], self._df[grams]),
                             minlength=self.size)
        found = np.flatnonzero(shared > 0)
        if len(found) < least:
            return None
        near = self._short_neighbours(key)[:count]
        if len(near):  # they come first; the trigrams' best fill the rest
            keep = ~np.isin(found, near)
            found, count = found[keep], count - len(near)
        score = shared[found] / (query_weight + self._weight[found])
        best = found[np.argpartition(-score, count - 1)[:count]] if len(found) > count else found
        return np.sort(np.concatenate([near, best]))

    def _short_neighbours(self, key: str) -> np.ndarray:
        """The stored short keys one edit or so from a short ``key`` (none for a longer one)."""
        if len(key) > SHORT_KEY or not len(self._short_hashes):
            return np.zeros(0, np.int64)
        variants = np.array([hash(variant) for variant in _deletions(key)], np.int64)
        lows = np.searchsorted(self._short_hashes, variants, side="left")
        highs = np.searchsorted(self._short_hashes, variants, side="right")
        return np.unique(np.concatenate([self._short_owners[a:b] for a, b in zip(lows, highs)])).astype(np.int64)


class VectorIndex:
    """Nearest stored embeddings without a product with every one (an inverted file, as in
    FAISS' IVF): the vectors are grouped around ``lists`` k-means centroids; a lookup scores the
    members of the ``probes`` groups whose centroids are nearest the query. At 100k questions a
    full product reads 150 MB per lookup; the index reads about 1/20 of it. Built with the
    memory (a few seconds at 100k); centroids are fitted on a seeded sample."""

    def __init__(self, vectors: np.ndarray, seed: int = 0, iterations: int = 8):
        count = len(vectors)
        lists = max(1, int(np.sqrt(count)))
        rng = np.random.default_rng(seed)
        sample = vectors[rng.choice(count, min(count, 64 * lists), replace=False)]
        centroids = sample[rng.choice(len(sample), lists, replace=False)].copy()
        for _ in range(iterations):  # spherical k-means: assign by cosine, renormalise the means
            owner = np.argmax(sample @ centroids.T, axis=1)
            sums = np.zeros_like(centroids)
            np.add.at(sums, owner, sample)
            norms = np.linalg.norm(sums, axis=1, keepdims=True)
            filled = norms[:, 0] > 0
            centroids[filled] = sums[filled] / norms[filled]
        owner = np.concatenate([np.argmax(vectors[i:i + 8192] @ centroids.T, axis=1)
                                for i in range(0, count, 8192)])
        self.order = np.argsort(owner, kind="stable")
        self.offsets = np.concatenate(([0], np.cumsum(np.bincount(owner, minlength=lists))))
        self.vectors = vectors[self.order]  # grouped: each list is one contiguous block
        self.centroids = centroids
        self.probes = min(lists, VECTOR_PROBES)

    def search(self, query: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(question rows, cosines) of up to ``count`` nearest stored vectors among the probed lists."""
        nearest_lists = np.argpartition(-(self.centroids @ query), self.probes - 1)[:self.probes]
        blocks = [(self.offsets[c], self.offsets[c + 1]) for c in nearest_lists]
        rows = np.concatenate([np.arange(start, end) for start, end in blocks])
        cosines = np.concatenate([self.vectors[start:end] @ query for start, end in blocks])  # no gather
        best = np.argpartition(-cosines, count - 1)[:count] if len(rows) > count else np.arange(len(rows))
        return self.order[rows[best]], cosines[best]


@dataclass(frozen=True)
class Match:
    question: str
    similarity: float  # 0..1, see ``similarity`` and ``AnswerMemory``
    answers: tuple[str, ...]


def fingerprint(questions: list[str]) -> str:
    """Identifies a memory's questions in order: stored vectors are used only for the same list."""
    return hashlib.sha256("\n".join(questions).encode("utf-8", "surrogatepass")).hexdigest()


class AnswerMemory:
    """The training questions and their answers, searched by how alike a question is.

    ``retriever`` "lexical" scores with ``similarity`` (edit distance: typos, reordering);
    "hybrid" also embeds every question with a sentence encoder (all-MiniLM-L6-v2, see
    ``sentence_encoder``): candidates are the best of both, ranked by the mean of the
    edit-distance similarity and the cosine of the embeddings (clipped at 0), and a match's
    ``similarity`` (what the model is shown) is the higher of the two: either measure alone
    is evidence that the questions mean the same; ``retrieve`` never shows a pair as more
    alike than one ranked above it (the model reads rank and marker together: shown the second
    as the likelier, it copied it where the first was right). Measured on the dev halves of bench/data:
    top-1 right question, reworded 0.926 lexical, 0.979 embeddings alone, 0.989 ranked by the
    mean (0.968 by the higher); typos 1.0, 0.76, 1.0. Right matches told from the nearest
    wrong one (ROC AUC): 0.963 by the higher of the two, 0.895 by the mean, 0.933 lexical.
    """

    def __init__(self, examples: Iterable[Example], retriever: str = "lexical",
                 vectors: tuple[np.ndarray, str] | None = None):
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
        self._index = GramIndex(self._keys) if len(self._keys) >= INDEX_MIN_QUESTIONS else None
        # token_sort_ratio(a, b) is ratio(sorted words of a, of b): the sorted keys are made once
        # here, not once per comparison (8x faster scans, the same scores). A large memory sorts
        # only the index's candidates, so it does not keep a second copy of every key.
        self._sorted_keys = [_sorted_words(key) for key in self._keys] if self._index is None else None
        self._row = {q: i for i, q in enumerate(self.questions)}
        self.vectors: np.ndarray | None = None
        if retriever == "hybrid":
            from chatbot.inference.sentence_encoder import shared

            self._encoder = shared()
            stored, stored_for = vectors if vectors is not None else (None, None)
            if stored is not None and stored_for == self.fingerprint and stored.shape[0] == len(self.questions):
                self.vectors = np.asarray(stored, np.float32)
            else:  # none stored, or stored for other questions: embed them now
                self.vectors = self._encoder.encode(self.questions)
        self._vector_index = (VectorIndex(self.vectors) if self.vectors is not None
                              and len(self.questions) >= INDEX_MIN_QUESTIONS else None)

    def __len__(self) -> int:
        return len(self.questions)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.questions)

    def embed(self, questions: list[str]) -> list[np.ndarray | None]:
        """Query vectors for the hybrid retriever (None each for the lexical one), batched; a
        stored question reuses its stored vector (the same text embeds the same)."""
        if self.vectors is None:
            return [None] * len(questions)
        out: list[np.ndarray | None] = [self.vectors[self._row[q]] if q in self._row else None
                                        for q in questions]
        todo = [i for i, v in enumerate(out) if v is None]
        for i, vector in zip(todo, self._encoder.encode([questions[i] for i in todo])):
            out[i] = vector
        return out

    def nearest(self, question: str, k: int, min_similarity: float,
                vector: np.ndarray | None = None) -> list[Match]:
        """The best ``k`` training questions per measure (at least ``HYBRID_CANDIDATES`` for the
        hybrid retriever), at least ``min_similarity`` alike, best first."""
        key = match_key(question)
        if not key or not self._keys or k <= 0:
            return []
        keys, sorted_keys, indices = self._keys, self._sorted_keys, None
        limit = k if self.vectors is None else max(k, HYBRID_CANDIDATES)
        if self._index is not None:  # a large memory: score the index's candidates only
            indices = self._index.candidates(key, max(INDEX_CANDIDATES, 8 * limit), limit)
            if indices is not None:
                keys = [self._keys[i] for i in indices]
            sorted_keys = [_sorted_words(other) for other in keys]
        # The best by edit ratio, and by the ratio of sorted words (token_sort_ratio).
        found = {index if indices is None else int(indices[index])
                 for query, choices in ((key, keys), (_sorted_words(key), sorted_keys))
                 for _, _, index in process.extract(query, choices, scorer=fuzz.ratio, limit=limit)}
        cosine = None
        if self.vectors is not None:
            if vector is None:
                vector = self.embed([question])[0]
            if self._vector_index is not None:  # a large memory: the nearest groups only
                top, _ = self._vector_index.search(vector, limit)
            else:
                cosines = self.vectors @ vector
                top = (np.argpartition(-cosines, limit - 1)[:limit] if len(cosines) > limit
                       else np.arange(len(cosines)))
            found.update(int(i) for i in top)
            cosine = lambda i: float(self.vectors[i] @ vector)

        def scores(i: int) -> tuple[float, float]:  # (rank by, shown as)
            lexical = similarity(question, key, self.questions[i], self._keys[i])
            if cosine is None:
                return lexical, lexical
            meaning = max(cosine(i), 0.0)  # float32 unit vectors: a cosine may exceed 1 by 1e-4
            return (lexical + meaning) / 2, min(max(lexical, meaning), 1.0)

        scored = [(i, *scores(i)) for i in found]
        ranked = sorted(((i, r, s) for i, r, s in scored if s >= min_similarity),
                        key=lambda item: (-item[1], item[0]))
        return [Match(self.questions[i], s, self.answers[i]) for i, _, s in ranked]

    def retrieve_each(self, questions, k: int) -> list[tuple[tuple[str, str, float], ...]]:
        """What the model is shown beside each question (nothing for an empty one or k 0): the
        one mapping replies, validation and teacher-forced evaluation all use."""
        questions = list(questions)
        wanted = [i for i, q in enumerate(questions) if k and q]
        vectors = dict(zip(wanted, self.embed([questions[i] for i in wanted])))
        return [tuple(self.retrieve(q, k, vector=vectors[i])) if i in vectors else ()
                for i, q in enumerate(questions)]

    def retrieve(self, question: str, k: int, exclude: str | None = None,
                 prefer: str | None = None, vector: np.ndarray | None = None) -> list[tuple[str, str, float]]:
        """What the model is shown: up to ``k`` (question, answer, similarity) pairs, most alike
        first, one per distinct training question. A question with several answers shows its
        first one, or ``prefer`` when it is among them (training shows an example its own
        answer). ``exclude`` leaves that training question out (training's leave-own-out);
        ``vector`` is the question's embedding when the caller batched them (``embed``)."""
        found = self.nearest(question, k + (exclude is not None), 0.0, vector)
        shown = []
        for match in found:
            if match.question == exclude:
                continue
            answer = prefer if prefer in match.answers else match.answers[0]
            # Never shown as more alike than a pair ranked above it (see ``nearest``).
            similarity = min(match.similarity, shown[-1][2]) if shown else match.similarity
            shown.append((match.question, answer, similarity))
        return shown[:k]


def memory_for(data, train: list[Example], vectors: tuple[np.ndarray, str] | None = None) -> AnswerMemory | None:
    """The answer memory a model with this ``DataConfig`` reads, or None when it reads none
    (no retrieved pairs, or no training pairs kept): the one place that decides it."""
    if not data.retrieved_pairs or not train:
        return None
    return AnswerMemory(train, data.retriever, vectors)
