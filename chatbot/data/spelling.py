"""Spelling normalisation: a word nobody knows becomes the nearest word the corpus knows.

A typo turns a word the model has seen into subword pieces it has not, and costs the decoder
far more than it costs retrieval: measured on the typo'd dev questions of bench/data, the
decoder alone answered 0.62 of them before this step. The same correction runs on training
inputs (the noisy variants), on retrieval queries and on what the model reads at reply time,
so the model is trained on what it meets.

A word is left as typed when the corpus or a general English word list knows it (the whole
words of the sentence encoder's BERT vocabulary, about 22,000, already installed with the
package; an inflection of one, such as "warmest", counts), when it is shorter than 3 letters,
when it is written in a script without spaces between words (Chinese, Japanese, Thai...: a
"word" there is a whole phrase), or when no corpus word is within 1 edit (2 for words of 7
letters or more; Damerau-Levenshtein, by rapidfuzz). Ties go to the word the corpus uses most.
The typed case pattern is kept.

The word list is English only: in a corpus mostly of other languages, every word the corpus
lacks would be "corrected" to a corpus word ("Wie heißen Sie?" read as "Wie heiße Die?"), so
there the model reads questions as typed (``speller_for``). In a mostly English corpus with
pairs in another language, a question using as many of those pairs' own words as English
words they never use is read as typed too (``Speller.reads_foreign``): its words the corpus
lacks are that language's, and the nearest corpus word is no correction of them.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import zipfile
from collections import Counter
from pathlib import Path
from typing import Iterable

import regex
from rapidfuzz import process
from rapidfuzz.distance import DamerauLevenshtein

from chatbot.data.text import EXPANSIONS

_WORD = regex.compile(r"[\p{L}\p{M}]+")  # letters with their combining marks (Hindi, Arabic), any script
_UNSPACED = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}]")
MIN_GENERAL_SHARE = 0.5  # of a corpus' words the English word list must know for spelling to run
MIN_LETTERS = 3
MIN_STEM = 4  # "warmest" is known through "warm"; "nicd" is not through "nic"
LONG_WORD = 7  # words this long may be 2 edits from their correction
SUFFIXES = ("s", "es", "ed", "d", "er", "est", "ing", "ly")
QUESTION_WEIGHT = 3  # a word of the questions counts as this many of the answers' words
FOREIGN_WORD_PAIRS = 3  # a word only pairs in other languages use, in this many of them, ...
FOREIGN_LANGUAGE_WORDS = 10  # ... and this many such words: the corpus has pairs in another language


def minilm_archive() -> Path | None:
    """The archive of the installed all-MiniLM-L6-v2 package (weights and BERT vocabulary),
    found without importing the package (its ``__init__`` prints a banner); None if absent."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "model.zip"


@functools.cache
def english_words() -> frozenset[str]:
    """Whole, alphabetic words of the BERT vocabulary (lower case); empty when unavailable,
    which leaves the corpus as the only judge of what is a word."""
    path = minilm_archive()
    if path is None:
        return frozenset()
    try:
        with zipfile.ZipFile(path) as archive:
            vocab = json.loads(archive.read("tokenizer.json"))["model"]["vocab"]
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile):
        return frozenset()
    return frozenset(w for w in vocab if len(w) > 1 and w.isalpha())


