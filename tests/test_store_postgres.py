"""SessionStore on a real PostgreSQL server (``postgresql+psycopg``): the backend-neutral tests of
tests/test_store.py, migrations from empty and from a database written before Alembic,
concurrent openers and writers. The server is a throwaway one started from the machine's
binaries (tests/postgres.py); without one, every test here is skipped and says why."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from chatbot.dialogue.store import (
    HEAD_REVISION, SCHEMA_VERSION, MessageNotFound, SessionExists, SessionNotFound, SessionStore, StoreError,
)
from postgres import PostgresServer, PostgresUnavailable, unavailable
# The backend-neutral tests of test_store, collected here again with this module's ``store``.
from test_store import (  # noqa: F401
    test_a_name_without_an_owner_resolves_among_sessions_without_one,
    test_add_message_updates_session_updated_at,
    test_another_owners_session_is_reported_as_missing,
    test_get_session_by_id_digit_string_and_name,
    test_history_last_n_gives_the_newest_oldest_first,
    test_history_page_edges,
    test_history_pages_give_every_message_once_in_order,
    test_invalid_messages_are_rejected_and_not_stored,
    test_jsonl_export_has_one_parseable_object_per_message,
    test_list_sessions_has_counts_and_newest_update_first,
    test_message_session_id,
    test_missing_sessions_raise_session_not_found,
    test_owners_are_validated,
    test_positions_are_per_session,
    test_positions_are_zero_based_dense_and_in_order,
    test_records_are_plain_frozen_dataclasses_with_aware_utc_times,
    test_round_trip_of_session_and_messages_with_bot_fields,
    test_session_names_are_unique,
    test_sessions_have_an_owner_and_names_are_unique_per_owner,
    test_unusable_session_names_are_rejected,
    test_yaml_export_of_an_unnamed_session_uses_its_id,
)
from test_migrations import schema_differences


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server for the whole test session, stopped and removed after."""
    why = unavailable()
    if why:
        pytest.skip(f"no PostgreSQL server: {why}")
    server = PostgresServer()
    try:
        server.start()
    except PostgresUnavailable as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:
    """The URL of a database on the throwaway server (``postgresql+psycopg://...``)."""
    return postgres_server.create_database("chatbot_store")


@pytest.fixture
def store(postgres_url):
    """A store on the shared database, emptied first."""
    with SessionStore(postgres_url) as s:
        with s.engine.begin() as conn:
            conn.exec_driver_sql("TRUNCATE feedback, messages, sessions RESTART IDENTITY CASCADE")
        yield s


# --- migrations ----------------------------------------------------------------------------------
def test_an_empty_database_is_migrated_to_exactly_the_models_schema(postgres_server):
    url = postgres_server.create_database()
    with SessionStore(url) as store:
        assert store.url.startswith("postgresql+psycopg://")
        assert store.schema_revision() == HEAD_REVISION and store.schema_version() == SCHEMA_VERSION
        assert schema_differences(store) == []
        assert store.integrity_check()
    with SessionStore(url, read_only=True) as store:  # at the newest revision: nothing to do
        assert store.list_sessions() == []


