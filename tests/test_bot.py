"""The dialogue manager: stored turns, context, fallbacks, failures, threads, the CLI."""

from __future__ import annotations

import json
import os
import math
import threading
from dataclasses import replace

import pytest

from chatbot.dialogue.bot import ChatBot
from chatbot.errors import DecodingError, InputError
from chatbot.dialogue.store import SessionNotFound, SessionStore
from helpers import chatbot, run_cli


def test_reply_stores_both_turns_with_model_identity(bot, tiny_pairs):
    question, answer = tiny_pairs[0]
    session = bot.new_session(name="alice")
    reply = bot.reply(question, session=session.id)
    assert reply.text == answer and not reply.fallback and reply.session_id == session.id
    user, stored = bot.history(session.id)
    assert (user.role, user.text, user.position) == ("user", question, 0)
    assert (stored.role, stored.text, stored.position, stored.id) == ("bot", answer, 1, reply.message_id)
    assert stored.in_reply_to == user.id and stored.model_name == "tiny"
    assert stored.score == pytest.approx(reply.score) and stored.latency_ms > 0
    assert stored.decoding["strategy"] == "greedy"


def test_history_is_ordered_and_sessions_resume_by_name(bot, tiny_pairs):
    for question, _ in tiny_pairs[:3]:
        bot.reply(question, session="bob" if bot.sessions() else bot.new_session("bob").id)
    again = bot.session("bob")
    texts = [m.text for m in bot.history(again.id)]
    assert texts[0::2] == [q for q, _ in tiny_pairs[:3]]
    assert [m.text for m in bot.history("bob", last=2)] == texts[-2:]
    [listed] = bot.sessions()
    assert listed.name == "bob" and listed.message_count == 6


def test_context_comes_from_the_stored_history(bot, tiny_pairs, monkeypatch):
    bot.bundle = replace(bot.bundle, config=bot.bundle.config.with_overrides({"data.context_turns": 2}))
    seen = []
    original = bot.generator.generate
    monkeypatch.setattr(bot.generator, "generate", lambda inputs, **kw: seen.append(inputs) or original(inputs, **kw))
    s = bot.new_session()
    bot.reply("first", session=s.id)
    bot.reply("second", session=s.id)
    first_reply = bot.history(s.id)[1].text
    assert seen[0] == [["first"]]
    assert seen[1] == [["first", first_reply, "second"]]  # the last 2 stored turns, then the question
    # Turns that say nothing (an API client's tool call, an image alone) take no turn's place.
    bot.generate(["third"], [["one", "two", "", " \u200b", "three"]])
    assert seen[-1] == [["two", "three", "third"]]


def test_a_failed_decode_keeps_the_users_message(bot, monkeypatch):
    s = bot.new_session()

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(bot.generator, "generate", broken)
    with pytest.raises(DecodingError, match="your message was stored"):
        bot.reply("please remember me", session=s.id)
    [kept] = bot.history(s.id)
    assert (kept.role, kept.text) == ("user", "please remember me")


def test_low_confidence_replies_fall_back(bot, tiny_pairs):
    bot.dialogue = bot.dialogue.with_overrides({"fallback_threshold": 0.0, "fallback_text": "Sorry?"})  # every score is below 0
    reply = bot.reply(tiny_pairs[0][0])
    assert reply.fallback and reply.text == "Sorry?"
    stored = bot.history(reply.session_id)[-1]
    assert stored.fallback and stored.text == "Sorry?" and stored.score < 0


@pytest.mark.parametrize("text", ["", "   ", "\n\t ", "\x00\x07"])
def test_empty_messages_are_rejected_and_nothing_is_stored(bot, text):
    s = bot.new_session()
    with pytest.raises(InputError, match="empty"):
        bot.reply(text, session=s.id)
    assert bot.history(s.id) == []


@pytest.mark.parametrize("text", ["'; DROP TABLE messages; --", "مرحبا بالعالم", "🤖💬 héllo",
                                  "a\u202eb", "line one\nline two"])
def test_any_text_is_stored_exactly(bot, text):
    reply = bot.reply(text)
    assert bot.history(reply.session_id)[0].text == text


