"""Issue 19 (items 2, 6, 7) through ``ChatBot``: race-free named sessions, huge messages,
and typed errors for every wrong type the public methods can be handed."""

from __future__ import annotations

import dataclasses

import pytest

from chatbot.dialogue.bot import ReplyRequest

import chatbot.dialogue.bot as bot_module
from chatbot.config import Config, DialogueConfig, specs
from chatbot.errors import ConfigError, InputError
from helpers import all_at_once


# --- item 2 ----------------------------------------------------------------------------------
def test_sixteen_threads_get_or_create_one_named_session(bot):
    got, errors = all_at_once(lambda: bot.session("racy").id)
    assert errors == [], errors[:1]
    assert len(got) == 16 and len(set(got)) == 1
    assert [s.name for s in bot.sessions()] == ["racy"]


def test_session_by_id_is_never_created(bot):
    from chatbot.dialogue.store import SessionNotFound

    with pytest.raises(SessionNotFound):
        bot.session(12345)
    assert bot.sessions() == []


# --- item 7: wrong types are typed, one-line errors ------------------------------------------
def _calls(bot, sid: int, reply_id: int):
    """(label, call) for every public method with an argument of the wrong type or range."""
    huge = 10 ** 30
    return [
        ("reply session huge", lambda: bot.reply("hi", session=huge)),
        ("reply session negative huge", lambda: bot.reply("hi", session=-huge)),
        ("reply session True", lambda: bot.reply("hi", session=True)),
        ("reply session float", lambda: bot.reply("hi", session=1.0)),
        ("reply session bytes", lambda: bot.reply("hi", session=b"x")),
        ("reply session 5000 digits", lambda: bot.reply("hi", session=10 ** 5000)),
        ("generate str", lambda: bot.generate("hello")),
        ("generate bytes", lambda: bot.generate(b"hello")),
        ("generate contexts str", lambda: bot.generate(["hi"], "ab")),
        ("generate context str", lambda: bot.generate(["hi"], ["ab"])),
        ("generate context turn not str", lambda: bot.generate(["hi"], [["ok", 5]])),
        ("generate contexts too few", lambda: bot.generate(["hi", "yo"], [["ok"]])),
        ("generate contexts too many", lambda: bot.generate(["hi"], [["ok"], ["no"]])),
        ("generate question not str", lambda: bot.generate([5])),
        ("ask context str", lambda: bot.ask("hi", context="previous turn")),
        ("ask context of ints", lambda: bot.ask("hi", context=[1, 2])),
        ("session True", lambda: bot.session(True)),
        ("session huge", lambda: bot.session(huge)),
        ("session None", lambda: bot.session(None)),
        ("find_session None", lambda: bot.find_session(None)),
        ("history True", lambda: bot.history(True)),
        ("history huge", lambda: bot.history(huge)),
        ("history last str", lambda: bot.history(sid, last="3")),
        ("history last True", lambda: bot.history(sid, last=True)),
        ("history last negative", lambda: bot.history(sid, last=-1)),
        ("export_session True", lambda: bot.export_session(True)),
        ("export_session huge", lambda: bot.export_session(huge)),
        ("delete_session True", lambda: bot.delete_session(True)),
        ("delete_session huge", lambda: bot.delete_session(huge)),
        ("rate True", lambda: bot.rate(True, "good")),
        ("rate huge", lambda: bot.rate(huge, "good")),
        ("rate str id", lambda: bot.rate(str(reply_id), "good")),
        ("correct huge", lambda: bot.correct(huge, "better")),
        ("correct None id", lambda: bot.correct(None, "better")),
        ("warm_up str", lambda: bot.warm_up("beam")),
        ("warm_up unknown", lambda: bot.warm_up(["fastest"])),
        # A sample number is checked with no seed too (True was taken there).
        ("sample True, no seed", lambda: bot.reply_many([ReplyRequest("hi", store=False, sample=True,
                                                                      decoding={"strategy": "sample"})])),
    ]


def test_wrong_types_are_one_line_input_errors(bot):
    reply = bot.reply("hi", session=bot.new_session("s").id)
    sid, before = reply.session_id, bot.history(reply.session_id)
    failures = []
    for label, call in _calls(bot, sid, reply.message_id):
        try:
            call()
        except InputError as exc:
            if "\n" in str(exc) or not str(exc):
                failures.append(f"{label}: not one line: {exc!r}")
        except BaseException as exc:  # noqa: BLE001 - collected, so that one run lists them all
            failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:120]}")
        else:
            failures.append(f"{label}: accepted")
    assert failures == []
    # Nothing was stored, deleted or rated by the refused calls.
    assert [s.id for s in bot.sessions()] == [sid] and bot.history(sid) == before
    assert bot.store.get_feedback(reply.message_id) is None


