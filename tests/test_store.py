"""SessionStore: round trips, positions, cascades, pragmas, schema versions, concurrency, export."""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from datetime import timezone
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatbot.data.corpus import load_corpus
from chatbot.errors import ChatbotError, InputError
from chatbot.dialogue.store import (
    HEAD_REVISION, SCHEMA_VERSION, MessageNotFound, SessionExists, SessionNotFound, SessionStore, StoreError, default_database_url,
    resolve_database_url,
)

AWKWARD_TEXTS = [
    "héllo wörld",
    "😀👍🏽 family: 👨‍👩‍👧",
    "שלום עולם مرحبا",  # right-to-left
    "'; DROP TABLE messages; --",
    'Robert"); DELETE FROM sessions; --',
    "nul\x00inside",
    "line one\nline two\r\nline three\ttab",
    "",
    "   padded   ",
    "e\u0301 (not NFC)",
    "\u2028line separator\u2029",
]


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "chat.db"


@pytest.fixture
def store(db_path):
    with SessionStore(f"sqlite:///{db_path}") as s:
        yield s


def raw_count(path: Path, sql: str, *args) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, args).fetchone()[0]


# --- sessions and messages ---------------------------------------------------------------------
def test_round_trip_of_session_and_messages_with_bot_fields(store):
    info = store.create_session("demo", {"user": "ann", "tags": ["a", 1]})
    assert (info.name, info.message_count) == ("demo", 0)
    assert info.metadata == {"user": "ann", "tags": ["a", 1]}
    question = store.add_message(info.id, "user", "hi there")
    answer = store.add_message(info.id, "bot", "hello!", model_name="tiny", model_version="3",
                               decoding={"strategy": "beam", "width": 4}, score=-0.25,
                               latency_ms=12.5, fallback=False, in_reply_to=question.id)

    assert store.history(info.id) == [question, answer]
    stored = store.history(info.id)[1]
    assert (stored.role, stored.text) == ("bot", "hello!")
    assert (stored.model_name, stored.model_version) == ("tiny", "3")
    assert stored.decoding == {"strategy": "beam", "width": 4}
    assert (stored.score, stored.latency_ms, stored.fallback) == (-0.25, 12.5, False)
    assert stored.in_reply_to == question.id
    assert store.history(info.id)[0].model_name is None and store.history(info.id)[0].fallback is None

    again = store.get_session(info.id)
    assert again.message_count == 2 and again.metadata == info.metadata
    assert again.created_at == info.created_at and again.updated_at >= answer.created_at


def test_records_are_plain_frozen_dataclasses_with_aware_utc_times(store):
    info = store.create_session()
    message = store.add_message(info.id, "user", "x")
    with pytest.raises(AttributeError):
        message.text = "changed"  # frozen: callers cannot think they edited the database
    for moment in (info.created_at, info.updated_at, message.created_at,
                   store.history(info.id)[0].created_at, store.get_session(info.id).updated_at):
        assert moment.tzinfo is not None and moment.utcoffset().total_seconds() == 0
    assert store.history(info.id)[0].created_at.tzinfo == timezone.utc


def test_positions_are_zero_based_dense_and_in_order(store):
    sid = store.create_session().id
    texts = [f"message {i}" for i in range(12)]
    for i, t in enumerate(texts):
        store.add_message(sid, "user" if i % 2 == 0 else "bot", t)
    history = store.history(sid)
    assert [m.position for m in history] == list(range(12))
    assert [m.text for m in history] == texts


def test_positions_are_per_session(store):
    a, b = store.create_session().id, store.create_session().id
    store.add_message(a, "user", "a0")
    store.add_message(b, "user", "b0")
    store.add_message(a, "bot", "a1")
    assert [m.position for m in store.history(a)] == [0, 1]
    assert [m.position for m in store.history(b)] == [0]


def test_history_last_n_gives_the_newest_oldest_first(store):
    sid = store.create_session().id
    for i in range(10):
        store.add_message(sid, "user", str(i))
    assert [m.text for m in store.history(sid, last=3)] == ["7", "8", "9"]
    assert [m.text for m in store.history(sid, last=50)] == [str(i) for i in range(10)]
    assert store.history(sid, last=0) == []
    with pytest.raises(StoreError):
        store.history(sid, last=-1)


