"""A corpus' training and validation examples, for corpora of any size.

``split_corpus`` reads the corpus once and keeps 12 bytes per example (a hash of its text and
its dialogue's number) to find duplicates and draw the split; afterwards the training side is
an ``Examples`` view that reads the corpus again on every pass. A corpus of millions of pairs
is then never held in memory as Python objects, and the split is the very one that
``split_examples`` and ``split_by_dialogue`` draw from lists.
"""

from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass
from typing import Collection, Iterable, Iterator

import numpy as np

from chatbot.data.corpus import Dialogue, Example, raw_examples, validation_positions
from chatbot.data.text import match_key

DROPPED, TRAIN, VALIDATION = 0, 1, 2


def _key(example: Example) -> int:
    """64 bits of the example's text: two of a million distinct examples collide with odds
    of 3e-8, and a collision only drops one example as if it were a repeat."""
    text = "\x1e".join((*example.context, "\x1f", example.question, "\x1f", example.answer))
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _question_key(example: Example) -> int:
    """64 bits of the example's input as retrieval compares it (``match_key``): the pairs a
    validation split must keep together."""
    text = "\x1e".join((*example.context, "\x1f", match_key(example.question)))
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


class Examples:
    """The examples of one side of a split, read from the corpus again on each pass."""

    def __init__(self, dialogues: Iterable[Dialogue], context_turns: int, labels: np.ndarray, side: int):
        self.dialogues, self.context_turns, self.labels, self.side = dialogues, context_turns, labels, side
        self.count = int(np.count_nonzero(labels == side))

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Example]:
        labels, side = self.labels, self.side
        for index, (_, example) in enumerate(raw_examples(self.dialogues, self.context_turns)):
            if labels[index] == side:
                yield example


@dataclass
class CorpusSplit:
    train: Examples
    validation: list[Example]
    total: int  # distinct examples of the corpus, both sides

    def every_example(self) -> Iterator[Example]:
        """Every example of the corpus, repeats included (accepted answers, for exact match)."""
        return (example for _, example in raw_examples(self.train.dialogues, self.train.context_turns))


def split_corpus(dialogues: Collection[Dialogue], context_turns: int, deduplicate: bool, split_by: str,
                 validation_fraction: float, seed: int) -> CorpusSplit:
    """The seeded split of ``split_examples`` (``split_by="pairs"``: random questions, each with
    all its pairs, repeats removed first) or of ``split_by_dialogue`` (whole dialogues held out, repeats removed within
    each side). ``dialogues`` must give the same dialogues on every pass, and know how many
    there are (a list, or ``DialogueFiles``)."""
    keys, owners, questions = array("Q"), array("I"), array("Q")
    for number, example in raw_examples(dialogues, context_turns):
        keys.append(_key(example))
        owners.append(number)
        if split_by != "dialogues":
            questions.append(_question_key(example))
    keys_np, owners_np = np.frombuffer(keys, dtype=np.uint64), np.frombuffer(owners, dtype=np.uint32)
    labels = np.full(len(keys_np), TRAIN, dtype=np.int8)
    if split_by == "dialogues":
        dialogue_count = len(dialogues)
        held_out = np.zeros(dialogue_count, dtype=bool)
        held_out[list(validation_positions(dialogue_count, validation_fraction, seed))] = True
        labels[held_out[owners_np]] = VALIDATION
        if deduplicate:
            for side in (TRAIN, VALIDATION):
                members = np.flatnonzero(labels == side)
                repeats = np.ones(len(members), dtype=bool)
                repeats[np.unique(keys_np[members], return_index=True)[1]] = False
                labels[members[repeats]] = DROPPED
    else:
        if deduplicate:
            first = np.zeros(len(keys_np), dtype=bool)
            first[np.unique(keys_np, return_index=True)[1]] = True
            labels[~first] = DROPPED
        # Whole questions are held out, every answer of one with it: a question with answers on
        # both sides was retrieved from training at similarity 1.0 and scored against its
        # training answers (a fifth of corpora/english's validation questions were).
        kept = np.flatnonzero(labels != DROPPED)
        groups, group_of = np.unique(np.frombuffer(questions, dtype=np.uint64)[kept], return_inverse=True)
        held_out = np.zeros(len(groups), dtype=bool)
        held_out[sorted(validation_positions(len(groups), validation_fraction, seed))] = True
        labels[kept[held_out[group_of]]] = VALIDATION
    del keys, owners, questions, keys_np, owners_np
    total = int(np.count_nonzero(labels != DROPPED))
    return CorpusSplit(Examples(dialogues, context_turns, labels, TRAIN),
                       list(Examples(dialogues, context_turns, labels, VALIDATION)), total)
