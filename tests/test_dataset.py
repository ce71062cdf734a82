"""Batches: every example once per epoch, padded per batch, teacher-forcing shift."""

from __future__ import annotations

import numpy as np

from chatbot.data.dataset import batch_size_for, make_dataset
from chatbot.data.tokenizer import END, PAD, START


def random_data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    sources = [list(map(int, rng.integers(5, 50, rng.integers(1, 30)))) for _ in range(n)]
    targets = [list(map(int, rng.integers(5, 50, rng.integers(1, 150)))) + [END] for _ in range(n)]
    return sources, targets


def test_every_example_appears_once_per_epoch_in_a_fixed_number_of_batches():
    sources, targets = random_data()
    data = make_dataset(sources, targets, batch_size=16, shuffle=True, seed=3)
    expected = sorted(tuple(t) for t in targets)
    counts = []
    for _ in range(2):
        seen, batches = [], 0
        for (src, dec), tgt in data:
            batches += 1
            for row in tgt.numpy():
                seen.append(tuple(int(x) for x in row if x != PAD))
        assert sorted(seen) == expected
        counts.append(batches)
    assert counts[0] == counts[1] == int(data.cardinality())


def test_batches_are_padded_to_their_own_longest_member_only():
    sources, targets = random_data()
    longest = max(len(t) for t in targets)
    widths = [int(tgt.shape[1]) for (_, _), tgt in make_dataset(sources, targets, 16)]
    assert min(widths) < longest / 4  # short examples are not padded to the corpus maximum
    assert max(widths) == longest


def test_decoder_input_is_the_target_shifted_behind_start():
    sources, targets = random_data(20)
    for (src, dec), tgt in make_dataset(sources, targets, 4):
        dec, tgt = dec.numpy(), tgt.numpy()
        assert (dec[:, 0] == START).all()
        for d, t in zip(dec, tgt):
            n = int((t != PAD).sum())
            assert list(d[1:n]) == list(t[:n - 1]) and t[n - 1] == END


def test_very_long_buckets_get_smaller_batches():
    sizes = [batch_size_for(length, length, 64) for length in (4, 256, 512, 1024, 5000)]
    assert sizes[:3] == [64, 64, 64] and sizes[-1] <= 8
    assert sizes == sorted(sizes, reverse=True)


def test_a_cell_budget_cuts_batches_of_long_examples_and_keeps_every_example():
    """``training.max_batch_cells``: a batch's decoder positions x (source + vocabulary) stay
    within the budget, so the longest code answers beside long retrieved inputs cannot blow up a
    step's memory, while batches of short examples keep the full batch size."""
    rng = np.random.default_rng(2)
    lengths = [(6, 4)] * 120 + [(200, 150)] * 40
    sources = [list(map(int, rng.integers(5, 50, s))) for s, _ in lengths]
    targets = [list(map(int, rng.integers(5, 50, t))) + [END] for _, t in lengths]
    vocab, budget = 100, 200_000
    unlimited = make_dataset(sources, targets, 32, shuffle=True, seed=1, vocab_size=vocab)
    limited = make_dataset(sources, targets, 32, shuffle=True, seed=1, vocab_size=vocab, max_cells=budget)
    cells, seen = [], []
    for (src, dec), tgt in limited:
        cells.append(tgt.shape[0] * tgt.shape[1] * (src.shape[1] + vocab))
        seen += [tuple(int(x) for x in row if x != PAD) for row in tgt.numpy()]
    assert sorted(seen) == sorted(tuple(t) for t in targets)
    assert max(cells) <= budget
    assert max(t.shape[0] * t.shape[1] * (s.shape[1] + vocab) for (s, _), t in unlimited) > budget
    full = [int(t.shape[0]) for (_, _), t in limited if t.shape[1] <= 5]
    assert max(full) == 32  # short examples are unaffected
    assert int(limited.cardinality()) > int(unlimited.cardinality())


def test_short_answers_beside_long_inputs_are_not_padded_to_long_answers():
    """Retrieval makes inputs long while most answers stay short: the decoder side of a batch
    must be padded to answers of its own length, not to those of inputs as long."""
    rng = np.random.default_rng(1)
    sources = [list(map(int, rng.integers(5, 50, 80))) for _ in range(200)]
    targets = [list(map(int, rng.integers(5, 50, n))) + [END] for n in [5] * 150 + [90] * 50]
    real = sum(len(t) for t in targets)
    padded = sum(int(tgt.shape[0] * tgt.shape[1]) for (_, _), tgt in make_dataset(sources, targets, 16))
    assert padded < 1.1 * real