def test_history_query_uses_the_session_position_index(store, db_path):
    store.add_message(store.create_session().id, "user", "x")
    with sqlite3.connect(db_path) as conn:
        plan = " ".join(str(row) for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM messages WHERE session_id = 1 "
            "ORDER BY position DESC LIMIT 5"))
    assert "INDEX" in plan and "TEMP B-TREE" not in plan


def test_history_pages_and_owner_lookups_use_indexes(store, db_path):
    sid = store.create_session("x", owner=KEY_A).id
    message = store.add_message(sid, "user", "x")
    store.history_page(sid, before=message.id)
    with sqlite3.connect(db_path) as conn:
        def plan(sql: str) -> str:
            return " ".join(str(row) for row in conn.execute("EXPLAIN QUERY PLAN " + sql))

        page = plan("SELECT * FROM messages WHERE session_id = 1 AND position < 7 ORDER BY position DESC LIMIT 51")
        assert "INDEX" in page and "TEMP B-TREE" not in page
        for sql in ("SELECT * FROM sessions WHERE owner = 'k'",
                    "SELECT * FROM sessions WHERE owner = 'k' AND name = 'x'"):
            assert "USING INDEX" in plan(sql) or "USING COVERING INDEX" in plan(sql), plan(sql)


def test_list_sessions_has_counts_and_newest_update_first(store):
    first = store.create_session("first").id
    second = store.create_session("second").id
    store.create_session("third")
    store.add_message(second, "user", "x")
    store.add_message(first, "user", "y")
    store.add_message(first, "bot", "z")
    listed = store.list_sessions()
    assert [s.name for s in listed] == ["first", "second", "third"]
    assert [s.message_count for s in listed] == [2, 1, 0]


def test_add_message_updates_session_updated_at(store):
    info = store.create_session()
    message = store.add_message(info.id, "user", "x")
    assert store.get_session(info.id).updated_at == message.created_at >= info.updated_at


def test_delete_session_cascades_to_its_messages_only(store, db_path):
    doomed = store.create_session("doomed").id
    kept = store.create_session("kept").id
    question = store.add_message(doomed, "user", "q")
    store.add_message(doomed, "bot", "a", in_reply_to=question.id)
    store.add_message(kept, "user", "stay")

    store.delete_session("doomed")

    assert raw_count(db_path, "SELECT count(*) FROM messages WHERE session_id = ?", doomed) == 0
    assert raw_count(db_path, "SELECT count(*) FROM sessions WHERE id = ?", doomed) == 0
    assert [m.text for m in store.history(kept)] == ["stay"]
    with pytest.raises(SessionNotFound):
        store.delete_session(doomed)


def test_database_level_on_delete_cascade(store, db_path):
    """Deleting a session outside the ORM (another tool, raw SQL) still removes its messages."""
    sid = store.create_session().id
    store.add_message(sid, "user", "q")
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("DELETE FROM sessions WHERE id = ?", (sid,))
    assert raw_count(db_path, "SELECT count(*) FROM messages") == 0
    assert store.integrity_check()


def test_a_database_file_deleted_or_replaced_under_the_store_is_an_error_not_a_silent_loss(tmp_path):
    """The open connections went on writing into the deleted file: every message acknowledged
    after an `rm` (or a copy over it) was gone at the next start."""
    db = tmp_path / "chat.db"
    with SessionStore(f"sqlite:///{db}") as store:
        sid = store.create_session("s").id
        store.add_message(sid, "user", "kept")
        for leftover in tmp_path.glob("chat.db*"):
            leftover.unlink()
        with pytest.raises(StoreError, match="was deleted or replaced while in use"):
            store.add_message(sid, "user", "lost")
        with SessionStore(f"sqlite:///{tmp_path / 'other.db'}") as other:
            other.create_session("other")
        (tmp_path / "other.db").rename(db)  # a file put in its place
        with pytest.raises(StoreError, match="was deleted or replaced while in use"):
            store.add_message(sid, "user", "lost")
    with SessionStore(f"sqlite:///{db}") as reopened:
        assert [s.name for s in reopened.list_sessions()] == ["other"]


