"""Feedback: ratings and corrections on stored replies, through the store, the REPL and the
CLI, and their export as a corpus to retrain on."""

from __future__ import annotations

import io
import sqlite3

import pytest

from chatbot.data.corpus import load_corpus
from chatbot.errors import InputError
from chatbot.cli.repl import ChatRepl
from chatbot.dialogue.store import SCHEMA_VERSION, SessionStore, StoreError
from helpers import chatbot
from test_migrations import legacy_database


@pytest.fixture
def store(tmp_path):
    with SessionStore(tmp_path / "chat.db") as s:
        yield s


def exchange(store, session, question, answer, fallback=False):
    user = store.add_message(session, "user", question)
    return store.add_message(session, "bot", answer, score=-0.1, fallback=fallback, in_reply_to=user.id)


def test_feedback_pairs_follow_the_rules(store):
    sid = store.create_session("s").id
    good = exchange(store, sid, "hi", "hello")
    bad = exchange(store, sid, "how are you", "banana")
    corrected = exchange(store, sid, "who are you", "a cat")
    exchange(store, sid, "unrated", "left alone")
    bad_then_corrected = exchange(store, sid, "name?", "no")
    fallback = exchange(store, sid, "gibberish", "Sorry?", fallback=True)
    fallback_corrected = exchange(store, sid, "xyzzy", "Sorry?", fallback=True)

    store.set_feedback(good.id, rating="good")
    store.set_feedback(bad.id, rating="bad")
    store.set_feedback(corrected.id, correction="I am a chatbot.")
    store.set_feedback(bad_then_corrected.id, rating="bad")
    store.set_feedback(bad_then_corrected.id, correction="I am Tiny.")  # keeps the rating
    store.set_feedback(fallback.id, rating="good")
    store.set_feedback(fallback_corrected.id, correction="Nothing happens.")

    assert store.get_feedback(bad_then_corrected.id).rating == "bad"
    assert store.get_feedback(bad_then_corrected.id).correction == "I am Tiny."
    assert store.feedback_pairs() == [("hi", "hello"), ("who are you", "I am a chatbot."),
                                      ("name?", "I am Tiny."), ("xyzzy", "Nothing happens.")]
    # Rating again replaces the rating: one row per reply.
    store.set_feedback(good.id, rating="bad")
    assert ("hi", "hello") not in store.feedback_pairs()
    # "good" after a correction withdraws it: the reply stands as it was (a later verdict wins).
    store.set_feedback(corrected.id, rating="good")
    assert store.get_feedback(corrected.id).correction is None
    assert ("who are you", "a cat") in store.feedback_pairs()
    assert set(store.session_feedback("s")) == {good.id, bad.id, corrected.id, bad_then_corrected.id,
                                                fallback.id, fallback_corrected.id}


def test_feedback_is_validated(store):
    sid = store.create_session().id
    user = store.add_message(sid, "user", "hi")
    reply = store.add_message(sid, "bot", "hello", in_reply_to=user.id)
    for kwargs, message in [({"rating": "meh"}, "rating must be 'good' or 'bad'"),
                            ({"correction": "  "}, "non-empty"),
                            ({}, "give a rating, a correction or both")]:
        with pytest.raises(StoreError, match=message):
            store.set_feedback(reply.id, **kwargs)
    with pytest.raises(StoreError, match=f"message {user.id} is not a stored bot reply"):
        store.set_feedback(user.id, rating="good")
    with pytest.raises(StoreError, match="message 999 is not"):
        store.set_feedback(999, rating="good")
    assert store.get_feedback(reply.id) is None


def test_deleting_a_session_deletes_its_feedback(store, tmp_path):
    sid = store.create_session().id
    store.set_feedback(exchange(store, sid, "q", "a").id, rating="good")
    store.delete_session(sid)
    with sqlite3.connect(tmp_path / "chat.db") as conn:
        assert conn.execute("SELECT count(*) FROM feedback").fetchone()[0] == 0
    assert store.feedback_pairs() == []


def test_export_is_a_corpus_with_exactly_the_feedback_pairs(store, tmp_path):
    one, two = store.create_session("one").id, store.create_session("two").id
    store.set_feedback(exchange(store, one, "hi", "hello").id, rating="good")
    store.set_feedback(exchange(store, two, "line\nbreak é", "ok").id, correction="multi\nline 😀")
    for fmt, name in (("yaml", "f.yml"), ("jsonl", "f.jsonl")):
        (tmp_path / name).write_text(store.export_feedback(format=fmt), encoding="utf-8")
        pairs = [(e.question, e.answer) for e in load_corpus(tmp_path / name).examples(deduplicate=False)]
        assert pairs == [("hi", "hello"), ("line\nbreak é", "multi\nline 😀")]
    assert store.export_feedback("two", format="jsonl").count("\n") == 1
    with pytest.raises(StoreError, match="unknown export format"):
        store.export_feedback(format="csv")


