"""Noisy question variants: what training shows the model of what people type."""

from __future__ import annotations

import random

from hypothesis import given, settings, strategies as st

from chatbot.data.noise import noisy

WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz'", min_size=1, max_size=9)


@settings(max_examples=200, deadline=None)
@given(st.lists(WORDS, min_size=1, max_size=8), st.integers(0, 2 ** 32 - 1))
def test_a_noisy_variant_is_never_empty_and_is_seeded(words, seed):
    text = " ".join(words)
    variant = noisy(text, random.Random(seed))
    assert variant.strip()
    assert variant == noisy(text, random.Random(seed))


def test_substitutes_replace_words_only_when_given():
    question = "tell me about gossip"
    plain = [noisy(question, random.Random(seed)) for seed in range(300)]
    assert not any("rumors" in variant for variant in plain)
    swapped = [noisy(question, random.Random(seed), substitutes=["rumors"]) for seed in range(300)]
    with_word = [variant for variant in swapped if "rumors" in variant.lower().split()]
    # One edit in eight replaces a word, one to three edits per variant.
    assert 0.1 < len(with_word) / len(swapped) < 0.4
    # A replacement takes a word's place: the other words stay (some mistyped or dropped).
    assert any(variant.lower().rstrip("?.!") in {"rumors me about gossip", "tell rumors about gossip",
                                                  "tell me rumors gossip", "tell me about rumors"}
               for variant in with_word)


def test_a_contraction_replaces_its_own_words_when_lower_casing_changes_lengths():
    """"İ".lower() is two characters: a position found in the lowered text garbled another word
    ("İstanbul what is it" became "İstanbul wwhatsit")."""
    from chatbot.data.noise import _contract

    variants = {" ".join(_contract("İstanbul what is it".split(), random.Random(seed))) for seed in range(50)}
    assert variants == {"İstanbul whats it", "İstanbul what's it", "İstanbul wat is it"}


def test_typos_keep_combining_marks_with_their_letters():
    """Typos are made on grapheme clusters: a Hindi vowel sign or an Arabic haraka dropped,
    swapped or doubled on its own left words no keyboard types (one starting with a mark), and
    English fillers ("then") appeared inside Arabic questions."""
    import unicodedata

    for question in ("किताब कहाँ है?", "आपका नाम क्या है?", "مَرْحَبًا كَيْفَ حَالُكَ؟", "שָׁלוֹם עֲלֵיכֶם",
                     "สวัสดีครับ คุณชื่ออะไร"):
        variants = [noisy(question, random.Random(seed)) for seed in range(400)]
        assert not [v for v in variants if any(unicodedata.category(w[0]).startswith("M") for w in v.split())]
        assert not [v for v in variants if any("a" <= ch <= "z" for ch in v)]  # no English filler
        assert len(set(variants)) > 50  # still noisy
    assert any("then" in noisy("where is the station", random.Random(seed)).split() for seed in range(200))