def test_a_default_database_an_older_version_left_readable_is_made_private(tmp_path, monkeypatch, caplog):
    """Versions before the 0700/0600 rule left ~/.local/share/chatbot 0755 and chatbot.db 0644:
    every local user could read every conversation, upgrade or not. A --db file keeps its mode."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("CHATBOT_DB", raising=False)
    folder = tmp_path / "xdg" / "chatbot"
    folder.mkdir(parents=True)
    with SessionStore(None) as store:
        store.create_session("old")
    folder.chmod(0o755)
    (folder / "chatbot.db").chmod(0o644)
    with SessionStore(None) as store:
        assert [s.name for s in store.list_sessions()] == ["old"]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "chatbot.db").stat().st_mode) == 0o600
    assert "was readable by other users; made private" in caplog.text
    chosen = tmp_path / "chosen.db"
    SessionStore(chosen).close()
    chosen.chmod(0o640)
    SessionStore(chosen).close()
    assert stat.S_IMODE(chosen.stat().st_mode) == 0o640


def test_session_names_are_unique(store):
    store.create_session("alice")
    with pytest.raises(StoreError, match="session name 'alice' already exists"):
        store.create_session("alice")
    assert len(store.list_sessions()) == 1
    store.create_session()  # unnamed sessions never clash
    store.create_session()
    assert len(store.list_sessions()) == 3


def test_a_name_is_one_session_however_its_accents_were_composed(store, db_path):
    """A Mac sends "Jürgen" decomposed (u + combining diaeresis), Linux composed: one person's
    one name, so one session, found by either spelling; a name stored decomposed before names
    were composed is still found as typed."""
    decomposed, composed = "Ju\u0308rgen", "J\u00fcrgen"
    created = store.create_session(decomposed)
    assert created.name == composed
    with pytest.raises(SessionExists):
        store.create_session(composed)
    assert store.get_session(composed).id == created.id
    assert store.get_session(decomposed).id == created.id
    assert store.find_session(decomposed).id == created.id
    assert store.get_or_create_session(decomposed).id == created.id
    with sqlite3.connect(db_path) as conn:  # a row written by an older version, as typed
        conn.execute("UPDATE sessions SET name = ? WHERE id = ?", (decomposed, created.id))
    other = store.create_session(composed)  # now the composed name is free
    assert store.get_session(decomposed).id == created.id  # the exact spelling wins
    assert store.get_session(composed).id == other.id
    store.delete_session(decomposed)
    assert store.get_session(decomposed).id == other.id


@pytest.mark.parametrize("bad", ["", "   ", "42"])
def test_unusable_session_names_are_rejected(store, bad):
    with pytest.raises(StoreError):
        store.create_session(bad)


def test_get_session_by_id_digit_string_and_name(store):
    info = store.create_session("bob")
    assert store.get_session(info.id) == info
    assert store.get_session(str(info.id)) == info
    assert store.get_session("bob") == info
    assert store.find_session("bob") == info
    assert store.find_session("nobody") is None


def test_missing_sessions_raise_session_not_found(store):
    store.create_session("carol")
    for key in (999, "999", "dave"):
        with pytest.raises(SessionNotFound):
            store.get_session(key)
        with pytest.raises(SessionNotFound):
            store.history(key)
        with pytest.raises(SessionNotFound):
            store.add_message(key, "user", "x")
    err = pytest.raises(SessionNotFound, store.get_session, "dave").value
    assert isinstance(err, StoreError) and isinstance(err, ChatbotError) and isinstance(err, LookupError)
    assert "dave" in str(err)


def test_invalid_messages_are_rejected_and_not_stored(store):
    sid = store.create_session().id
    other = store.create_session().id
    foreign = store.add_message(other, "user", "elsewhere")
    with pytest.raises(StoreError, match="role"):
        store.add_message(sid, "system", "x")
    with pytest.raises(StoreError, match="bot fields"):
        store.add_message(sid, "user", "x", score=1.0)
    with pytest.raises(StoreError, match="in_reply_to"):
        store.add_message(sid, "bot", "x", in_reply_to=foreign.id)
    with pytest.raises(StoreError):
        store.add_message(sid, "user", b"bytes")
    assert store.history(sid) == []


@pytest.mark.parametrize("text", AWKWARD_TEXTS)
def test_awkward_text_is_stored_verbatim(store, db_path, text):
    sid = store.create_session().id
    store.add_message(sid, "user", text)
    assert store.history(sid)[0].text == text
    with sqlite3.connect(db_path) as conn:  # stored as the text itself, not escaped or altered
        assert conn.execute("SELECT text FROM messages").fetchall() == [(text,)]
    assert raw_count(db_path, "SELECT count(*) FROM sessions") == 1  # the SQL-looking text did nothing


def test_any_text_round_trips_exactly(tmp_path):
    with SessionStore(f"sqlite:///{tmp_path / 'h.db'}") as store:
        sid = store.create_session().id

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(st.text())
        def check(text):
            message = store.add_message(sid, "user", text)
            assert store.history(sid, last=1) == [message]
            assert message.text == text

        check()


# --- owners ----------------------------------------------------------------------------------
# Backend-neutral: tests/test_store_postgres.py runs these on PostgreSQL too.
KEY_A, KEY_B = "a" * 64, "b" * 64  # what chatbot serve stores: a hash of the API key


def test_sessions_have_an_owner_and_names_are_unique_per_owner(store):
    mine = store.create_session("alice")
    a = store.create_session("alice", {"k": 1}, owner=KEY_A)
    b = store.get_or_create_session("alice", owner=KEY_B)
    assert (mine.owner, a.owner, b.owner) == ("", KEY_A, KEY_B)
    assert len({mine.id, a.id, b.id}) == 3
    with pytest.raises(SessionExists, match="session name 'alice' already exists"):
        store.create_session("alice", owner=KEY_A)
    assert store.get_or_create_session("alice", owner=KEY_A) == store.get_session(a.id)
    assert store.find_session("alice", owner=KEY_A).id == a.id
    assert store.find_session("alice").id == mine.id  # no owner: the sessions made without one
    assert store.find_session("bob", owner=KEY_A) is None
    store.create_session(owner=KEY_A)  # unnamed sessions never clash
    store.create_session(owner=KEY_A)
    assert len(store.list_sessions()) == 5  # no owner given: every session
    assert [s.id for s in store.list_sessions(owner=KEY_B)] == [b.id]
    assert {s.owner for s in store.list_sessions(owner=KEY_A)} == {KEY_A}
    assert store.list_sessions(owner="nobody") == []


def test_a_name_without_an_owner_resolves_among_sessions_without_one(store):
    theirs = store.create_session("carol", owner=KEY_A)
    with pytest.raises(SessionNotFound):
        store.get_session("carol")
    with pytest.raises(SessionNotFound):
        store.history("carol")
    assert store.get_session(theirs.id).owner == KEY_A  # an id finds any session without an owner
    assert store.get_session("carol", owner=KEY_A).id == theirs.id
    store.add_message("carol", "user", "by name", owner=KEY_A)
    assert [m.text for m in store.history(theirs.id)] == ["by name"]


def test_another_owners_session_is_reported_as_missing(store):
    """Same exception, same message as for a session that does not exist: nothing says it does."""
    theirs = store.create_session("dave", owner=KEY_A)
    question = store.add_message(theirs.id, "user", "private")
    reply = store.add_message(theirs.id, "bot", "secret", in_reply_to=question.id)
    store.set_feedback(reply.id, rating="good")
    missing = 10 ** 6
    calls = {
        "get_session": lambda key: store.get_session(key, owner=KEY_B),
        "history": lambda key: store.history(key, owner=KEY_B),
        "history_page": lambda key: store.history_page(key, owner=KEY_B),
        "add_message": lambda key: store.add_message(key, "user", "intrusion", owner=KEY_B),
        "delete_session": lambda key: store.delete_session(key, owner=KEY_B),
        "export_session": lambda key: store.export_session(key, owner=KEY_B),
        "session_feedback": lambda key: store.session_feedback(key, owner=KEY_B),
    }
    for name, call in calls.items():
        for key, shown in ((theirs.id, theirs.id), (str(theirs.id), theirs.id), ("dave", "'dave'")):
            with pytest.raises(SessionNotFound) as found:
                call(key)
            absent = missing if isinstance(key, int) else str(missing) if key.isdigit() else "nobody"
            with pytest.raises(SessionNotFound) as not_found:
                call(absent)
            assert str(found.value) == str(not_found.value).replace(str(absent), str(shown).strip("'")), name
    with pytest.raises(MessageNotFound, match=f"message {reply.id} is not a stored bot reply"):
        store.set_feedback(reply.id, rating="bad", owner=KEY_B)
    with pytest.raises(MessageNotFound, match=f"message {missing} is not a stored bot reply"):
        store.set_feedback(missing, rating="bad", owner=KEY_B)
    with pytest.raises(MessageNotFound, match=f"no message with id {reply.id}"):
        store.message_session_id(reply.id, owner=KEY_B)
    assert store.get_feedback(reply.id, owner=KEY_B) is None
    assert store.feedback_pairs(owner=KEY_B) == [] and store.export_feedback(owner=KEY_B, format="jsonl") == ""
    # Nothing of the other owner's changed; its owner sees all of it.
    assert [m.text for m in store.history(theirs.id, owner=KEY_A)] == ["private", "secret"]
    assert store.get_feedback(reply.id, owner=KEY_A).rating == "good"
    assert store.message_session_id(reply.id, owner=KEY_A) == store.message_session_id(reply.id) == theirs.id
    assert store.feedback_pairs(owner=KEY_A) == [("private", "secret")]
    store.set_feedback(reply.id, correction="better", owner=KEY_A)
    store.delete_session("dave", owner=KEY_A)
    assert store.list_sessions() == []


def test_owners_are_validated(store):
    for bad in (None, 7, b"key", "x" * 65):
        with pytest.raises(StoreError, match="owner"):
            store.create_session("s", owner=bad)
    for bad in (7, "x" * 65):
        with pytest.raises(StoreError, match="owner"):
            store.list_sessions(owner=bad)
    assert store.create_session("s", owner="x" * 64).owner == "x" * 64


def test_message_session_id(store):
    sid = store.create_session().id
    message = store.add_message(sid, "user", "x")
    assert store.message_session_id(message.id) == sid
    for missing in (message.id + 1, 2 ** 70, -1):
        with pytest.raises(MessageNotFound, match="no message with id"):
            store.message_session_id(missing)
    with pytest.raises(StoreError):
        store.message_session_id("1")


# --- history pages -------------------------------------------------------------------------------
def test_history_pages_give_every_message_once_in_order(store):
    sid = store.create_session("long").id
    other = store.create_session().id
    sent = []
    for i in range(120):
        sent.append(store.add_message(sid, "user" if i % 2 == 0 else "bot", f"m{i}"))
        if i % 7 == 0:
            store.add_message(other, "user", "interleaved")  # ids of another session in between
    pages, before = [], None
    while True:
        page, before = store.history_page("long", limit=50, before=before)
        pages.append(page)
        if before is None:
            break
        assert before == page[0].id
    assert [len(p) for p in pages] == [50, 50, 20]
    assert [m for p in reversed(pages) for m in p] == sent == store.history(sid)
    assert store.history_page(sid, limit=50, before=pages[-1][0].id) == ([], None)
    assert store.history_page(sid, limit=120) == (sent, None)
    assert store.history_page(sid, limit=119) == (sent[1:], sent[1].id)
    assert store.history_page(sid, limit=10 ** 30)[0] == sent  # beyond any table: all


def test_history_page_edges(store):
    sid = store.create_session().id
    assert store.history_page(sid) == ([], None)
    sent = [store.add_message(sid, "user", str(i)) for i in range(5)]
    other = store.add_message(store.create_session().id, "user", "elsewhere")
    assert store.history_page(sid, limit=2, before=sent[3].id) == (sent[1:3], sent[1].id)
    # An int that is no message of this session is compared with the ids as it is.
    assert store.history_page(sid, limit=10, before=other.id) == (sent, None)
    assert store.history_page(sid, limit=10, before=sent[2].id) == (sent[:2], None)
    assert store.history_page(sid, before=sent[0].id) == ([], None)
    assert store.history_page(sid, before=2 ** 70) == (sent, None)
    assert store.history_page(sid, before=0) == ([], None) == store.history_page(sid, before=-(2 ** 70))
    for bad in ({"limit": 0}, {"limit": -1}, {"limit": True}, {"limit": "5"}, {"before": "3"},
                {"before": 1.5}, {"before": True}):
        with pytest.raises(StoreError):
            store.history_page(sid, **bad)
    with pytest.raises(SessionNotFound):
        store.history_page(10 ** 6)


# --- SQLite specifics ------------------------------------------------------------------------
def test_sqlite_pragmas_are_active_on_every_connection(db_path):
    with SessionStore(f"sqlite:///{db_path}", busy_timeout_ms=1234) as store:
        conns = [store.engine.connect() for _ in range(3)]  # distinct pooled connections
        try:
            for conn in conns:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
                assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1234
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        finally:
            for conn in conns:
                conn.close()


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_newer_schema_is_rejected_and_the_file_left_unchanged(db_path, journal):
    """Also for a rollback-journal file: switching it to WAL would rewrite its header."""
    with SessionStore(f"sqlite:///{db_path}") as store:
        assert store.schema_version() == SCHEMA_VERSION
        store.add_message(store.create_session().id, "user", "keep me")
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA journal_mode={journal}")
    with conn:
        conn.execute("UPDATE schema_info SET version = ?", (SCHEMA_VERSION + 1,))
    conn.close()
    before = db_path.read_bytes()

    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer") as caught:
        SessionStore(f"sqlite:///{db_path}")
    assert "\n" not in str(caught.value)

    assert db_path.read_bytes() == before
    assert raw_count(db_path, "SELECT version FROM schema_info") == SCHEMA_VERSION + 1


def test_reopening_keeps_data_and_version(db_path):
    with SessionStore(f"sqlite:///{db_path}") as store:
        sid = store.create_session("persist").id
        store.add_message(sid, "user", "still here")
    with SessionStore(f"sqlite:///{db_path}") as store:
        assert store.schema_version() == SCHEMA_VERSION and store.schema_revision() == HEAD_REVISION
        assert [m.text for m in store.history("persist")] == ["still here"]
    assert raw_count(db_path, "SELECT count(*) FROM schema_info") == 1
    assert raw_count(db_path, "SELECT count(*) FROM alembic_version") == 1


def test_integrity_check_passes_on_a_used_database(store):
    sid = store.create_session().id
    for i in range(5):
        store.add_message(sid, "user", f"m{i}")
    assert store.integrity_check() is True


def test_in_memory_database_works(tmp_path):
    with SessionStore("sqlite://") as store:
        sid = store.create_session().id
        store.add_message(sid, "user", "x")
        assert [m.text for m in store.history(sid)] == ["x"]


def test_closed_store_refuses_calls(store):
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.list_sessions()


# --- concurrency -----------------------------------------------------------------------------
def test_threads_sharing_one_store_lose_nothing(store):
    sessions = [store.create_session(f"thread {i}").id for i in range(8)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(sessions))

    def write(sid: int) -> None:
        try:
            start.wait()
            for i in range(50):
                store.add_message(sid, "user", f"{sid}:{i}")
                if i % 10 == 0:
                    store.history(sid, last=5)  # reads interleaved with other threads' writes
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(sid,)) for sid in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for sid in sessions:
        history = store.history(sid)
        assert [m.position for m in history] == list(range(50))
        assert [m.text for m in history] == [f"{sid}:{i}" for i in range(50)]
    assert store.integrity_check()


WRITER = """
import sys, time
from pathlib import Path
from chatbot.dialogue.store import SessionStore
url, session, tag, go, n = sys.argv[1:]
# A generous lock wait: SQLite's busy handler polls, so one tight-looping writer can hold the
# other off for a long while on a loaded machine. What is tested is that nothing is lost.
store = SessionStore(url, busy_timeout_ms=120_000)
Path(go + "." + tag).touch()  # ready
while not Path(go).exists():
    time.sleep(0.005)