def test_control_characters_are_removed_and_long_input_is_stored_whole(bot):
    reply = bot.reply("hel\x00lo\x1b[31m")
    assert bot.history(reply.session_id)[0].text == "hello[31m"
    long_text = "why " * 5000
    reply = bot.reply(long_text)
    assert bot.history(reply.session_id)[0].text == long_text


def test_a_wrong_feedback_argument_is_an_input_error_and_a_closed_bot_keeps_its_database_closed(bot, tiny_pairs):
    from chatbot.errors import InputError, StoreError

    reply = bot.reply(tiny_pairs[0][0])
    with pytest.raises(InputError, match="rating must be 'good' or 'bad'"):
        bot.rate(reply.message_id, "meh")  # the caller's mistake (a server's 400), not the database's
    with pytest.raises(InputError, match="a correction must be a non-empty string"):
        bot.correct(reply.message_id, None)
    with pytest.raises(InputError, match="a session name must be a non-empty string"):
        bot.new_session(name=5)
    with pytest.raises(InputError, match="plain JSON"):
        bot.new_session(metadata={"when": object()})
    with pytest.raises(InputError, match="NaN"):
        bot.new_session(metadata={"x": float("nan")})
    with pytest.raises(InputError, match="'/'"):
        bot.new_session(name="team/alice")
    with pytest.raises(InputError, match="white space"):
        bot.session("  x  ")
    for name in ("evil\x1b]0;HACKED\x07", "two\nlines", "left\u202eright"):  # would run in a terminal
        with pytest.raises(InputError, match="control character"):
            bot.new_session(name=name)
    assert bot.new_session(name="café ☃ 👨\u200d👩\u200d👧").name == "café ☃ 👨\u200d👩\u200d👧"
    # A bad owner is the caller's mistake, not "your message was not stored" (a database failure).
    from chatbot.dialogue.bot import ReplyRequest
    from chatbot.errors import MessageNotStored

    (failed,) = bot.reply_many([ReplyRequest("hi", owner="x" * 65)], return_exceptions=True)
    assert isinstance(failed, InputError) and not isinstance(failed, MessageNotStored)
    assert [s.name for s in bot.sessions()] == ["café ☃ 👨\u200d👩\u200d👧", None]  # nothing new stored
    bot.close()
    with pytest.raises(StoreError, match="closed"):  # not a new database opened behind the caller's back
        bot.reply(tiny_pairs[0][0])
    assert bot.generate([tiny_pairs[0][0]])[0].text == tiny_pairs[0][1]  # the model stays loaded


def test_missing_session_id_is_an_error(bot):
    with pytest.raises(SessionNotFound):
        bot.reply("hi", session=12345)


def test_threads_each_on_their_own_session(bot, tiny_pairs):
    sessions = [bot.new_session(f"t{i}").id for i in range(8)]
    errors = []

    def talk(session_id):
        try:
            for question, _ in tiny_pairs[:6]:
                bot.reply(question, session=session_id)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=talk, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for s in sessions:
        history = bot.history(s)
        assert [m.position for m in history] == list(range(12))
        assert [m.text for m in history[0::2]] == [q for q, _ in tiny_pairs[:6]]
        assert [m.text for m in history[1::2]] == [a for _, a in tiny_pairs[:6]]


def test_cli_sessions_round_trip(tiny_bundle_path, tiny_pairs, tmp_path, capsys, monkeypatch):
    """``chatbot ask`` in-process (it loads TensorFlow), the ``sessions`` commands as real processes."""
    db = tmp_path / "cli.db"
    (q1, a1), (q2, a2) = tiny_pairs[:2]
    code, out, err = run_cli(capsys, monkeypatch, "ask", "--model", tiny_bundle_path, "--db", db,
                             "--session", "carol", q1, q2)
    assert code == 0, err
    assert out.splitlines() == [a1, a2]
    listed = chatbot("sessions", "list", "--db", db, "--json")
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["name"] == "carol" and row["messages"] == 4
    shown = chatbot("sessions", "show", "carol", "--db", db)
    assert q1 in shown.stdout and a2 in shown.stdout
    exported = tmp_path / "carol.yml"
    assert chatbot("sessions", "export", "carol", "--db", db, "--format", "yaml", "--out", exported).returncode == 0
    from chatbot.data.corpus import load_corpus
    pairs = [(e.question, e.answer) for e in load_corpus(exported).examples(deduplicate=False)]
    assert pairs == [(q1, a1), (q2, a2)]  # each question with its reply, not the reply with the next question
    deleted = chatbot("sessions", "delete", "carol", "--db", db)
    assert deleted.returncode == 0 and "4 messages" in deleted.stdout
    missing = chatbot("sessions", "show", "carol", "--db", db)
    assert missing.returncode == 1 and "carol" in missing.stderr
    with SessionStore(f"sqlite:///{db}") as store:
        assert store.list_sessions() == [] and store.integrity_check()