LEGACY_DDL = [  # what create_all made on PostgreSQL for schema_info version 3 (pg_dump of it)
    "CREATE TABLE schema_info (id SERIAL PRIMARY KEY, version INTEGER NOT NULL)",
    "CREATE TABLE sessions (id SERIAL PRIMARY KEY, name VARCHAR(200) UNIQUE, created_at TIMESTAMP NOT NULL, "
    "updated_at TIMESTAMP NOT NULL, metadata JSON NOT NULL)",
    "CREATE TABLE messages (id SERIAL PRIMARY KEY, session_id INTEGER NOT NULL REFERENCES sessions (id) "
    "ON DELETE CASCADE, position INTEGER NOT NULL, role VARCHAR(8) NOT NULL, text TEXT NOT NULL, "
    "created_at TIMESTAMP NOT NULL, model_name VARCHAR(200), model_version VARCHAR(100), decoding JSON, "
    "score FLOAT, latency_ms FLOAT, fallback BOOLEAN, confidence FLOAT, details JSON, "
    "in_reply_to INTEGER REFERENCES messages (id) ON DELETE SET NULL, "
    "CONSTRAINT uq_messages_session_position UNIQUE (session_id, position), "
    "CONSTRAINT ck_messages_role CHECK (role IN ('user', 'bot')))",
    "CREATE INDEX ix_messages_in_reply_to ON messages (in_reply_to)",
    "CREATE TABLE feedback (message_id INTEGER PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE, "
    "rating VARCHAR(8), correction TEXT, updated_at TIMESTAMP NOT NULL, "
    "CONSTRAINT ck_feedback_rating CHECK (rating IN ('good', 'bad')))",
    "INSERT INTO schema_info (version) VALUES (3)",
    "INSERT INTO sessions (name, created_at, updated_at, metadata) VALUES "
    "('alice', '2026-12-01 10:00', '2026-12-01 10:00', '{\"user\": \"ann\"}'), "
    "(NULL, '2026-12-01 10:01', '2026-12-01 10:01', '{}')",
    "INSERT INTO messages (session_id, position, role, text, created_at) VALUES "
    "(1, 0, 'user', 'hi there', '2026-12-01 10:02'), (2, 0, 'user', 'unnamed', '2026-12-01 10:03')",
    "INSERT INTO messages (session_id, position, role, text, created_at, model_name, score, fallback, "
    "confidence, in_reply_to) VALUES (1, 1, 'bot', 'hello! 😀', '2026-12-01 10:04', 'tiny', -0.25, false, 0.75, 1)",
    "INSERT INTO feedback VALUES (3, 'good', 'better', '2026-12-01 10:05')",
    "SELECT setval('sessions_id_seq', 2), setval('messages_id_seq', 3)",
]


def legacy_postgres_database(server: PostgresServer) -> str:
    url = server.create_database()
    for statement in LEGACY_DDL:
        server.execute(statement, database=sa.engine.make_url(url).database)
    return url


def table(url: str, sql: str) -> list[tuple]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(sql)]
    finally:
        engine.dispose()


def test_a_database_written_before_alembic_keeps_every_row(postgres_server):
    url = legacy_postgres_database(postgres_server)
    columns = "id, name, created_at, updated_at, metadata::text"
    sessions = table(url, f"SELECT {columns} FROM sessions ORDER BY id")
    messages = table(url, "SELECT * FROM messages ORDER BY id")
    feedback = table(url, "SELECT * FROM feedback")
    with SessionStore(url) as store:
        assert store.schema_revision() == HEAD_REVISION and store.schema_version() == SCHEMA_VERSION
        assert schema_differences(store) == []
        assert [(s.name, s.message_count, s.owner) for s in store.list_sessions()] == [
            ("alice", 2, ""), (None, 1, "")]
        reply = store.history("alice")[1]
        assert (reply.text, reply.confidence, reply.in_reply_to, reply.fallback) == ("hello! 😀", 0.75, 1, False)
        assert store.feedback_pairs() == [("hi there", "better")]
        with pytest.raises(SessionExists):
            store.create_session("alice")
        assert store.create_session("alice", owner="k").id > 2  # the sequence carried on
    assert table(url, f"SELECT {columns} FROM sessions WHERE id <= 2 ORDER BY id") == sessions
    assert table(url, "SELECT * FROM messages ORDER BY id") == messages
    assert table(url, "SELECT * FROM feedback") == feedback
    assert table(url, "SELECT conname FROM pg_constraint WHERE conrelid = 'sessions'::regclass "
                      "AND contype = 'u'") == [("uq_sessions_owner_name",)]


def test_downgrade_to_the_baseline_and_back(postgres_server):
    url = legacy_postgres_database(postgres_server)
    with SessionStore(url) as store:
        with store._migration_connection() as conn:
            store._migrate(conn, "0001", downgrade=True)
        assert table(url, "SELECT conname FROM pg_constraint WHERE conrelid = 'sessions'::regclass "
                          "AND contype = 'u'") == [("sessions_name_key",)]
    with SessionStore(url) as store:
        assert store.schema_revision() == HEAD_REVISION and len(store.history("alice")) == 2
        assert schema_differences(store) == []


@pytest.mark.parametrize("kind", ["empty", "legacy"])
def test_workers_opening_one_database_together_migrate_it_once(postgres_server, kind):
    """The advisory lock: each opener checks again once the first migration is committed."""
    url = postgres_server.create_database() if kind == "empty" else legacy_postgres_database(postgres_server)
    start, errors, ids = threading.Barrier(4), [], []

    def worker():
        try:
            start.wait()
            with SessionStore(url) as store:
                ids.append(store.get_or_create_session("shared").id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(ids)) == 1
    assert table(url, "SELECT version_num FROM alembic_version") == [(HEAD_REVISION,)]


