"""The store's Alembic migrations (SQLite; tests/test_store_postgres.py runs them on PostgreSQL):
databases written before Alembic are adopted without losing a row, a brand-new one gets exactly
the models' schema, a newer one is refused untouched, and a failed migration changes nothing."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatbot.dialogue.store import (
    HEAD_REVISION, LEGACY_VERSION, MIGRATIONS, SCHEMA_VERSION, Base, SessionExists, SessionStore, StoreError,
    migration_config,
)
from conftest import ROOT

# --- databases as chatbot wrote them before Alembic ----------------------------------------------
# The DDL is what SessionStore's create_all emitted for schema_info version 3 (sqlite_master of a
# database it made), and versions 1 and 2 as the in-place upgrade found them.
SESSIONS_DDL = """CREATE TABLE sessions (
    id INTEGER NOT NULL, name VARCHAR(200), created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL,
    metadata JSON NOT NULL, PRIMARY KEY (id), UNIQUE (name))"""
MESSAGES_COLUMNS = """id INTEGER NOT NULL, session_id INTEGER NOT NULL, position INTEGER NOT NULL,
    role VARCHAR(8) NOT NULL, text TEXT NOT NULL, created_at DATETIME NOT NULL, model_name VARCHAR(200),
    model_version VARCHAR(100), decoding JSON, score FLOAT, latency_ms FLOAT, fallback BOOLEAN, {v3}
    in_reply_to INTEGER, PRIMARY KEY (id),
    CONSTRAINT uq_messages_session_position UNIQUE (session_id, position),
    CONSTRAINT ck_messages_role CHECK (role IN ('user', 'bot')),
    FOREIGN KEY(session_id) REFERENCES sessions (id) ON DELETE CASCADE,
    FOREIGN KEY(in_reply_to) REFERENCES messages (id) ON DELETE SET NULL"""
FEEDBACK_DDL = """CREATE TABLE feedback (
    message_id INTEGER NOT NULL, rating VARCHAR(8), correction TEXT, updated_at DATETIME NOT NULL,
    PRIMARY KEY (message_id), CONSTRAINT ck_feedback_rating CHECK (rating IN ('good', 'bad')),
    FOREIGN KEY(message_id) REFERENCES messages (id) ON DELETE CASCADE)"""

T = "2026-12-01 10:00:0{}.000000"  # how SQLAlchemy stores a DATETIME in SQLite
SESSIONS = [(1, "alice", T.format(0), T.format(0), '{"user": "ann", "tags": ["a", 1]}'),
            (2, None, T.format(1), T.format(1), "{}"),
            (3, "bob", T.format(2), T.format(2), '{"x": "\\u00e9"}'),
            (4, "empty", T.format(3), T.format(3), "{}")]
# id, session_id, position, role, text, created_at, model_name, model_version, decoding, score,
# latency_ms, fallback, in_reply_to
MESSAGES = [(1, 1, 0, "user", "hi there", T.format(4), None, None, None, None, None, None, None),
            (2, 1, 1, "bot", "hello! 😀", T.format(5), "tiny", "3", '{"strategy": "beam", "width": 4}',
             -0.25, 12.5, 0, 1),
            (3, 2, 0, "user", "line one\nline two", T.format(6), None, None, None, None, None, None, None),
            (4, 2, 1, "bot", "Sorry?", T.format(7), "tiny", "3", None, -3.0, 8.0, 1, 3),
            (5, 1, 2, "user", "'; DROP TABLE messages; --", T.format(8), None, None, None, None, None, None, None),
            (6, 1, 3, "bot", "no", T.format(9), "tiny", "3", None, -1.0, 9.5, 0, 5),
            (7, 3, 0, "user", "שלום", T.format(9), None, None, None, None, None, None, None)]
FEEDBACK = [(2, "good", None, T.format(9)), (4, None, "A better answer.", T.format(9)),
            (6, "bad", "yes", T.format(9))]


def legacy_database(path: Path, version: int = LEGACY_VERSION, stamp: str | None = None,
                    rows: bool = True) -> Path:
    """A database of schema_info ``version`` (1 to 3) as chatbot wrote it before Alembic, with
    the rows above (version 1 has no feedback); ``stamp`` also records an Alembic revision."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE schema_info (id INTEGER NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (id))")
        conn.execute(SESSIONS_DDL)
        conn.execute("CREATE TABLE messages (" + MESSAGES_COLUMNS.format(
            v3="confidence FLOAT, details JSON," if version >= 3 else "") + ")")
        conn.execute("CREATE INDEX ix_messages_in_reply_to ON messages (in_reply_to)")
        if version >= 2:
            conn.execute(FEEDBACK_DDL)
        conn.execute("INSERT INTO schema_info VALUES (1, ?)", (version,))
        if rows:
            conn.executemany("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)", SESSIONS)
            conn.executemany("INSERT INTO messages (id, session_id, position, role, text, created_at, model_name, "
                             "model_version, decoding, score, latency_ms, fallback, in_reply_to) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", MESSAGES)
            if version >= 3:
                conn.execute("UPDATE messages SET confidence = 0.75, details = '{\"retrieved\": []}' WHERE id = 2")
            if version >= 2:
                conn.executemany("INSERT INTO feedback VALUES (?, ?, ?, ?)", FEEDBACK)
        if stamp:
            conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
                         "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))")
            conn.execute("INSERT INTO alembic_version VALUES (?)", (stamp,))
    conn.close()
    return path