def test_a_stored_name_with_escape_codes_is_listed_escaped(tmp_path):
    """Names are refused with control characters now; one stored before must not run in the
    terminal of whoever lists the sessions (it could clear the screen or set the title)."""
    from sqlalchemy import text

    db = tmp_path / "old.db"
    with SessionStore(f"sqlite:///{db}") as store:
        store.create_session("Jürgen")
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE sessions SET name = :name"), {"name": "evil\x1b[2J\x1b]0;HACKED\x07"})
        store.create_session("Jürgen")
    listed = chatbot("sessions", "list", "--db", db)
    assert "\x1b" not in listed.stdout and r"evil\x1b[2J\x1b]0;HACKED\x07" in listed.stdout
    shown = chatbot("sessions", "show", "1", "--db", db)
    assert shown.stdout.startswith(r"session 1 (evil\x1b[2J\x1b]0;HACKED\x07), 0 messages")
    as_json = chatbot("sessions", "list", "--db", db, "--json").stdout
    assert '"Jürgen"' in as_json and json.loads(as_json.splitlines()[-1])["name"] == "evil\x1b[2J\x1b]0;HACKED\x07"


def test_sessions_list_keeps_its_columns_with_wide_characters(tmp_path):
    """A CJK character or an emoji takes two terminal columns: padding by characters pushed
    the rest of such a row two columns right per character."""
    import re

    from wcwidth import wcswidth

    db = tmp_path / "wide.db"
    with SessionStore(f"sqlite:///{db}") as store:
        for name in ("東京の会議", "plain", "🙂 party"):
            store.create_session(name)
    rows = chatbot("sessions", "list", "--db", db).stdout.splitlines()[1:]
    assert len(rows) == 3
    date_columns = {wcswidth(row[:re.search(r"\d{4}-\d\d-\d\d", row).start()]) for row in rows}
    assert len(date_columns) == 1, rows


def test_output_in_another_encoding_still_gets_every_line(tmp_path):
    """A redirect in cp1252 (Windows) ended the command at the first Chinese character."""
    import subprocess
    import sys

    from conftest import ROOT

    db = tmp_path / "zh.db"
    with SessionStore(f"sqlite:///{db}") as store:
        sid = store.create_session("zh").id
        for text in ("你叫什么名字？", "Hi", "Ça va ?"):
            store.add_message(sid, "user", text)
    shown = subprocess.run([sys.executable, str(ROOT / "cli.py"), "sessions", "show", "zh", "--db", str(db)],
                           capture_output=True, cwd=ROOT, env={**os.environ, "PYTHONIOENCODING": "cp1252"})
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.decode("utf-8").splitlines()[1:] == ["   0 user: 你叫什么名字？", "   1 user: Hi", "   2 user: Ça va ?"]