def test_an_unknown_revision_is_refused(postgres_server):
    url = postgres_server.create_database()
    SessionStore(url).close()
    postgres_server.execute("UPDATE alembic_version SET version_num = '0099'",
                            database=sa.engine.make_url(url).database)
    with pytest.raises(StoreError, match="schema revision 0099, newer"):
        SessionStore(url)
    assert table(url, "SELECT version_num FROM alembic_version") == [("0099",)]


def test_an_unreachable_server_is_a_store_error(postgres_server):
    with pytest.raises(StoreError, match="database error|cannot open"):
        SessionStore(postgres_server.url("no_such_database"))


# --- PostgreSQL specifics ------------------------------------------------------------------------
def test_feedback_round_trip(store):
    sid = store.create_session("s", owner="k").id
    question = store.add_message(sid, "user", "hi")
    reply = store.add_message(sid, "bot", "hello", in_reply_to=question.id, score=-0.1)
    store.set_feedback(reply.id, rating="bad", owner="k")
    store.set_feedback(reply.id, correction="Good day.")
    assert (store.get_feedback(reply.id).rating, store.get_feedback(reply.id).correction) == ("bad", "Good day.")
    assert store.feedback_pairs() == [("hi", "Good day.")] == store.feedback_pairs(sid, owner="k")
    assert set(store.session_feedback("s", owner="k")) == {reply.id}
    with pytest.raises(MessageNotFound):
        store.set_feedback(question.id, rating="good")
    store.delete_session(sid)
    assert store.feedback_pairs() == [] and store.get_feedback(reply.id) is None


def test_text_is_stored_verbatim_and_a_nul_is_a_store_error(store):
    sid = store.create_session().id
    texts = ["héllo wörld", "😀👍🏽 family: 👨‍👩‍👧", "שלום עולם مرحبا", "'; DROP TABLE messages; --", "",
             "line one\nline two\r\nline three\ttab", "e\u0301 (not NFC)", "\u2028line separator\u2029"]
    for text in texts:
        store.add_message(sid, "user", text)
    assert [m.text for m in store.history(sid)] == texts
    with pytest.raises(StoreError, match="NUL"):  # PostgreSQL text cannot hold U+0000
        store.add_message(sid, "user", "nul\x00inside")
    assert len(store.history(sid)) == len(texts)


def test_a_name_typed_decomposed_finds_and_locks_the_composed_session(store):
    """The lookup that accepts either composition also takes the row lock (FOR UPDATE beside
    ORDER BY) on a server database."""
    created = store.create_session("Ju\u0308rgen")
    assert created.name == "J\u00fcrgen"
    store.add_message("Ju\u0308rgen", "user", "hallo")
    assert [m.text for m in store.history("J\u00fcrgen")] == ["hallo"]
    store.delete_session("Ju\u0308rgen")
    assert store.list_sessions() == []


def test_concurrent_writers_with_their_own_stores_lose_nothing(store, postgres_url):
    """4 workers (threads, each with its own SessionStore: its own connections, as separate
    processes would have) append 50 messages each to one session: the position races on a
    server database are retried, so every message is stored once, at positions 0..199."""
    sid = store.create_session("shared").id
    workers, per_worker = 4, 50
    start, errors = threading.Barrier(workers), []

    def write(tag: int) -> None:
        try:
            with SessionStore(postgres_url) as mine:
                start.wait()
                for i in range(per_worker):
                    mine.add_message(sid, "user", f"{tag}:{i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(tag,)) for tag in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    history = store.history(sid)
    assert [m.position for m in history] == list(range(workers * per_worker))
    for tag in range(workers):
        assert [m.text for m in history if m.text.startswith(f"{tag}:")] == [f"{tag}:{i}" for i in range(per_worker)]
    assert sorted(m.id for m in history) == [m.id for m in history]  # ids grow with positions
    pages, before = [], None
    while True:
        page, before = store.history_page(sid, limit=64, before=before)
        pages[:0] = page
        if before is None:
            break
    assert pages == history


def test_deleting_a_session_while_another_store_appends(store, postgres_url):
    sid = store.create_session("doomed").id
    store.add_message(sid, "user", "first")
    with SessionStore(postgres_url) as other:
        store.delete_session("doomed")
        with pytest.raises(SessionNotFound):
            other.add_message(sid, "user", "too late")
    assert store.list_sessions() == []