def dump(path: Path, table: str, columns: str = "*") -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(f"SELECT {columns} FROM {table} ORDER BY 1").fetchall()
    finally:
        conn.close()


OLD_SESSION_COLUMNS = "id, name, created_at, updated_at, metadata"
OLD_MESSAGE_COLUMNS = ("id, session_id, position, role, text, created_at, model_name, model_version, decoding, "
                       "score, latency_ms, fallback, in_reply_to")


def schema_differences(store: SessionStore) -> list:
    """What Alembic's autogenerate finds between the database and the models (nothing, when
    the migrations build exactly the models' schema)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return compare_metadata(context, Base.metadata)


# --- the revisions themselves --------------------------------------------------------------------
def test_head_revision_is_the_single_head_of_the_migrations():
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migration_config())
    assert script.get_heads() == [HEAD_REVISION]
    assert [s.revision for s in reversed(list(script.walk_revisions()))] == ["0001", "0002", "0003"]
    for s in script.walk_revisions():  # the file name starts with its id, for a sorted listing
        assert Path(s.path).name.startswith(s.revision + "_")
    assert MIGRATIONS.is_dir() and (MIGRATIONS / "env.py").is_file()


def test_a_new_database_gets_exactly_the_models_schema(tmp_path):
    with SessionStore(tmp_path / "new.db") as store:
        assert store.schema_revision() == HEAD_REVISION
        assert store.schema_version() == SCHEMA_VERSION
        assert schema_differences(store) == []
    assert dump(tmp_path / "new.db", "alembic_version") == [(HEAD_REVISION,)]


def test_the_env_refuses_to_run_without_the_stores_connection():
    from alembic import command

    with pytest.raises(RuntimeError, match="connection"):
        command.upgrade(migration_config(), "head")


# --- adopting databases written before Alembic ---------------------------------------------------
def test_a_version_3_database_keeps_every_row_and_gains_owners(tmp_path):
    """Today's schema (schema_info, no alembic_version) written with rows, opened by the new store."""
    path = legacy_database(tmp_path / "v3.db")
    sessions, messages = dump(path, "sessions"), dump(path, "messages", OLD_MESSAGE_COLUMNS + ", confidence, details")
    feedback = dump(path, "feedback")

    with SessionStore(path) as store:
        assert store.schema_revision() == HEAD_REVISION and store.schema_version() == SCHEMA_VERSION
        assert store.integrity_check()
        assert schema_differences(store) == []
        # Every connection of the pool has its foreign keys back on after the migration.
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        listed = {s.id: s for s in store.list_sessions()}
        assert {i: (s.name, s.message_count, s.owner) for i, s in listed.items()} == {
            1: ("alice", 4, ""), 2: (None, 2, ""), 3: ("bob", 1, ""), 4: ("empty", 0, "")}
        assert listed[1].metadata == {"user": "ann", "tags": ["a", 1]}
        reply = store.history("alice")[1]
        assert (reply.text, reply.decoding, reply.fallback, reply.in_reply_to, reply.confidence) == (
            "hello! 😀", {"strategy": "beam", "width": 4}, False, 1, 0.75)
        assert store.feedback_pairs() == [("hi there", "hello! 😀"), ("'; DROP TABLE messages; --", "yes"),
                                          ("line one\nline two", "A better answer.")]
        # Names are now unique per owner: the old sessions are owner ''.
        with pytest.raises(SessionExists):
            store.create_session("alice")
        assert store.create_session("alice", owner="k").id == 5
        assert store.add_message("alice", "user", "after").position == 4
        # Ids are never handed out twice (revision 0003): the newest session, deleted, keeps its id.
        store.delete_session(5)
        assert store.create_session("carol").id == 6

    assert dump(path, "sessions", OLD_SESSION_COLUMNS)[:4] == sessions
    assert dump(path, "messages", OLD_MESSAGE_COLUMNS + ", confidence, details")[:7] == messages
    assert dump(path, "feedback") == feedback
    assert dump(path, "sessions", "owner")[:4] == [("",)] * 4