def test_example_application_runs(tiny_bundle_path, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    db = tmp_path / "support.db"
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "support_desk.py"), "--db", str(db),
                             "--model", str(tiny_bundle_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # TensorFlow's start-up noise is muted
    assert result.stdout.count("[alice]") == 3 and result.stdout.count("[bob]") == 3
    with SessionStore(f"sqlite:///{db}") as store:
        assert sorted((s.name, s.message_count) for s in store.list_sessions()) == [("alice", 6), ("bob", 6)]


def test_background_warm_up_failure_surfaces_on_the_first_reply(tiny_bot, monkeypatch):
    from chatbot.inference.generator import Generator

    def broken(self, strategies=("greedy",)):
        raise RuntimeError("no memory to trace")

    monkeypatch.setattr(Generator, "warm_up", broken)
    b = ChatBot(tiny_bot.bundle)  # warm-up runs (and fails) in the background
    with pytest.raises(DecodingError, match="failed to compile"):
        b.ask("hello")


def test_replies_wait_for_the_background_warm_up(tiny_bot, tiny_pairs):
    b = ChatBot(tiny_bot.bundle)
    question, answer = tiny_pairs[0]
    assert b.ask(question) == answer  # called at once: waits for tracing, then answers
    assert b.generator.trace_count >= 1


def test_avoid_repeat_takes_the_alternatives_own_confidence_and_falls_back_on_it(bot, tiny_pairs):
    """A reply swapped for an n-best alternative (avoid_repeat) carries that alternative's own
    score and confidence, and the fallback is decided on them, not on the first hypothesis'."""
    question = tiny_pairs[0][0]
    settings = {"avoid_repeat": True, "beam": 3, "n_best": 3}
    probe, again = bot.session("probe").id, bot.session("again").id
    first = bot.reply(question, session=probe, decoding=settings)
    second = bot.reply(question, session=probe, decoding=settings)
    assert second.text != first.text and (second.text, second.score) in second.alternatives
    assert second.confidence == pytest.approx(math.exp(second.score)) and second.confidence < first.confidence

    between = (first.confidence + second.confidence) / 2
    bot.dialogue = bot.dialogue.with_overrides({"min_confidence": between})
    assert not bot.reply(question, session=again, decoding=settings).fallback
    swapped = bot.reply(question, session=again, decoding=settings)
    assert swapped.fallback and swapped.text == bot.dialogue.fallback_text
    assert bot.history(again)[-1].confidence == pytest.approx(second.confidence)


def test_a_fork_after_loading_gets_a_clear_error_and_its_own_database_connections(bot, tiny_pairs):
    """A model loaded before a fork (gunicorn --preload, multiprocessing's "fork") hung in the
    child for ever, and a child using the parent's pooled connections corrupted both ends'
    conversation with PostgreSQL. The child is told, and opens connections of its own."""
    question, answer = tiny_pairs[0]
    parent_session = bot.new_session("parent").id
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the child reports through the pipe and leaves at once, whatever happens
        try:
            try:
                bot.ask(question)
                said = "answered"
            except DecodingError as exc:
                said = str(exc)
            said += f"|{bot.new_session('child').id}"
        except BaseException as exc:  # noqa: BLE001
            said = f"failed: {exc!r}"
        os.write(writer, said.encode())
        os._exit(0)
    os.close(writer)
    import select
    import signal

    ready, _, _ = select.select([reader], [], [], 120)  # a child that hangs fails the test, not the run
    if not ready:
        os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    said = os.read(reader, 4096).decode() if ready else "the child hung"
    os.close(reader)
    assert said.startswith("this model was loaded in process") and "before a fork" in said, said
    assert said.endswith(f"|{parent_session + 1}")
    assert bot.ask(question) == answer  # the parent goes on
    assert [s.name for s in bot.sessions()] == ["child", "parent"]


def test_a_session_deleted_while_its_reply_is_made_is_not_found_not_a_reply_to_send_again(bot, tiny_pairs,
                                                                                         monkeypatch):
    """The reply could not be stored because its session (and the question) were gone: the
    error said the message was stored, and blamed the caller's in_reply_to."""
    session = bot.new_session("gone").id
    generate = bot.generator.generate

    def delete_meanwhile(*args, **kwargs):
        bot.delete_session(session)
        return generate(*args, **kwargs)

    monkeypatch.setattr(bot.generator, "generate", delete_meanwhile)
    with pytest.raises(SessionNotFound, match=f"session {session} was deleted while its reply was made"):
        bot.reply(tiny_pairs[0][0], session=session)


def test_a_closed_bot_says_so_rather_than_offering_the_message_again(bot):
    from chatbot.errors import MessageNotStored, StoreError

    bot.close()
    with pytest.raises(StoreError, match="this ChatBot is closed") as caught:
        bot.reply("hello")
    assert not isinstance(caught.value, MessageNotStored)  # a retry loop on it would spin for ever


def test_what_the_methods_return_is_importable_from_the_package():
    import chatbot
    from chatbot.dialogue.store import Feedback, Message, SessionInfo
    from chatbot.errors import EncoderUnavailable
    from chatbot.inference.generator import Generation

    assert (chatbot.Generation, chatbot.SessionInfo, chatbot.Message, chatbot.Feedback, chatbot.EncoderUnavailable) \
        == (Generation, SessionInfo, Message, Feedback, EncoderUnavailable)