def test_a_version_1_database_is_upgraded_and_keeps_its_messages(tmp_path):
    """schema_info version 1, as chatbot wrote it before Alembic: no feedback table, no
    confidence/details columns (tests/test_migrations.py checks every row of every version)."""
    path = legacy_database(tmp_path / "old.db", version=1, rows=False)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO sessions VALUES (1, 'old', '2026-12-01 10:00:00', '2026-12-01 10:00:00', '{}')")
        conn.execute("INSERT INTO messages (id, session_id, position, role, text, created_at) "
                     "VALUES (1, 1, 0, 'user', 'q', '2026-12-01 10:00:01')")
        conn.execute("INSERT INTO messages (id, session_id, position, role, text, created_at, score, in_reply_to) "
                     "VALUES (2, 1, 1, 'bot', 'a', '2026-12-01 10:00:02', -0.1, 1)")
    conn.close()
    with SessionStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        sid = store.get_session("old").id
        reply = store.history("old")[-1]
        assert reply.text == "a" and reply.confidence is None and reply.details is None
        store.set_feedback(reply.id, rating="good")
        assert store.feedback_pairs() == [("q", "a")]
        new = store.add_message(sid, "bot", "b", confidence=0.5, details={"retrieved": []})
        assert store.history("old")[-1] == new and new.confidence == 0.5


def test_repl_good_bad_correct_act_on_the_last_reply(bot, tiny_pairs):
    (q1, a1), q2 = tiny_pairs[0], tiny_pairs[1][0]
    repl = ChatRepl(bot, output=io.StringIO(), plain=True)
    for line in ["/good", q1, "/good", q2, "/bad", "/correct", "/correct A much better answer."]:
        repl.handle(line)
    out = repl.output.getvalue().splitlines()
    assert out[0] == "/good: no reply in this session yet"
    assert out[2] == "last reply rated good" and out[4] == "last reply rated bad"
    assert out[5] == "usage: /correct BETTER ANSWER"
    assert out[6].startswith("correction recorded for the last reply")
    assert bot.store.feedback_pairs() == [(q1, a1), (q2, "A much better answer.")]

    # A resumed session: the feedback goes to its newest stored reply.
    resumed = ChatRepl(bot, repl.session_id, output=io.StringIO(), plain=True)
    resumed.handle("/good")
    last = bot.history(repl.session_id)[-1]
    assert bot.store.get_feedback(last.id).rating == "good"


def test_bot_correct_rejects_an_empty_answer(bot, tiny_pairs):
    reply = bot.reply(tiny_pairs[0][0])
    with pytest.raises(InputError, match="correction must not be empty"):
        bot.correct(reply.message_id, "   ")
    bot.correct(reply.message_id, "fine")
    assert bot.store.get_feedback(reply.message_id).correction == "fine"


def test_cli_exports_feedback_and_shows_it(tmp_path):
    db = tmp_path / "chat.db"
    with SessionStore(db) as store:
        sid = store.create_session("demo").id
        store.set_feedback(exchange(store, sid, "hi", "hello").id, rating="good")
        store.set_feedback(exchange(store, sid, "bye", "what").id, correction="Goodbye!")
        store.set_feedback(exchange(store, sid, "eh", "no").id, rating="bad")

    result = chatbot("sessions", "export", "--feedback", "--db", db, "--out", tmp_path / "fb.yml")
    assert result.returncode == 0, result.stderr
    assert "2 question/answer pairs from feedback (yaml)" in result.stderr
    examples = load_corpus(tmp_path / "fb.yml").examples()
    assert [(e.question, e.answer) for e in examples] == [("hi", "hello"), ("bye", "Goodbye!")]

    shown = chatbot("sessions", "show", "demo", "--db", db)
    assert "bot: hello  [score -0.100] [rated good]" in shown.stdout
    assert "bot: what  [score -0.100] [correction: Goodbye!]" in shown.stdout

    misuse = chatbot("sessions", "list", "--feedback", "--db", db)
    assert misuse.returncode == 2 and "--feedback goes with 'sessions export'" in misuse.stderr
    # Any flag that does nothing for the action is refused, not ignored (`list --last 1` listed all).
    for argv, flag, action in ((["list", "--last", "1"], "--last", "show"), (["show", "demo", "--json"], "--json", "list"),
                               (["show", "demo", "--out", "x"], "--out", "export")):
        refused = chatbot("sessions", *argv, "--db", db)
        assert refused.returncode == 2 and f"{flag} goes with 'sessions {action}'" in refused.stderr

    # An export never lands on the database it comes from (it replaced every conversation).
    for out in (db, tmp_path / "chat.db-wal"):
        refused = chatbot("sessions", "export", "demo", "--db", db, "--out", out)
        assert refused.returncode == 1 and "that is the session database itself" in refused.stderr
    with SessionStore(db) as store:
        assert [s.name for s in store.list_sessions()] == ["demo"] and store.holds(tmp_path / "." / "chat.db")