def test_a_huge_last_means_all_of_the_history(bot):
    reply = bot.reply("hi")
    assert len(bot.history(reply.session_id, last=10 ** 30)) == 2


# --- item 6: huge messages -------------------------------------------------------------------
def test_max_message_chars_is_a_bounded_dialogue_setting():
    [spec] = [s for s in specs(DialogueConfig) if s.name == "max_message_chars"]
    assert spec.default == DialogueConfig().max_message_chars >= 10_000
    assert spec.min == 1 and spec.max is not None and spec.help
    for bad in (0, -5, spec.max + 1, 1.5, True):
        with pytest.raises(ConfigError, match="'dialogue.max_message_chars': (must be|expected int)"):
            Config().with_overrides({"dialogue.max_message_chars": bad})


def test_a_message_over_the_limit_is_refused_before_anything_is_stored(bot):
    bot.dialogue = bot.dialogue.with_overrides({"max_message_chars": 100})
    session = bot.new_session("limited")
    for text in ("x" * 101, "\x00" * 101):
        with pytest.raises(InputError, match="dialogue.max_message_chars") as caught:
            bot.reply(text, session=session.id)
        assert "\n" not in str(caught.value)
        with pytest.raises(InputError, match="dialogue.max_message_chars"):
            bot.ask(text)
    with pytest.raises(InputError, match="dialogue.max_message_chars"):
        bot.reply("x" * 101)  # would have created a session
    assert [s.id for s in bot.sessions()] == [session.id] and bot.history(session.id) == []
    with pytest.raises(InputError, match="dialogue.max_message_chars"):
        bot.correct(1, "y" * 101)
    assert bot.reply("x" * 100, session=session.id).text  # at the limit: a reply


def test_dialogue_override_of_the_limit_is_validated(tiny_bot):
    from chatbot.dialogue.bot import ChatBot

    with pytest.raises(ConfigError, match="max_message_chars': must be"):
        ChatBot(tiny_bot.bundle, warm_up=False, dialogue={"max_message_chars": 0})


@pytest.fixture
def counted_cleaning(monkeypatch):
    """Characters that went through ``clean_text`` on the way to the model."""
    seen = []
    real = bot_module.clean_text

    def counting(text):
        seen.append(len(text))
        return real(text)

    monkeypatch.setattr(bot_module, "clean_text", counting)
    return seen


def test_a_huge_message_is_stored_whole_but_only_its_end_is_prepared(bot, counted_cleaning, monkeypatch):
    """With a high limit, a 2 MB message is stored as typed, while cleaning and tokenising see
    a bounded tail that still holds everything the model reads (its last max_input_tokens)."""
    bot.dialogue = bot.dialogue.with_overrides({"max_message_chars": 10 ** 8})
    shown = []
    real_generate = bot.generator.generate

    def capture(inputs, **kwargs):
        shown.extend(inputs)
        return real_generate(inputs, **kwargs)

    monkeypatch.setattr(bot.generator, "generate", capture)
    text = ("hello there, what is AI? " * 90_000)[: 2 * 2**20] + " how are you"
    reply = bot.reply(text)
    assert bot.history(reply.session_id)[0].text == text  # what was typed, all of it
    data = bot.bundle.config.data
    assert max(counted_cleaning) < len(text) // 100  # bounded by the model, not by the message
    [turns] = shown
    question = turns[-1]
    assert text.endswith(question)
    tokenizer = bot.bundle.tokenizer
    assert (tokenizer.encode(question)[-data.max_input_tokens:]
            == tokenizer.encode(text)[-data.max_input_tokens:])  # the margin loses nothing read
    counted_cleaning.clear()
    assert isinstance(bot.ask(text), str) and max(counted_cleaning) < len(text) // 100


def test_contexts_given_to_generate_are_bounded_too(bot, counted_cleaning, monkeypatch):
    data = bot.bundle.config.data
    monkeypatch.setattr(bot.bundle.config, "data", dataclasses.replace(data, context_turns=2))
    long_turn = "a previous turn " * 100_000
    [result] = bot.generate(["hi"], [[long_turn, long_turn]])
    assert isinstance(result.text, str)
    assert len(counted_cleaning) == 3 and max(counted_cleaning) < len(long_turn) // 100