@pytest.mark.parametrize("version", [1, 2])
def test_older_versions_get_what_they_lacked(tmp_path, version):
    """Version 1: no feedback table, no confidence/details; version 2: no confidence/details."""
    path = legacy_database(tmp_path / f"v{version}.db", version)
    messages = dump(path, "messages")
    with SessionStore(path) as store:
        assert store.schema_revision() == HEAD_REVISION and store.schema_version() == SCHEMA_VERSION
        assert schema_differences(store) == []
        assert [m.confidence for m in store.history("alice")] == [None] * 4
        expected = [("hi there", "hello! 😀"), ("'; DROP TABLE messages; --", "yes"),
                    ("line one\nline two", "A better answer.")] if version == 2 else []
        assert store.feedback_pairs() == expected
        store.set_feedback(2, rating="good")
        new = store.add_message(1, "bot", "b", confidence=0.5, details={"retrieved": []})
        assert store.history("alice")[-1] == new
        assert store.integrity_check()
    assert [row[:13] for row in dump(path, "messages", OLD_MESSAGE_COLUMNS)[:7]] == messages


def test_an_empty_legacy_database_is_adopted(tmp_path):
    path = legacy_database(tmp_path / "v3.db", rows=False)
    with SessionStore(path) as store:
        assert store.list_sessions() == [] and store.schema_revision() == HEAD_REVISION


def test_a_stamped_baseline_is_upgraded(tmp_path):
    path = legacy_database(tmp_path / "0001.db", stamp="0001")
    with SessionStore(path) as store:
        assert store.schema_revision() == HEAD_REVISION
        assert len(store.history("alice")) == 4 and store.get_session(1).owner == ""


# Opens the store at the go signal: the processes migrate one legacy file at the same time.
OPENER = """
import sys, time
from pathlib import Path
from chatbot.dialogue.store import SessionStore
url, go, tag = sys.argv[1:]
Path(f"{go}.{tag}").touch()
while not Path(go).exists():
    time.sleep(0.0005)
with SessionStore(url, busy_timeout_ms=120_000) as store:
    store.add_message("alice", "user", f"from {tag}")
"""


def test_processes_opening_a_legacy_database_together_migrate_it_once(tmp_path):
    path = legacy_database(tmp_path / "v3.db")
    go, tags = tmp_path / "go", ["P0", "P1", "P2"]
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, f"sqlite:///{path}", str(go), tag], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tag in tags]
    give_up = time.monotonic() + 300  # a hang guard, not a timing assertion
    while not all(Path(f"{go}.{tag}").exists() for tag in tags):
        if any(p.poll() is not None for p in procs) or time.monotonic() > give_up:
            break
        time.sleep(0.01)
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    with SessionStore(path) as store:
        history = store.history("alice")
        assert [m.position for m in history] == list(range(7))
        assert sorted(m.text for m in history[4:]) == [f"from {tag}" for tag in tags]
        assert store.schema_revision() == HEAD_REVISION and store.integrity_check()
    assert len(dump(path, "sessions")) == 4 and len(dump(path, "feedback")) == 3


# --- refusing what cannot be migrated ------------------------------------------------------------
@pytest.mark.parametrize("read_only", [False, True])
@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_an_unknown_revision_is_newer_and_left_untouched(tmp_path, read_only, journal):
    path = tmp_path / "chat.db"
    with SessionStore(path) as store:
        store.add_message(store.create_session("s").id, "user", "keep me")
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA journal_mode={journal}")
    with conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099'")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match=f"schema revision 0099, newer than this chatbot supports \\({HEAD_REVISION}\\)"
                       ) as caught:
        SessionStore(path, read_only=read_only)
    assert "\n" not in str(caught.value)
    assert path.read_bytes() == before
    if journal == "delete":  # not switched to WAL: no -wal or -shm file appears
        assert [p.name for p in tmp_path.iterdir()] == ["chat.db"]


