"""Bots loaded from one bundle share its model and compiled decoder (chatbot/dialogue/loaded.py):
TensorFlow never frees a compiled program, so a process loading bots in turn used to grow by
each bot's programs until it crashed."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from chatbot.dialogue.bot import ChatBot
from chatbot.errors import BundleError, StoreError
from chatbot.model.bundle import WEIGHTS, Bundle


@pytest.fixture
def copy(tiny_bundle_path, tmp_path):
    """The tiny bundle at a path no other test loads."""
    return Bundle.load(tiny_bundle_path).save(tmp_path / "tiny")


def test_a_second_bot_of_a_bundle_compiles_nothing(copy, tiny_pairs):
    questions = [q for q, _ in tiny_pairs[:4]]
    with ChatBot.load(copy, db="sqlite://") as first:
        replies = [r.text for r in first.generate(questions)]
        traced, programs = first.generator.trace_count, first.compiled_programs
        assert programs >= 1
    second = ChatBot.load(copy, db="sqlite://")
    assert second.bundle is first.bundle and second.generator is first.generator
    assert [r.text for r in second.generate(questions)] == replies == [a for _, a in tiny_pairs[:4]]
    assert (second.generator.trace_count, second.compiled_programs) == (traced, programs)
    # closing the first bot closed its database only: the second keeps its own
    with pytest.raises(StoreError, match="closed"):
        first.history("talk")
    second.new_session("talk")
    assert second.reply(tiny_pairs[0][0], session="talk").text == tiny_pairs[0][1]
    second.close()


def test_a_bundle_saved_over_is_loaded_again(copy):
    before = ChatBot.load(copy, db="sqlite://", warm_up=False)
    retrained = Bundle.load(copy)
    retrained.config = dataclasses.replace(
        retrained.config, decoding=dataclasses.replace(retrained.config.decoding, max_length=7))
    retrained.save(copy)
    after = ChatBot.load(copy, db="sqlite://", warm_up=False)
    assert after.bundle is not before.bundle and after.generator is not before.generator
    assert (before.decoding.max_length, after.decoding.max_length) != (7, 7) and after.decoding.max_length == 7
    assert ChatBot.load(copy, warm_up=False).generator is after.generator


def test_a_bundle_damaged_after_loading_is_refused_on_the_next_load(copy):
    ChatBot.load(copy, warm_up=False)
    with open(copy / WEIGHTS, "r+b") as f:
        f.seek(-100, 2)
        f.write(b"\0" * 100)
    with pytest.raises(BundleError, match="checksum mismatch"):
        ChatBot.load(copy, warm_up=False)


def test_a_bot_made_from_a_bundle_has_a_generator_of_its_own(copy):
    shared = ChatBot.load(copy, warm_up=False)
    own = ChatBot(Bundle.load(copy), warm_up=False)
    assert own.generator is not shared.generator and own.bundle is not shared.bundle


def test_threads_loading_one_bundle_at_once_load_it_once(copy):
    bots: list[ChatBot] = []
    threads = [threading.Thread(target=lambda: bots.append(ChatBot.load(copy, warm_up=False))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(bots) == 4 and len({id(bot.generator) for bot in bots}) == 1
