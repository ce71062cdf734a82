"""data.spelling: unknown words become the nearest corpus word, for training and replies alike."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings, strategies as st

from chatbot.data.spelling import Speller, english_words

PAIRS = [
    ("What is basketball?", "A game with tall players."),
    ("Do you get embarrassed?", "That is a pretty common human emotion."),
    ("What is your favorite programming language?", "Python, for its readability."),
    ("Who invented the steam engine?", "James Watt improved it."),
    ("Do you hate me?", "No."),
]


def speller(general=("hey", "furious", "warm")) -> Speller:
    return Speller.from_pairs(PAIRS, general=general)


def test_typos_become_the_corpus_words_they_were():
    spell = speller()
    assert spell.correct("what is bbasketball") == "what is basketball"
    assert spell.correct("Do you get embarassed?") == "Do you get embarrassed?"
    assert spell.correct("whoo invnted the steam engien") == "who invented the steam engine"


def test_the_typed_case_pattern_is_kept():
    spell = speller()
    assert spell.correct("WHAT IS BASKETBAL") == "WHAT IS BASKETBALL"
    assert spell.correct("Programing") == "Programming"


def test_known_words_short_words_and_far_words_are_left_as_typed():
    spell = speller()
    # "hey" and "furious" are English (the general list), "warmest" an inflection of "warm";
    # "te" is too short to judge (2 letters), "xylophone" is 2+ edits from every corpus word.
    for text in ("hey you", "you make me furious", "the warmest", "te engine", "a xylophone"):
        assert spell.correct(text) == text


def test_words_longer_than_any_corpus_word_by_three_letters_are_neither_looked_up_nor_cached():
    """The cache holds up to 100,000 words: of 20,000 letters each (a message may be one such
    word), 2 GB held for the process' life."""
    spell = speller()
    assert spell.correct("programminggg") == "programming"  # two edits from the longest word
    long_words = [f"{n}" + "x" * 20_000 for n in range(50)] + ["programmingxyz"]
    assert all(spell.correct(w) == w for w in long_words) and not set(long_words) & set(spell._corrections)


def test_ties_go_to_the_more_frequent_corpus_word():
    spell = Speller(Counter({"cat": 5, "car": 1}), general=())
    assert spell.correct("cax") == "cat"
    spell = Speller(Counter({"cat": 1, "car": 5}), general=())
    assert spell.correct("cax") == "car"


def test_the_general_word_list_is_the_sentence_encoders_vocabulary():
    words = english_words()
    assert len(words) > 15_000
    assert {"furious", "insane", "hello"} <= words
    assert not any(w.startswith("##") for w in words)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyzABC ?!'é"), max_size=60))
def test_correcting_twice_changes_nothing_more_and_keeps_everything_but_letters(text):
    spell = speller()
    once = spell.correct(text)
    assert spell.correct(once) == once  # a correction is a corpus word, which is known
    strip = lambda s: "".join(c for c in s if not c.isalpha())  # noqa: E731
    assert strip(once) == strip(text)  # spaces and punctuation are never touched


def test_scripts_without_spaces_and_turkish_capitals_are_left_as_typed():
    """A run of Chinese characters is a phrase, not a word: "fish" became "cat" and Kyoto Tokyo."""
    spell = Speller.from_pairs([("你喜欢猫吗？", "是的。"), ("東京はどこですか？", "日本です。"), ("İstanbul nerede?", "Türkiye'de.")],
                               general=())
    assert spell.correct("你喜欢鱼吗？") == "你喜欢鱼吗？" and spell.correct("京都はどこですか？") == "京都はどこですか？"
    assert spell.correct("İstanbul nerede?") == "İstanbul nerede?"  # it was read as "Stanbul"
    assert spell.correct("ISTANBUL NEREDE") == "ISTANBUL NEREDE"


def test_a_corpus_mostly_in_another_language_is_read_as_typed():
    """The word list is English: in a German corpus "Sie" was "corrected" to "Die"."""
    from types import SimpleNamespace

    from chatbot.data.spelling import speller_for

    def examples(pairs):
        return [SimpleNamespace(question=q, answer=a) for q, a in pairs]

    german = [("Wie heiße ich?", "Du heißt Anna."), ("Bist du ein Programmierer?", "Nein, ich bin ein Roboter."),
              ("Was machst du gern?", "Ich lese gern Bücher."), ("Wo wohnst du?", "Ich wohne im Rechner.")]
    data = SimpleNamespace(spelling=True)
    assert english_words() and speller_for(data, examples(german)) is None
    english = speller_for(data, examples(PAIRS))
    assert english is not None and english.general_share() > 0.5


def _bundled_pairs(name: str) -> list[tuple[str, str]]:
    from chatbot.data.corpus import load_corpus
    from conftest import ROOT

    return [(e.question, e.answer) for e in load_corpus(ROOT / "corpora" / name, quiet=True).examples()]


def test_questions_in_the_other_language_of_a_mostly_english_corpus_are_read_as_typed():
    """corpora/english with a quarter of corpora/spanish: the English word list turned Spanish
    words the corpus lacks into English ones ("construir" -> "construct") or into other Spanish
    ones ("programar" -> "programa"). Questions using as many of the Spanish pairs' own words
    as English words they never use are now left as typed: 47 of the other 505 Spanish questions
    changed, not 155. An English question after a Spanish greeting is still corrected."""
    english, spanish = _bundled_pairs("english"), _bundled_pairs("spanish")
    spell = Speller.from_pairs(english + spanish[::4])
    assert spell.mostly_english() and spell.foreign
    for question in ("AI es el campo de la ciencia que se ocupa de construir hardware",
                     "Qué lenguaje es mejor para programar", "Un robot tiene su propia voluntad, ya sabes."):
        assert spell.reads_foreign(question) and spell.correct(question) == question
    assert spell.correct("Who wrote the Hobit?") == "Who wrote the Hobbit?"  # English is still corrected
    assert spell.correct("whta is yuor name") == "what is your name"
    assert spell.correct("Hola, how are yuo doign?") == "Hola, how are you doing?"
    held_out = [q for i, (q, _) in enumerate(spanish) if i % 4]
    assert sum(spell.correct(q) != q for q in held_out) <= 0.12 * len(held_out)
    unchecked = Speller(spell.counts, spell.general)  # the same words, no other language told apart
    assert sum(unchecked.correct(q) != q for q in held_out) >= 0.25 * len(held_out)


def test_names_in_an_english_corpus_do_not_make_it_bilingual():
    """A pair about Bilbo Baggins and the Hobbit has few English words, and "que veut dire hal"
    is French: a few such pairs tell no language apart, and every question is corrected as before."""
    spell = Speller.from_pairs(_bundled_pairs("english"))
    assert spell.foreign == frozenset()
    assert spell.correct("who worte the hobbit") == "who wrote the hobbit"