def test_a_marker_without_a_migration_record_is_refused(tmp_path):
    path = legacy_database(tmp_path / "odd.db")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_info SET version = ?", (SCHEMA_VERSION,))
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="no migration record"):
        SessionStore(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("stamp", [None, "0001"])
def test_a_read_only_store_refuses_an_older_database(tmp_path, stamp):
    path = legacy_database(tmp_path / "old.db", stamp=stamp)
    before = path.read_bytes()
    expected = "schema revision 0001, older" if stamp else f"schema version {LEGACY_VERSION}, older"
    with pytest.raises(StoreError, match=expected):
        SessionStore(path, read_only=True)
    assert path.read_bytes() == before


def test_sessions_upgrade_migrates_an_older_database_without_a_model_once(tmp_path, capsys):
    """The read-only commands refuse an older database and name the command that upgrades it;
    it keeps every row, and a second run has nothing to do."""
    from chatbot.cli.main import main
    from chatbot.errors import DatabaseOutdated

    path = legacy_database(tmp_path / "old.db")
    with pytest.raises(DatabaseOutdated, match="'chatbot sessions upgrade'"):
        SessionStore(path, read_only=True)
    assert main(["sessions", "list", "--db", str(path)]) == 1
    assert "'chatbot sessions upgrade'" in capsys.readouterr().err
    assert main(["sessions", "upgrade", "--db", str(path)]) == 0
    assert capsys.readouterr().out == f"upgraded sqlite:///{path} to schema revision {HEAD_REVISION}\n"
    with SessionStore(path, read_only=True) as store:
        assert [s.name for s in store.list_sessions()] == ["bob", "alice", None, "empty"]
    before = path.read_bytes()
    assert main(["sessions", "upgrade", "--db", str(path)]) == 0
    assert "nothing to upgrade" in capsys.readouterr().out and path.read_bytes() == before
    assert main(["sessions", "upgrade", "--db", str(tmp_path / "missing.db")]) == 1  # never creates one
    assert not (tmp_path / "missing.db").exists()


def test_a_failed_migration_changes_nothing(tmp_path, monkeypatch):
    """The whole migration is one transaction: an error after the last revision ran (here, a
    simulated one) rolls back every table copy, the new column and the version record."""
    path = legacy_database(tmp_path / "v3.db")
    before = path.read_bytes()
    real = SessionStore._migrate

    def migrate_then_fail(self, conn, revision, downgrade=False):
        real(self, conn, revision, downgrade)
        raise StoreError("simulated failure after the migration")

    monkeypatch.setattr(SessionStore, "_migrate", migrate_then_fail)
    with pytest.raises(StoreError, match="simulated"):
        SessionStore(path)
    assert path.read_bytes() == before
    monkeypatch.undo()
    with SessionStore(path) as store:
        assert len(store.history("alice")) == 4


# --- downgrade, for developers --------------------------------------------------------------------
def test_downgrading_to_the_baseline_and_back_keeps_the_rows(tmp_path):
    path = legacy_database(tmp_path / "v3.db")
    with SessionStore(path) as store:
        store.create_session("alice", owner="k")
        with pytest.raises(StoreError, match="UNIQUE"):  # refused: two owners have an 'alice'
            with store._migration_connection() as conn:
                store._migrate(conn, "0001", downgrade=True)
        assert store.schema_revision() == HEAD_REVISION
        store.delete_session("alice", owner="k")
        with store._migration_connection() as conn:
            store._migrate(conn, "0001", downgrade=True)
        assert dump(path, "alembic_version") == [("0001",)] and dump(path, "schema_info") == [(1, 3)]
        with pytest.raises(sqlite3.IntegrityError):  # names are unique again, whatever the owner
            with sqlite3.connect(path) as raw:
                raw.execute("INSERT INTO sessions (name, created_at, updated_at, metadata) VALUES "
                            "('alice', '2026-01-01', '2026-01-01', '{}')")
        raw.close()
    assert len(dump(path, "messages")) == 7 and len(dump(path, "feedback")) == 3
    with SessionStore(path) as store:
        assert store.schema_revision() == HEAD_REVISION and len(store.history("alice")) == 4
        assert schema_differences(store) == []


def test_a_command_that_upgrades_a_database_says_so_and_a_new_one_is_quiet(tmp_path, caplog):
    """Older versions cannot open a database once it is migrated: an operator upgrading hears
    of it (it happened in silence); creating a new database is no news."""
    import logging

    path = legacy_database(tmp_path / "v3.db")
    with caplog.at_level(logging.WARNING, logger="chatbot.dialogue.store"):
        SessionStore(path).close()
        SessionStore(tmp_path / "new.db").close()
    [upgraded] = [r.getMessage() for r in caplog.records]
    assert "upgraded" in upgraded and "v3.db" in upgraded and "older chatbot versions cannot open it now" in upgraded