for i in range(int(n)):
    store.add_message(int(session), "user", f"{tag} {i}")
store.close()
"""


def test_two_processes_appending_to_one_session_lose_nothing(store, db_path, tmp_path):
    sid = store.create_session("shared").id
    go = tmp_path / "go"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, store.url, str(sid), tag, str(go), "200"],
                                stderr=subprocess.PIPE, text=True) for tag in ("A", "B")]
    give_up = time.monotonic() + 300  # a hang guard, not a timing assertion
    while not all(Path(f"{go}.{tag}").exists() for tag in ("A", "B")):
        if any(p.poll() is not None for p in writers) or time.monotonic() > give_up:
            break  # the checks below report the failure
        time.sleep(0.005)
    go.touch()  # both opened the store: now they write at the same time
    for proc in writers:
        _, err = proc.communicate(timeout=300)  # a hang guard, not a timing assertion
        assert proc.returncode == 0, err

    history = store.history(sid)
    assert [m.position for m in history] == list(range(400))
    for tag in ("A", "B"):
        assert [m.text for m in history if m.text.startswith(tag)] == [f"{tag} {i}" for i in range(200)]
    assert raw_count(db_path, "SELECT count(DISTINCT position) FROM messages WHERE session_id = ?", sid) == 400
    assert store.integrity_check()


# --- retention ---------------------------------------------------------------------------------
def test_pruning_deletes_old_sessions_whole_and_compacting_gives_the_space_back(tmp_path, capsys, monkeypatch):
    """A store for weeks of conversations only grew: deleting left the file its size, and
    there was no way to delete by age."""
    from datetime import datetime, timedelta, timezone

    from helpers import run_cli
    from sqlalchemy import text

    db = tmp_path / "old.db"
    with SessionStore(f"sqlite:///{db}") as store:
        for i in range(60):
            sid = store.create_session(f"s{i}", owner="k" if i % 2 else "").id
            store.add_message(sid, "user", "x" * 2000)
            reply = store.add_message(sid, "bot", "y" * 2000, score=-0.1)
            store.set_feedback(reply.id, rating="good")
        store.create_session("empty and old")
        with store.engine.begin() as conn:  # s0..s39 and the empty one were last active 40 days ago
            ago = datetime.now(timezone.utc) - timedelta(days=40)
            conn.execute(text("UPDATE messages SET created_at = :t WHERE session_id <= 40"), {"t": ago})
            conn.execute(text("UPDATE sessions SET updated_at = :t WHERE id <= 40 OR name = 'empty and old'"),
                         {"t": ago})
        month = datetime.now(timezone.utc) - timedelta(days=30)
        assert store.prune_sessions(month, owner="k") == (20, 40)  # one owner's only
        assert store.prune_sessions(month) == (21, 40)
        assert sorted(s.name for s in store.list_sessions()) == sorted(f"s{i}" for i in range(40, 60))
        assert raw_count(db, "SELECT count(*) FROM feedback") == 20 and store.integrity_check()
        with store.engine.begin() as conn:  # and the rest two days ago
            conn.execute(text("UPDATE messages SET created_at = :t"), {"t": datetime.now(timezone.utc) - timedelta(days=2)})
    before = db.stat().st_size
    code, out, err = run_cli(capsys, monkeypatch, "sessions", "prune", "--older-than", "1", "--db", db)
    assert code == 0, err
    assert out.startswith("deleted 20 sessions and 40 messages last active before ")
    assert db.stat().st_size < before / 4  # VACUUM: the pages of the deleted rows are gone
    with SessionStore(f"sqlite:///{db}") as store:
        assert store.list_sessions() == [] and store.integrity_check()


# --- locations ---------------------------------------------------------------------------------
def test_default_url_follows_xdg_data_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("CHATBOT_DB", raising=False)
    expected = tmp_path / "xdg" / "chatbot" / "chatbot.db"
    assert default_database_url() == f"sqlite:///{expected}"
    assert resolve_database_url(None) == default_database_url()
    with SessionStore() as store:  # creates the directories on first use
        store.create_session("here")
    assert expected.is_file()
    # Conversations are private: other local users could read every one (0755 and 0644 before).
    assert stat.S_IMODE(expected.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(expected.stat().st_mode) == 0o600
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in expected.parent.glob("chatbot.db-*"))


def test_default_url_falls_back_to_local_share(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_database_url() == f"sqlite:///{tmp_path}/.local/share/chatbot/chatbot.db"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/dir")  # the XDG spec says to ignore these
    assert default_database_url() == f"sqlite:///{tmp_path}/.local/share/chatbot/chatbot.db"


def test_explicit_url_beats_chatbot_db_beats_default(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("CHATBOT_DB", "sqlite:///from-env.db")
    assert resolve_database_url(None) == "sqlite:///from-env.db"
    assert resolve_database_url("postgresql://u@h/db") == "postgresql://u@h/db"
    monkeypatch.setenv("CHATBOT_DB", "")
    assert resolve_database_url(None) == default_database_url()


def test_a_plain_path_is_a_sqlite_file(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert resolve_database_url("sub/chats.db") == f"sqlite:///{tmp_path}/sub/chats.db"
    with SessionStore("sub/chats.db") as store:
        store.create_session()
    assert (tmp_path / "sub" / "chats.db").is_file()


# --- export ------------------------------------------------------------------------------------
def test_yaml_export_loads_back_as_each_question_with_its_reply(store, tmp_path):
    """Not the session as one conversation, which the reader takes as pairs of neighbours: that
    trained the bot's replies to be answered by the user's next question. A fallback (the bot
    did not know) and a question left without a reply are no pairs to learn."""
    sid = store.create_session("greetings").id

    def exchange(question, reply=None, fallback=False):
        asked = store.add_message(sid, "user", question)
        if reply is not None:
            store.add_message(sid, "bot", reply, in_reply_to=asked.id, fallback=fallback)

    exchange("Hello", "Hi! 😀")
    exchange("- a dash", "no: really?")
    exchange("what is a quark?", "I'm not sure I understand.", fallback=True)
    exchange("the reply failed to store")
    exchange("שלום", "Yes")
    path = tmp_path / "export.yml"
    path.write_text(store.export_session(sid, "yaml"), encoding="utf-8")

    corpus = load_corpus(path, strict=True)
    assert {d.category for d in corpus.dialogues} == {"greetings"}
    pairs = [(e.question, e.answer) for e in corpus.examples(deduplicate=False)]
    assert pairs == [("Hello", "Hi! 😀"), ("- a dash", "no: really?"), ("שלום", "Yes")]
    assert all(e.context == () for e in corpus.examples())


def test_yaml_export_of_an_unnamed_session_uses_its_id(store):
    sid = store.create_session().id
    asked = store.add_message(sid, "user", "a")
    store.add_message(sid, "bot", "b", in_reply_to=asked.id)
    doc = yaml.safe_load(store.export_session(sid, "yaml"))
    assert doc == {"categories": [f"session {sid}"], "conversations": [["a", "b"]]}


def test_jsonl_export_has_one_parseable_object_per_message(store):
    sid = store.create_session().id
    q = store.add_message(sid, "user", "multi\nline\u2028with separators\x85")
    store.add_message(sid, "bot", "ok", model_name="tiny", score=-1.0, in_reply_to=q.id)
    lines = store.export_session(sid, "jsonl").splitlines()
    assert len(lines) == 2
    records = [json.loads(line) for line in lines]
    assert [r["role"] for r in records] == ["user", "bot"]
    assert records[0]["text"] == q.text
    assert records[0]["created_at"] == q.created_at.isoformat()
    assert (records[1]["model_name"], records[1]["score"], records[1]["in_reply_to"]) == ("tiny", -1.0, q.id)


def test_unknown_export_format_is_rejected(store):
    with pytest.raises(StoreError, match="format"):
        store.export_session(store.create_session().id, "csv")


def test_importing_the_store_does_not_load_tensorflow():
    code = "import sys, chatbot.dialogue.store; print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_deleted_sessions_and_messages_ids_are_never_given_again(tmp_path):
    """SQLite gave a new row max(id) + 1: a REPL still holding a deleted session's id wrote into
    the next new session, and a stale message id rated another reply (AUTOINCREMENT, revision 0003)."""
    with SessionStore(tmp_path / "c.db") as store:
        kept = store.create_session("kept").id
        gone = store.create_session("gone")
        message = store.add_message(gone.id, "user", "my secret")
        store.delete_session(gone.id)
        new = store.create_session("new")
        assert new.id not in (kept, gone.id)
        assert store.add_message(new.id, "user", "hello").id != message.id
        with pytest.raises(SessionNotFound):
            store.add_message(gone.id, "user", "still typing into the old one")


def test_a_postgres_url_in_the_providers_spelling_says_how_to_write_it():
    with pytest.raises(StoreError, match=r"a PostgreSQL URL starts postgresql\+psycopg://") as caught:
        SessionStore("postgres://chat:secret@localhost/chatbot")
    assert "secret" not in str(caught.value)


def test_an_empty_session_is_no_corpus():
    """Its YAML export was `conversations: - []`, which the corpus reader refuses."""
    with SessionStore("sqlite://") as store:
        store.create_session("empty")
        with pytest.raises(InputError, match="session empty has no question with a reply"):
            store.export_session("empty", format="yaml")
        assert store.export_session("empty", format="jsonl") == ""
        store.add_message("empty", "user", "never answered")
        with pytest.raises(InputError, match="session empty has no question with a reply"):
            store.export_session("empty", format="yaml")