class Speller:
    """``correct(text)``: ``text`` with unknown words replaced by their nearest corpus word."""

    def __init__(self, word_counts: Counter, general: Iterable[str] = (), foreign: Iterable[str] = (),
                 used_in_others: Iterable[str] = ()):
        self.counts = Counter({w: c for w, c in word_counts.items() if c > 0})
        self.words = list(self.counts)
        self.general = frozenset(general)
        self.known = set(self.counts) | self.general | set(EXPANSIONS)
        self.foreign = frozenset(foreign)  # words only the corpus' pairs in other languages use
        # Every word those pairs use: "para", "como" or "con" are in the English list too, and
        # tell nothing (``reads_foreign``).
        self.used_in_others = frozenset(used_in_others) if self.foreign else frozenset()
        self._corrections: dict[str, str | None] = {}
        # Two edits at most: a longer word has no corpus word near it, and is neither looked up
        # nor cached (a message may be one 20,000-letter word; the cache held 19 KB per entry).
        self._longest = max(map(len, self.words), default=0) + 2

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]], general: Iterable[str] | None = None) -> Speller:
        """From (question, answer) pairs; ``general`` defaults to ``english_words()``."""
        general = english_words() if general is None else frozenset(general)
        counts: Counter = Counter()
        in_english, in_others = set(), Counter()  # long words of pairs in English; of pairs in others, how many
        used_in_others: set[str] = set()
        is_english: dict[str, bool] = {}
        for question, answer in pairs:
            asked, answered = _WORD.findall(_lower(question)), _WORD.findall(_lower(answer))
            for word in asked:
                counts[word] += QUESTION_WEIGHT
            counts.update(answered)
            long = _long_words(asked + answered)
            english = 0
            for word in long:
                known = is_english.get(word)
                if known is None:
                    known = is_english[word] = _known_in(word, general)
                english += known
            if len(long) >= 2 and english < MIN_GENERAL_SHARE * len(long):
                in_others.update(long)
                used_in_others.update(asked + answered)
            else:
                in_english.update(long)
        foreign = {w for w in in_others if w not in in_english and not is_english[w]} if general else set()
        # A language's own words recur; names ("Bilbo", "Hobbit") make a pair of an English corpus
        # look foreign once or twice, and must not stop its questions' corrections.
        if sum(in_others[w] >= FOREIGN_WORD_PAIRS for w in foreign) < FOREIGN_LANGUAGE_WORDS:
            foreign = set()
        return cls(counts, general, foreign, used_in_others)

    def general_share(self) -> float:
        """The share of the corpus' different words of 4 letters or more that the general word
        list knows: 0.83 for corpora/english, 0.10 for corpora/spanish. (Counting every word
        as used, short ones that English shares with German or Spanish, "die", "was", "no",
        put German at 0.52.)"""
        long = _long_words(self.counts)
        return sum(_known_in(w, self.general) for w in long) / len(long) if long else 0.0

    def mostly_english(self) -> bool:
        """Whether most of the corpus' words are English (``general_share`` of at least
        ``MIN_GENERAL_SHARE``); True when there is no word list, or no word, to tell. Spelling
        and the sentence encoder know English only."""
        return not self.general or not self.words or self.general_share() >= MIN_GENERAL_SHARE

    def _is_known(self, word: str) -> bool:
        return _known_in(word, self.known)

    def correction(self, word: str) -> str | None:
        """The lower-case corpus word ``word`` should be, or None to keep it."""
        word = _lower(word)
        if len(word) > self._longest:
            return None
        if word in self._corrections:
            return self._corrections[word]
        found = None
        if len(word) >= MIN_LETTERS and not _UNSPACED.search(word) and not self._is_known(word):
            limit = 2 if len(word) >= LONG_WORD else 1
            near = process.extract(word, self.words, scorer=DamerauLevenshtein.distance,
                                   score_cutoff=limit, limit=None)
            if near:
                closest = min(distance for _, distance, _ in near)
                found = max((w for w, distance, _ in near if distance == closest),
                            key=lambda w: (self.counts[w], w))
        if len(self._corrections) < 100_000:  # bounded: a long-running server meets many words
            self._corrections[word] = found
        return found

    def correct(self, text: str) -> str:
        if self.foreign and self.reads_foreign(text):
            return text
        return _WORD.sub(self._replace, text)

    def reads_foreign(self, text: str) -> bool:
        """Whether ``text`` is in another language than English: it has as many words that only
        the corpus' pairs in other languages use as English words those pairs never use (3
        letters or more: "how are yuo doign" after a "Hola" is English). The word list is
        English, so its nearest words would turn a Spanish question's "construir" into
        "construct" in a mostly English corpus with some Spanish pairs."""
        words = set(_WORD.findall(_lower(text)))
        foreign = sum(w in self.foreign for w in words)
        english = sum(len(w) >= MIN_LETTERS and w not in self.used_in_others and _known_in(w, self.general)
                      for w in words)
        return foreign > 0 and foreign >= english

    def _replace(self, match: "regex.Match") -> str:
        typed = match.group()
        fixed = self.correction(typed)
        if fixed is None:
            return typed
        if typed.isupper() and len(typed) > 1:
            return fixed.upper()
        if typed[0].isupper():
            return fixed[0].upper() + fixed[1:]
        return fixed


def _lower(text: str) -> str:
    """Lower case in which Turkish "İ" is "i" (``str.lower`` adds a combining dot, and "NEDİR"
    would be a word the corpus' "nedir" lacks)."""
    return text.lower().replace("i\u0307", "i")


def _long_words(words: Iterable[str]) -> set[str]:
    """The words long enough to tell a language by (short ones are shared: "no", "die", "was")."""
    return {w for w in words if len(w) >= MIN_STEM}


def _known_in(word: str, vocabulary) -> bool:
    """Whether ``vocabulary`` holds ``word`` or the stem of an inflection of it ("warmest")."""
    if word in vocabulary:
        return True
    return any(word.endswith(s) and word[:-len(s)] in vocabulary for s in SUFFIXES if len(word) - len(s) >= MIN_STEM)


def mostly_english(examples: Iterable) -> bool:
    """``Speller.mostly_english`` of these training examples (``Example``)."""
    return Speller.from_pairs((e.question, e.answer) for e in examples).mostly_english()


def speller_for(data, examples: Iterable) -> Speller | None:
    """The speller a model with this ``DataConfig`` reads through, learning its words from its
    training examples (``Example``), or None: ``data.spelling`` off, no words to learn, or a
    corpus mostly not in English, the one language there is a word list for (``general_share``
    under ``MIN_GENERAL_SHARE``). The one place that decides it, at training and at loading."""
    if not getattr(data, "spelling", False):
        return None
    speller = Speller.from_pairs((e.question, e.answer) for e in examples)
    if not speller.words or not speller.mostly_english():
        return None
    return speller
