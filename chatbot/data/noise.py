"""Noisy variants of questions, so the model trains on what people actually type.

Users mistype, drop and repeat words, reorder them, write "u" for "you", say it in other words
("rumors" for "gossip") and ignore case and punctuation. Training on seeded noisy copies of each
training question (with what retrieval finds for the noisy text) teaches the decoder to cope with
that, and teaches it to judge the retrieved pairs rather than trust the nearest one blindly.
"""

from __future__ import annotations

import random
import string
from typing import Sequence

import regex

from chatbot.data.text import EXPANSIONS

_GRAPHEME = regex.compile(r"\X")  # a letter with its combining marks (a Hindi vowel sign, an Arabic haraka)
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEIGHBOURS: dict[str, str] = {}
for _r, _row in enumerate(_ROWS):
    for _c, _key in enumerate(_row):
        near = [_row[j] for j in (_c - 1, _c + 1) if 0 <= j < len(_row)]
        for _other in (_r - 1, _r + 1):
            if 0 <= _other < len(_ROWS):
                near += [_ROWS[_other][j] for j in (_c - 1, _c, _c + 1) if 0 <= j < len(_ROWS[_other])]
        _NEIGHBOURS[_key] = "".join(near)
# Chat spellings: the reverse of the expansions retrieval folds away ("you" -> "u").
_CONTRACTIONS = {}
for _short, _long in EXPANSIONS.items():
    _CONTRACTIONS.setdefault(_long, []).append(_short)


def _typo(word: str, rng: random.Random) -> str:
    """One typo, made on what a keyboard types, grapheme clusters rather than code points: a
    Hindi vowel sign, a virama or an Arabic haraka goes, comes twice or swaps with its letter,
    and is never left alone at the start of a word."""
    units = _GRAPHEME.findall(word)
    letters = [i for i, unit in enumerate(units) if unit[0].isalpha()]
    if len(letters) < 2:
        return word
    i = rng.choice(letters)
    kind = rng.randrange(4)
    if kind == 0 and units[i].lower() in _NEIGHBOURS:  # a neighbouring key
        units[i] = rng.choice(_NEIGHBOURS[units[i].lower()])
    elif kind == 1:  # a dropped letter
        del units[i]
    elif kind == 2 and i + 1 < len(units):  # swapped letters
        units[i], units[i + 1] = units[i + 1], units[i]
    else:  # a doubled letter
        units.insert(i, units[i])
    return "".join(units)


def _contract(words: list[str], rng: random.Random) -> list[str]:
    """A phrase of ``_CONTRACTIONS`` (its first occurrence) in its short form. Words are
    compared one by one: lower-casing may change a word's length ("İ"), so a position found in
    the lowered text could not be used in the original."""
    lowered = [w.lower() for w in words]
    options = []
    for long, shorts in _CONTRACTIONS.items():
        phrase = long.split()
        at = next((i for i in range(len(words) - len(phrase) + 1) if lowered[i:i + len(phrase)] == phrase), None)
        if at is not None:
            options.extend((at, len(phrase), short) for short in shorts)
    if not options:
        return words
    at, length, short = rng.choice(options)
    return words[:at] + short.split() + words[at + length:]


# Words people add around a question without changing it.
_FILLERS_BEFORE = ("so", "hey", "well", "ok", "please", "tell me", "i wonder", "can you tell me", "do you know")
_FILLERS_AFTER = ("please", "then", "by the way", "at all", "really", "now", "exactly")


def noisy(text: str, rng: random.Random, substitutes: Sequence[str] = ()) -> str:
    """One noisy variant of ``text``: one to three edits of the kinds above (typos, dropped,
    doubled or swapped words, chat spellings, a filler before or after, and, given
    ``substitutes``, a word replaced by one of them), case and final punctuation sometimes
    changed; the fillers, English words, are added only to text in Latin letters. Rewordings
    of this kind leave a question only moderately alike its original, so the model also sees
    retrieval right at middling similarity, not only near 1.

    A replaced word stands in for a synonym the model cannot know ("rumors" for "gossip"):
    the question still means its original, and the original pair is usually what retrieval
    shows, so the model learns to copy a retrieved answer whose question differs by a word
    rather than answer from what it memorised of the words it sees (bench/README.md, run 11).
    Never empty; may equal ``text`` for very short inputs."""
    words = text.split()
    if not words:
        return text
    latin = all(ord(ch) < 0x250 for ch in text if ch.isalpha())  # Basic Latin to Latin Extended-B
    for _ in range(rng.choice((1, 1, 2, 3))):
        kind = rng.randrange(8 if substitutes else 7)
        if kind == 7:
            words[rng.randrange(len(words))] = rng.choice(substitutes)
            continue
        if kind == 6:
            before = rng.random() < 0.5
            filler = rng.choice(_FILLERS_BEFORE if before else _FILLERS_AFTER).split()
            if latin:  # English words in an Arabic or Thai question are not what people type
                words = filler + words if before else words + filler
            continue
        if kind <= 1:  # typos are the commonest noise
            i = rng.randrange(len(words))
            words[i] = _typo(words[i], rng)
        elif kind == 2 and len(words) > 2:
            del words[rng.randrange(len(words))]
        elif kind == 3:
            i = rng.randrange(len(words))
            words.insert(i, words[i])
        elif kind == 4 and len(words) > 1:
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
        else:
            words = _contract(words, rng)
    out = " ".join(words)
    style = rng.randrange(4)
    if style == 0:
        out = out.lower()
    elif style == 1:
        out = out.rstrip(string.punctuation + " ") or out
    return out or text
