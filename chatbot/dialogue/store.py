"""Conversation storage: sessions and their messages in any SQLAlchemy database.

The default is a SQLite file in the user's data directory. Every method opens its own ORM
session and returns frozen dataclasses, so one ``SessionStore`` can be shared between threads
and callers never hold ORM objects. Message positions are allocated inside a write transaction
(``BEGIN IMMEDIATE`` on SQLite), so several processes can append to one conversation safely.

The schema is managed by Alembic (``chatbot/dialogue/migrations``): opening a store upgrades
its database to the newest revision, inside one write transaction, so that processes opening a
database together migrate it once. A database is only ever changed when it is empty or carries
this project's schema (an Alembic revision of ours, or the ``schema_info`` marker that versions
before Alembic wrote): another application's database is refused untouched, and so is one newer
than this code. A store opened ``read_only`` never creates or alters anything (SQLite:
``mode=ro``, ``immutable`` where the WAL files cannot be created) but SQLite's own empty
``-wal``/``-shm`` files beside a WAL database nobody else has open, which it cannot remove.

Sessions have an owner: '' for sessions made without one (the library, the CLI), else what the
caller (``chatbot serve``: a hash of the API key) gives. Session names are unique per owner. A
method given ``owner=None`` is not restricted; given a string, it sees only that owner's
sessions, and another owner's session is reported exactly as a missing one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sqlite3
import threading
import time
import unicodedata
import urllib.parse
import weakref
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import yaml
from sqlalchemy import (
    JSON, Boolean, CheckConstraint, DateTime, Float, ForeignKey, Integer, String, Text,
    TypeDecorator, UniqueConstraint, bindparam, create_engine, event, func, insert, inspect, select, text,
)
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, aliased, mapped_column, relationship, sessionmaker
from sqlalchemy.pool import StaticPool

from chatbot.data.text import UNSHOWABLE, unicode_error
# The store's errors live with the others (``chatbot.errors``); importable from here as before.
from chatbot.errors import (  # noqa: F401
    DatabaseCorrupt, DatabaseOutdated, MessageNotFound, SessionExists, SessionNotFound, StoreArgumentError,
    StoreError, first_line,
)
from chatbot.files import user_data_dir
from chatbot.ids import MAX_ID

log = logging.getLogger(__name__)

# The schema's Alembic revisions live in migrations/versions; the newest is HEAD_REVISION (a
# database at it is opened without loading Alembic). 0001: the baseline, the schema of
# schema_info version 3 (2 added the feedback table, 3 a reply's confidence and details);
# 0002: session owners; 0003: SQLite never reuses a session or message id (AUTOINCREMENT).
HEAD_REVISION = "0003"
MIGRATIONS = Path(__file__).with_name("migrations")
# schema_info.version, which chatbot versions from before Alembic read and refuse when it is
# newer than theirs: each revision that they would misread raises it.
SCHEMA_VERSION = 4
LEGACY_VERSION = 3  # the last version written without Alembic; revision 0001 adopts 1 to 3
_OUR_TABLES = frozenset({"schema_info", "sessions", "messages", "feedback", "alembic_version"})
_MIGRATION_LOCK = 0x63686174626F74  # PostgreSQL advisory lock ("chatbot") held while migrating
# Alembic's ``op`` and ``context`` are module globals while it runs: one migration at a time
# per process (taken inside the database's own lock, so never the other way round).
_ALEMBIC_LOCK = threading.Lock()
ROLES = ("user", "bot")
RATINGS = ("good", "bad")
OWNER_MAX = 64  # characters of sessions.owner
DB_ENV = "CHATBOT_DB"
_POSITION_RETRIES = 20  # non-SQLite only: attempts when another writer took the same position


# --- database location -----------------------------------------------------------------------
def default_database_url() -> str:
    """``chatbot.db`` in the user data directory (``chatbot.files.user_data_dir``)."""
    return _sqlite_url(user_data_dir() / "chatbot.db")


def resolve_database_url(url: str | os.PathLike | None) -> str:
    """An explicit URL, else ``$CHATBOT_DB``, else the default file.

    A value without ``://`` (or a ``Path``) is taken as a SQLite file path, so ``--db chats.db`` works.
    """
    chosen = os.fspath(url) if url else os.environ.get(DB_ENV) or default_database_url()
    return chosen if "://" in chosen else _sqlite_url(Path(chosen).expanduser().resolve())


def _sqlite_url(path: Path) -> str:
    # URL.create escapes '?', '%' and the like that a plain f-string would let through.
    return URL.create("sqlite", database=str(path)).render_as_string(hide_password=False)


# --- schema ----------------------------------------------------------------------------------
class UTCDateTime(TypeDecorator):
    """Aware datetimes in, aware UTC datetimes out; stored as naive UTC on every backend."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the store only accepts timezone-aware values")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        return None if value is None else value.replace(tzinfo=timezone.utc)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class SchemaInfo(Base):
    """One row: the schema version the database was written with."""

    __tablename__ = "schema_info"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)


class SessionRow(Base):
    __tablename__ = "sessions"
    # Names are unique per owner; the constraint's index (owner first) also serves the lookups
    # by owner, so owner has no index of its own.
    __table_args__ = (UniqueConstraint("owner", "name", name="uq_sessions_owner_name"),
                      {"sqlite_autoincrement": True})  # a deleted session's id is never given again
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    owner: Mapped[str] = mapped_column(String(OWNER_MAX), nullable=False, default="", server_default=text("''"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=_now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=_now)
    # ``metadata`` is reserved on declarative classes; the column keeps the name.
    meta: Mapped[dict] = mapped_column("metadata", JSON, nullable=False, default=dict)
    # ORM cascade plus ON DELETE CASCADE; passive_deletes lets the database do the work
    # instead of loading every message first.
    messages: Mapped[list["MessageRow"]] = relationship(
        back_populates="session", cascade="all, delete-orphan", passive_deletes=True,
        order_by="MessageRow.position")


class MessageRow(Base):
    __tablename__ = "messages"
    # The unique constraint's index also serves "last N messages of a session" (see
    # tests/test_store.py::test_history_query_uses_index): a second identical index would
    # only slow down writes.
    __table_args__ = (
        UniqueConstraint("session_id", "position", name="uq_messages_session_position"),
        CheckConstraint("role IN ('user', 'bot')", name="ck_messages_role"),
        {"sqlite_autoincrement": True},  # nor a deleted message's (feedback names messages by id)
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False)
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    role: Mapped[str] = mapped_column(String(8), nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=_now)
    model_name: Mapped[str | None] = mapped_column(String(200))
    model_version: Mapped[str | None] = mapped_column(String(100))
    decoding: Mapped[dict | None] = mapped_column(JSON(none_as_null=True))
    score: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    fallback: Mapped[bool | None] = mapped_column(Boolean)
    confidence: Mapped[float | None] = mapped_column(Float)
    details: Mapped[dict | None] = mapped_column(JSON(none_as_null=True))
    # Indexed: without it, deleting a session scans the whole table once per deleted message.
    in_reply_to: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"), index=True)
    session: Mapped[SessionRow] = relationship(back_populates="messages")


class FeedbackRow(Base):
    """A user's verdict on one bot reply: a rating, a better answer, or both (one row per reply)."""

    __tablename__ = "feedback"
    __table_args__ = (CheckConstraint("rating IN ('good', 'bad')", name="ck_feedback_rating"),)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True)
    rating: Mapped[str | None] = mapped_column(String(8))
    correction: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=_now)


def is_session_id(id_or_name: int | str) -> bool:
    """Sessions are named by an int id, a string of ASCII digits (an id), or any other name.
    A bool is neither (``True`` is not session 1)."""
    return (isinstance(id_or_name, int) and not isinstance(id_or_name, bool)) or (
        isinstance(id_or_name, str) and id_or_name.isascii() and id_or_name.isdigit())


# --- prepared statements of the write path ------------------------------------------------------
_messages = MessageRow.__table__
_sessions = SessionRow.__table__
_MESSAGE_SESSION = select(_messages.c.session_id).where(_messages.c.id == bindparam("p_id"))
_SESSION_EXISTS = select(_sessions.c.id).where(_sessions.c.id == bindparam("p_session_id"))
# The session row a message is appended to, locked on server databases (FOR NO KEY UPDATE:
# the messages' foreign key checks still pass) so that appends to one session queue instead of
# racing for a position; SQLite's BEGIN IMMEDIATE already serialises them (and ignores FOR UPDATE).
_LOCK_SESSION = (select(_sessions.c.id).where(_sessions.c.id == bindparam("p_session_id"))
                 .with_for_update(key_share=True))
_LOCK_OWNED_SESSION = (select(_sessions.c.id).where(_sessions.c.id == bindparam("p_session_id"),
                                                    _sessions.c.owner == bindparam("p_owner"))
                       .with_for_update(key_share=True))
_INSERT_MESSAGE = insert(_messages).values(
    position=select(func.coalesce(func.max(_messages.c.position) + 1, 0))
    .where(_messages.c.session_id == bindparam("p_session_id")).scalar_subquery(),
    **{name: bindparam(f"p_{name}", type_=_messages.c[name].type)
       for name in ("session_id", "role", "text", "created_at", "model_name", "model_version",
                    "decoding", "score", "latency_ms", "fallback", "in_reply_to", "confidence", "details")},
).returning(_messages.c.id, _messages.c.position)


# --- records returned to callers ---------------------------------------------------------------
@dataclass(frozen=True)
class SessionInfo:
    id: int
    name: str | None
    created_at: datetime
    updated_at: datetime
    metadata: dict
    message_count: int
    owner: str = ""  # '' for sessions made without an owner (library, CLI, a server without keys)


@dataclass(frozen=True)
class Message:
    id: int
    session_id: int
    position: int
    role: str
    text: str
    created_at: datetime
    model_name: str | None = None
    model_version: str | None = None
    decoding: dict | None = None
    score: float | None = None
    latency_ms: float | None = None
    fallback: bool | None = None
    in_reply_to: int | None = None
    confidence: float | None = None  # the model's 0..1 confidence in the reply
    details: dict | None = None  # {"dialogue": settings in force, "retrieved": what the model was shown}


@dataclass(frozen=True)
class Feedback:
    message_id: int
    rating: str | None
    correction: str | None
    updated_at: datetime


def _session_info(row: SessionRow, count: int, last_message_at: datetime | None) -> SessionInfo:
    # A session's "updated" time is its last message's, read rather than written: appending a
    # message then needs no second statement to touch the session row.
    updated = max(row.updated_at, last_message_at) if last_message_at else row.updated_at
    return SessionInfo(row.id, row.name, row.created_at, updated, dict(row.meta or {}), count, row.owner)


def _message(row: MessageRow) -> Message:
    return Message(row.id, row.session_id, row.position, row.role, row.text, row.created_at,
                   row.model_name, row.model_version, row.decoding, row.score, row.latency_ms,
                   row.fallback, row.in_reply_to, row.confidence, row.details)


def _feedback(row: FeedbackRow) -> Feedback:
    return Feedback(row.message_id, row.rating, row.correction, row.updated_at)


def _one_line(exc: BaseException) -> str:
    """A database error's first line: the driver's own error (``orig``) where SQLAlchemy wraps one."""
    return first_line(getattr(exc, "orig", None) or exc)


# --- the store -------------------------------------------------------------------------------
class SessionStore:
    """Sessions and messages in one database.

    One instance is safe to share between threads; any number of processes may open the same
    database at once, a brand-new one included.

    ``read_only``: never create or change anything (the file, its directory, the schema);
    a SQLite file must exist and is opened ``mode=ro``, so read-only media work. Every write
    method then raises ``StoreError``.
    """

    def __init__(self, url: str | os.PathLike | None = None, busy_timeout_ms: int = 5000,
                 read_only: bool = False):
        given = resolve_database_url(url)
        if "\x00" in str(given) or "%00" in str(given):  # the driver would raise ValueError
            raise StoreError("invalid database URL: it contains a NUL byte")
        try:
            parsed = make_url(given)
        except ArgumentError as exc:
            shown = given.split("@")[-1] if "@" in given else given  # no password in the message
            raise StoreError(f"invalid database URL {shown!r}: {exc}") from None
        self._shown = parsed.render_as_string(hide_password=True)
        self.url = self._shown  # public, so printed and logged: the password stays hidden (***)
        self._sqlite = parsed.get_backend_name() == "sqlite"
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._wal = False  # set once the schema version is known to be ours
        self._closed = False
        self.in_memory = self._sqlite and not _sqlite_file(parsed)
        # The file a SQLite database lives in (None: in memory, a URI, or a server database).
        self.file = (Path(parsed.database).expanduser().absolute()
                     if self._sqlite and not self.in_memory and not parsed.query.get("uri") else None)
        self._file_identity: tuple[int, int] | None = None  # (device, inode) of the file first opened
        # Nothing of an in-memory database outlives the store: there is nothing to protect.
        self.read_only = bool(read_only) and not self.in_memory
        # SQLite has one writer at a time anyway. This process's threads queue on a lock, which
        # waits as long as needed; SQLite's busy handler only polls, and under heavy contention
        # a thread can miss every chance and fail after busy_timeout_ms.
        # An in-memory database is a single shared connection, so reads take the lock too.
        lock = threading.RLock()
        self._write_lock = lock if self._sqlite else contextlib.nullcontext()
        self._read_lock = lock if self.in_memory else contextlib.nullcontext()
        kwargs: dict[str, Any] = {}
        if self.in_memory:
            kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        elif self._sqlite and not parsed.query.get("uri"):  # a file: URI is SQLite's to parse
            parsed = self._prepare_sqlite_file(parsed)
        elif parsed.get_backend_name() == "postgresql":
            # libpq waits for an unreachable host, or for a server cut off mid-query (a network
            # partition), as long as the system's TCP does: minutes, a server thread held all
            # along. Its own timeouts, unless the URL sets them (?connect_timeout=N...).
            kwargs = {"connect_args": {key: value for key, value in POSTGRES_TIMEOUTS.items()
                                       if key not in parsed.query}}
        try:
            self.engine: Engine = create_engine(parsed, **kwargs)
        except (SQLAlchemyError, ImportError) as exc:
            # Hosting providers hand out postgres://..., a name SQLAlchemy does not know.
            hint = ("; a PostgreSQL URL starts postgresql+psycopg://" if parsed.drivername.split("+")[0] == "postgres"
                    else "")
            raise StoreError(f"cannot open database {self._shown}: {_one_line(exc)}{hint}") from exc
        if self._sqlite:
            event.listen(self.engine, "connect", self._on_connect)
            event.listen(self.engine, "begin", self._on_begin)
        _STORES.add(self)  # a forked child must not use the parent's connections (see _after_fork)
        self._writer = self.engine.execution_options(chatbot_write=True)
        self._reads = sessionmaker(bind=self.engine, expire_on_commit=False)
        self._writes = sessionmaker(bind=self._writer, expire_on_commit=False)
        try:
            self._open()
        except BaseException:
            self.engine.dispose()
            raise
        log.debug("opened %s (schema revision %s%s)", self._shown, HEAD_REVISION,
                  ", read-only" if self.read_only else "")

    def _prepare_sqlite_file(self, parsed: URL) -> URL:
        """A file database: its folder is created for writing; for reading, the file must exist
        and is opened as a read-only URI (nothing is created, not even a journal)."""
        path = Path(parsed.database)
        if not self.read_only:
            try:  # conversations are private: a new folder and file only their owner reads
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):  # (SQLite gives its -wal the file's mode)
                    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
                if path == user_data_dir() / "chatbot.db":
                    _make_private(path)
            except OSError as exc:
                raise StoreError(f"cannot open database {self._shown}: {exc.strerror or exc}") from None
            return parsed
        if not path.is_file():
            raise StoreError(f"no database at {path}")
        return parsed.set(database=_read_only_uri(path), query={**parsed.query, "uri": "true"})

    # SQLite connection handling: the documented pysqlite recipe (SQLAlchemy emits BEGIN itself)
    def _on_connect(self, dbapi_connection, _record) -> None:
        if self.file is not None and self._file_identity is None:
            self._file_identity = _identity(self.file)
        dbapi_connection.isolation_level = None  # stop sqlite3 from issuing its own BEGIN
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")  # before anything locks
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            if self._wal:
                cursor.execute("PRAGMA journal_mode=WAL")
        finally:
            cursor.close()

    @staticmethod
    def _on_begin(conn) -> None:
        # IMMEDIATE takes the write lock up front: reading MAX(position) and inserting are then
        # one atomic step, and a reader never has to upgrade to a writer (which fails at once
        # with SQLITE_BUSY instead of waiting).
        immediate = conn.get_execution_options().get("chatbot_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    def _open(self) -> None:
        """Check what the database holds before writing anything, then migrate it to the newest
        revision when it is not there yet.

        The fast path (a database at the newest revision) only reads and never loads Alembic.
        Otherwise the check is repeated and the migration run in one write transaction (SQLite:
        ``BEGIN IMMEDIATE``; PostgreSQL: under an advisory lock), so that processes opening a
        brand-new or older database at once migrate it exactly once. A read-only store only
        checks."""
        with self._session() as s:
            # One snapshot for every statement of the check: under PostgreSQL's default READ
            # COMMITTED each would see the latest commit, and a check that overlapped another
            # process's migration saw its new schema version but not its migration record.
            options = {} if self._sqlite else {"isolation_level": "REPEATABLE READ"}
            schema = self._schema(s.connection(execution_options=options))
        if not schema.current:
            if self.read_only:
                raise self._not_current(schema)
            with self._migration_connection() as conn:
                schema = self._schema(conn)  # another process may have migrated it meanwhile
                if not schema.current:
                    self._migrate(conn, "head")
                    # An operator upgrading should hear of it: older versions cannot open it now.
                    (log.info if schema.empty else log.warning)(
                        "upgraded %s from %s to schema revision %s%s", self._shown, schema, HEAD_REVISION,
                        "" if schema.empty else " (older chatbot versions cannot open it now)")
        if self._sqlite:
            self._switch_to_wal()
            self._wal = True

    def _schema(self, conn: Connection) -> "_Schema":
        """What the database holds: nothing, or our schema at some revision. ``StoreError``
        for another application's database, whatever its table names, and for a schema newer
        than this code: both are left exactly as they are."""
        inspector = inspect(conn)
        present = set(inspector.get_table_names()) | set(inspector.get_view_names())
        if not present:
            return _Schema()

        def columns(table: str) -> set[str]:
            return {c["name"] for c in inspector.get_columns(table)} if table in present else set()

        version = None
        if {"id", "version"} <= columns("schema_info"):
            version = conn.scalar(select(func.max(SchemaInfo.version)))
        revisions: tuple[str, ...] = ()
        if "version_num" in columns("alembic_version"):
            revisions = tuple(sorted(conn.scalars(text("SELECT version_num FROM alembic_version"))))
        known = [r for r in revisions if r == HEAD_REVISION or _known_revision(r)]
        # Ours: a marker, a revision of ours, or only our tables (an interrupted creation).
        ours = (version is not None or bool(known)
                or (present <= _OUR_TABLES and bool(present & {"schema_info", "alembic_version"})))
        if not ours:
            shown = ", ".join(sorted(present)[:5]) + (", ..." if len(present) > 5 else "")
            raise StoreError(f"{self._shown} is not a chatbot database (it has tables {shown} but no "
                             "chatbot schema marker); refusing to change it")
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(f"database {self._shown} has schema version {version}, newer than "
                             f"this chatbot supports ({SCHEMA_VERSION}); upgrade chatbot to open it")
        unknown = sorted(set(revisions) - set(known))
        if unknown:
            raise StoreError(f"database {self._shown} has schema revision {unknown[0]}, newer than "
                             f"this chatbot supports ({HEAD_REVISION}); upgrade chatbot to open it")
        if not revisions and version is not None and version > LEGACY_VERSION:
            raise StoreError(f"database {self._shown} has schema version {version} but no migration "
                             "record (table alembic_version); refusing to change it")
        return _Schema(revisions, version, empty=False)

    def _not_current(self, schema: "_Schema") -> StoreError:
        """Why a read-only store cannot open a database that is not at the newest revision."""
        if schema.empty:
            return StoreError(f"database {self._shown} holds no chatbot data yet (no tables)")
        return DatabaseOutdated(f"database {self._shown} has {schema}, older than this chatbot's (schema "
                                f"revision {HEAD_REVISION}); 'chatbot sessions upgrade' (or any command "
                                "that writes) upgrades it, a read-only one cannot")

    @contextmanager
    def _migration_connection(self) -> Iterator[Connection]:
        """A connection in one write transaction to migrate on.

        SQLite: foreign keys are off while migrating, as Alembic's batch mode needs: it copies
        a table to alter it, and dropping the old ``sessions`` with foreign keys on would
        delete every message (ON DELETE CASCADE). The pragma is a no-op inside a transaction,
        so it is set before ``BEGIN IMMEDIATE``, and set back before the connection returns to
        the pool; ``PRAGMA foreign_key_check`` must find no more dangling references after the
        migration than before it, else everything is rolled back. PostgreSQL: a transaction-
        scoped advisory lock makes concurrent openers wait for the first migration."""
        self._check_usable(write=True)
        with self._write_lock:
            try:
                conn = self._writer.connect()
            except SQLAlchemyError as exc:
                raise StoreError(f"cannot open database {self._shown}: {_one_line(exc)}") from exc
            driver = None
            try:
                if self._sqlite:
                    driver = conn.connection.driver_connection
                    driver.execute("PRAGMA foreign_keys=OFF")
                with conn.begin():
                    if self.engine.dialect.name == "postgresql":
                        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
                    dangling = len(conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()) if driver else 0
                    yield conn
                    if driver is not None:
                        after = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                        if len(after) > dangling:
                            raise StoreError(f"upgrading {self._shown} left {len(after) - dangling} "
                                             "dangling foreign keys; nothing was changed")
            except (SQLAlchemyError, sqlite3.Error) as exc:
                raise StoreError(f"database error ({self._shown}): {_one_line(exc)}") from exc
            finally:
                if driver is not None:
                    try:
                        driver.execute("PRAGMA foreign_keys=ON")
                    except sqlite3.Error:
                        if not self.in_memory:  # its only connection is the database itself
                            conn.invalidate()  # never back into the pool without foreign keys
                conn.close()

    def _migrate(self, conn: Connection, revision: str, downgrade: bool = False) -> None:
        """Alembic's upgrade (or downgrade) to ``revision`` on ``conn``, in its transaction."""
        from alembic import command

        try:
            with _ALEMBIC_LOCK:
                (command.downgrade if downgrade else command.upgrade)(migration_config(conn), revision)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the transaction is rolled back
            raise StoreError(f"cannot migrate database {self._shown} to schema revision "
                             f"{HEAD_REVISION if revision == 'head' else revision}: {_one_line(exc)}") from exc

    def _switch_to_wal(self) -> None:
        """WAL lets readers and a writer work at once. The switch needs every other connection
        out of the way and can fail at once with "database is locked" (SQLite skips the busy
        handler where waiting could deadlock): when several processes open a new file
        together, it is retried until the busy timeout."""
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        delay = 0.005
        while True:
            try:
                raw = self.engine.raw_connection()  # PRAGMA journal_mode cannot run inside BEGIN
                try:
                    raw.driver_connection.execute("PRAGMA journal_mode=WAL").fetchall()
                    return
                finally:
                    raw.close()
            except (sqlite3.OperationalError, SQLAlchemyError) as exc:
                locked = "locked" in str(exc) or "busy" in str(exc)
                if not locked or time.monotonic() >= deadline:
                    raise StoreError(f"cannot open database {self._shown}: {_one_line(exc)}") from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    @contextmanager
    def _session(self, write: bool = False) -> Iterator[Session]:
        """A new ORM session in one transaction, committed on success; DB errors -> StoreError."""
        self._check_usable(write)
        with self._write_lock if write else self._read_lock:
            try:
                with (self._writes if write else self._reads).begin() as session:
                    yield session
            except SQLAlchemyError as exc:
                raise self._failure(exc) from exc

    def _failure(self, exc: Exception) -> StoreError:
        """A database error as the store's: ``DatabaseCorrupt`` for a damaged file, which no
        retry can help (a server answers it 500, not "retry later")."""
        text = _one_line(exc)
        damaged = "database disk image is malformed" in text or "file is not a database" in text
        return (DatabaseCorrupt if damaged else StoreError)(f"database error ({self._shown}): {text}")

    def _check_usable(self, write: bool) -> None:
        if self._closed:
            raise StoreError("the session store is closed")
        if write and self.read_only:
            raise StoreError(f"database {self._shown} was opened read-only: nothing can be written")
        if self._file_identity is not None and _identity(self.file) != self._file_identity:
            # The open connections would go on writing into the deleted file (or the replaced
            # one), and what they acknowledged would be gone at the next start.
            raise StoreError(f"database file {self.file} was deleted or replaced while in use: nothing more is "
                             "read or written; restart to open the file there now")

    def _row(self, s: Session, id_or_name: int | str, lock: bool = False, owner: str | None = None) -> SessionRow:
        """The session with this id (of ``owner``, when given) or this name (among ``owner``'s
        sessions, '' when None); another owner's is ``SessionNotFound`` as a missing one is."""
        _check_owner(owner, optional=True)
        query = select(SessionRow)
        if is_session_id(id_or_name):
            missing = f"no session with id {id_or_name}"
            if _row_id(id_or_name) is None:
                raise SessionNotFound(missing)
            query = query.where(SessionRow.id == _row_id(id_or_name))
            if owner is not None:
                query = query.where(SessionRow.owner == owner)
        elif isinstance(id_or_name, str):
            query = _named(query, id_or_name).where(SessionRow.owner == (owner or ""))
            missing = f"no session named {id_or_name!r}"
        else:
            raise StoreArgumentError(f"a session is named by an id or a name, not {type(id_or_name).__name__}")
        if lock:
            query = query.with_for_update()  # row lock on server databases; SQLite ignores it
        row = s.scalar(query)
        if row is None:
            raise SessionNotFound(missing)
        return row

    @staticmethod
    def _activity(s: Session, session_id: int) -> tuple[int, datetime | None]:
        """Message count and last message time of a session, from its last message alone: the
        positions run 0..n-1, and the (session_id, position) index finds the last one at once
        (count(*) and max(created_at) read every message: 57 ms per reply at 50k of them)."""
        last = s.execute(select(MessageRow.position, MessageRow.created_at)
                         .where(MessageRow.session_id == session_id)
                         .order_by(MessageRow.position.desc()).limit(1)).first()
        return (0, None) if last is None else (last.position + 1, last.created_at)

    # --- sessions ------------------------------------------------------------------------------
    def create_session(self, name: str | None = None, metadata: dict | None = None, *,
                       owner: str = "") -> SessionInfo:
        """A new session of ``owner``; ``SessionExists`` when the owner has a session of that
        name. The unique constraint decides (no read first), so two writers racing for a name
        cannot both win, on SQLite or on any other database."""
        if name is not None:
            _check_session_name(name, new=True)
            name = unicodedata.normalize("NFC", name)
        if metadata is not None and not isinstance(metadata, dict):
            raise StoreArgumentError("session metadata must be a dict")
        _check_plain_json(metadata, "session metadata")
        _check_owner(owner)
        try:
            with self._session(write=True) as s:
                now = _now()
                row = SessionRow(name=name, owner=owner, meta=dict(metadata or {}), created_at=now, updated_at=now)
                s.add(row)
                s.flush()
                return _session_info(row, 0, None)
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError):  # the name is taken
                raise SessionExists(f"session name {name!r} already exists") from exc.__cause__
            raise

    def get_or_create_session(self, name: str, metadata: dict | None = None, *, owner: str = "") -> SessionInfo:
        """``owner``'s session called ``name``, created when there is none: atomic, whoever
        else (thread or process) asks for the same name at the same time. Read first (the
        usual case), else insert; an insert that loses the race for the name reads the winner."""
        _check_session_name(name)
        for _ in range(3):  # the winner of a race for the name may itself be deleted before it is read
            found = self.find_session(name, owner=owner)
            if found is not None:
                return found
            try:
                return self.create_session(name, metadata, owner=owner)
            except SessionExists:
                try:
                    return self.get_session(name, owner=owner)
                except SessionNotFound:
                    continue  # the winner was deleted before it was read: look again
        raise StoreError(f"session {name!r} was created and deleted by others three times while it was looked up")

    def get_session(self, id_or_name: int | str, *, owner: str | None = None) -> SessionInfo:
        """An int or a digit string is an id; anything else is a name, among ``owner``'s
        sessions ('' when None). With an ``owner``, another owner's session is not found."""
        with self._session() as s:
            row = self._row(s, id_or_name, owner=owner)
            return _session_info(row, *self._activity(s, row.id))

    def find_session(self, name: str, *, owner: str = "") -> SessionInfo | None:
        """``owner``'s session called ``name``, or None."""
        if not isinstance(name, str):  # None would match every unnamed session (name IS NULL)
            raise StoreArgumentError(f"a session name must be a string, not {type(name).__name__}")
        _check_owner(owner, optional=True)
        with self._session() as s:
            row = s.scalar(_named(select(SessionRow), name).where(SessionRow.owner == (owner or "")))
            return None if row is None else _session_info(row, *self._activity(s, row.id))

    def list_sessions(self, *, owner: str | None = None) -> list[SessionInfo]:
        """Every session (only ``owner``'s, when given) with its message count, most recently
        updated first."""
        _check_owner(owner, optional=True)
        activity, active = _sessions_activity(owner)
        query = (select(SessionRow, activity.c.n, activity.c.last)
                 .outerjoin(activity, activity.c.session_id == SessionRow.id)
                 .order_by(active.desc(), SessionRow.id.desc()))
        if owner is not None:
            query = query.where(SessionRow.owner == owner)
        with self._session() as s:
            return [_session_info(row, n or 0, last) for row, n, last in s.execute(query)]

    def delete_session(self, id_or_name: int | str, *, owner: str | None = None) -> None:
        with self._session(write=True) as s:
            s.delete(self._row(s, id_or_name, lock=True, owner=owner))

    def prune_sessions(self, before: datetime, *, owner: str | None = None) -> tuple[int, int]:
        """Delete the sessions (only ``owner``'s, when given) last active before ``before``, with
        their messages and feedback: the retention a long-running deployment needs, in one
        transaction. Returns (sessions, messages) deleted. Space comes back with ``compact``."""
        if not isinstance(before, datetime) or before.tzinfo is None:
            raise StoreArgumentError("prune_sessions needs a timezone-aware datetime")
        _check_owner(owner, optional=True)
        activity, active = _sessions_activity(owner)
        query = (select(SessionRow.id, func.coalesce(activity.c.n, 0))
                 .outerjoin(activity, activity.c.session_id == SessionRow.id)
                 .where(active < before))
        if owner is not None:
            query = query.where(SessionRow.owner == owner)
        with self._session(write=True) as s:
            found = s.execute(query).all()
            for start in range(0, len(found), 500):  # bounded IN lists; the database cascades
                s.execute(SessionRow.__table__.delete().where(SessionRow.id.in_([i for i, _ in found[start:start + 500]])))
        return len(found), sum(n for _, n in found)

    def compact(self) -> None:
        """Give the space of deleted rows back to the file system (SQLite: VACUUM, then the
        write-ahead log truncated); a server database reclaims it itself (PostgreSQL's
        autovacuum). Deleting alone leaves the file its size: 6.8 MB with every session gone,
        45 KB after this, in the soak audit."""
        self._check_usable(write=True)
        if not self._sqlite or self.in_memory:
            return
        with self._write_lock:
            try:
                with self._writer.connect() as conn:  # on the driver: VACUUM runs outside a transaction
                    driver = conn.connection.driver_connection
                    driver.execute("VACUUM")
                    driver.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except (SQLAlchemyError, sqlite3.Error) as exc:
                raise StoreError(f"database error ({self._shown}): {_one_line(exc)}") from exc

    # --- messages ------------------------------------------------------------------------------
    def add_message(self, session_id: int | str, role: str, text: str, *,
                    model_name: str | None = None, model_version: str | None = None,
                    decoding: dict | None = None, score: float | None = None,
                    latency_ms: float | None = None, fallback: bool | None = None,
                    in_reply_to: int | None = None, confidence: float | None = None,
                    details: dict | None = None, owner: str | None = None) -> Message:
        """Append a message at the next position and commit; the text is stored verbatim.
        With an ``owner``, the session must be that owner's (checked in the same transaction)."""
        if role not in ROLES:
            raise StoreArgumentError(f"role must be 'user' or 'bot', not {role!r}")
        if not isinstance(text, str):
            raise StoreArgumentError(f"message text must be a str, not {type(text).__name__}")
        _check_unicode(text, "message text")
        _check_owner(owner, optional=True)
        fields = {"model_name": model_name, "model_version": model_version, "decoding": decoding,
                  "score": score, "latency_ms": latency_ms, "fallback": fallback,
                  "in_reply_to": in_reply_to, "confidence": confidence, "details": details}
        if role == "user" and any(v is not None for v in fields.values()):
            given = ", ".join(k for k, v in fields.items() if v is not None)
            raise StoreArgumentError(f"bot fields given for a user message: {given}")
        _check_plain_json(decoding, "a message's decoding", finite=False)  # a config may say -inf
        _check_plain_json(details, "a message's details", finite=False)
        sid = self._session_id(session_id, owner)
        for attempt in range(1, _POSITION_RETRIES + 1):
            try:
                with self._write_connection() as conn:
                    return self._append(conn, sid, role, text, fields, owner)
            except StoreError as exc:
                if isinstance(exc.__cause__, IntegrityError) and not self._exists(sid):
                    raise SessionNotFound(f"no session with id {sid}") from None
                # SQLite serialises writers (BEGIN IMMEDIATE), so only a server database can
                # lose the race for a position; any other integrity error is real.
                raced = isinstance(exc.__cause__, IntegrityError) and not self._sqlite
                if not raced or attempt == _POSITION_RETRIES:
                    raise
                log.debug("position taken in session %s; retrying (%d)", session_id, attempt)
        raise AssertionError("unreachable")

    @contextmanager
    def _write_connection(self) -> Iterator[Connection]:
        """A Core connection in one write transaction: the hot path skips the ORM session."""
        self._check_usable(write=True)
        with self._write_lock:
            try:
                with self._writer.begin() as conn:
                    yield conn
            except SQLAlchemyError as exc:
                raise self._failure(exc) from exc

    def _session_id(self, id_or_name: int | str, owner: str | None = None) -> int:
        if is_session_id(id_or_name):
            sid = _row_id(id_or_name)
            if sid is None:
                raise SessionNotFound(f"no session with id {id_or_name}")
            return sid
        return self.get_session(id_or_name, owner=owner).id

    def _exists(self, session_id: int) -> bool:
        with self._session() as s:
            return s.scalar(select(SessionRow.id).where(SessionRow.id == session_id)) is not None

    def _append(self, conn: Connection, sid: int, role: str, text: str, fields: dict,
                owner: str | None = None) -> Message:
        """One prepared Core INSERT instead of the ORM unit of work: a reply writes twice, both
        on its critical path. The next position is chosen inside the statement, within the
        write transaction; a missing session fails the foreign key (-> SessionNotFound). On a
        server database the session row is locked first: concurrent appends to one session
        wait for each other (each then reads the committed positions), and the position retry
        in ``add_message`` stays a fallback.
        """
        if owner is not None or not self._sqlite:
            found = conn.execute(_LOCK_SESSION if owner is None else _LOCK_OWNED_SESSION,
                                 {"p_session_id": sid, "p_owner": owner}).first()
            if found is None:
                raise SessionNotFound(f"no session with id {sid}")
        reply_to = fields["in_reply_to"]
        if reply_to is not None:
            session_of_reply = (conn.execute(_MESSAGE_SESSION, {"p_id": reply_to}).scalar()
                                if _message_id(reply_to) is not None else None)
            if session_of_reply is None and conn.execute(_SESSION_EXISTS, {"p_session_id": sid}).first() is None:
                raise SessionNotFound(f"no session with id {sid}")  # deleted since the question was stored
            if session_of_reply != sid:
                raise StoreArgumentError(f"in_reply_to={reply_to} is not a message of session {sid}")
        values = {"session_id": sid, "role": role, "text": text, "created_at": _now(), **fields}
        row = conn.execute(_INSERT_MESSAGE, {f"p_{k}": v for k, v in values.items()}).one()
        return Message(id=row.id, position=row.position, **values)

    def history(self, session_id: int | str, last: int | None = None, *, owner: str | None = None) -> list[Message]:
        """The session's messages, oldest first; only the last ``last`` when given."""
        if last is not None and (isinstance(last, bool) or not isinstance(last, int)):
            raise StoreArgumentError(f"last must be an int, not {type(last).__name__}")
        if last is not None and last < 0:
            raise StoreArgumentError(f"last must be >= 0, not {last}")
        if last is not None and last > MAX_ID:
            last = None  # more than any table can hold: all of them
        with self._session() as s:
            return self._messages(s, self._row(s, session_id, owner=owner).id, last)

    def history_page(self, session_id: int | str, *, limit: int = 50, before: int | None = None,
                     owner: str | None = None) -> tuple[list[Message], int | None]:
        """One page of a session's messages, newest pages first: the newest ``limit`` messages
        with an id below ``before`` (all when None), oldest first, and the ``before`` of the
        next older page (None when there are no older messages).

        Within a session ids grow with positions (a message's position is chosen after every
        earlier one was committed), so a ``before`` that is a message of the session is turned
        into its position and the page read from the (session_id, position) index; any other
        int is compared with the ids as it is."""
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise StoreArgumentError(f"limit must be an int, not {type(limit).__name__}")
        if limit < 1:
            raise StoreArgumentError(f"limit must be >= 1, not {limit}")
        if before is not None and (isinstance(before, bool) or not isinstance(before, int)):
            raise StoreArgumentError(f"before must be a message id (an int), not {type(before).__name__}")
        limit = min(limit, MAX_ID - 1)
        if before is not None and before > MAX_ID:
            before = None  # above every id
        with self._session() as s:
            sid = self._row(s, session_id, owner=owner).id
            if before is not None and before < 1:
                return [], None  # no id is that low
            query = select(MessageRow).where(MessageRow.session_id == sid)
            if before is not None:
                position = s.scalar(select(MessageRow.position)
                                    .where(MessageRow.id == before, MessageRow.session_id == sid))
                query = query.where(MessageRow.position < position if position is not None
                                    else MessageRow.id < before)
            rows = s.scalars(query.order_by(MessageRow.position.desc()).limit(limit + 1)).all()
        page = rows[:limit]
        return [_message(r) for r in reversed(page)], (page[-1].id if len(rows) > limit else None)

    def message_session_id(self, message_id: int, *, owner: str | None = None) -> int:
        """The id of the session holding a message (``owner``'s, when given), else
        ``MessageNotFound``."""
        _check_owner(owner, optional=True)
        number = _message_id(message_id)
        query = select(MessageRow.session_id).where(MessageRow.id == number)
        if owner is not None:
            query = query.join(SessionRow, SessionRow.id == MessageRow.session_id).where(SessionRow.owner == owner)
        with self._session() as s:
            sid = None if number is None else s.scalar(query)
        if sid is None:
            raise MessageNotFound(f"no message with id {message_id}")
        return sid

    @staticmethod
    def _messages(s: Session, session_id: int, last: int | None = None) -> list[Message]:
        query = select(MessageRow).where(MessageRow.session_id == session_id)
        if last is None:
            return [_message(r) for r in s.scalars(query.order_by(MessageRow.position))]
        rows = s.scalars(query.order_by(MessageRow.position.desc()).limit(last)).all()
        return [_message(r) for r in reversed(rows)]

    # --- feedback ------------------------------------------------------------------------------
    def set_feedback(self, message_id: int, rating: str | None = None,
                     correction: str | None = None, *, owner: str | None = None) -> Feedback:
        """Rate a bot reply and/or record a better answer; fields left None keep their value,
        except that "good" alone withdraws an earlier correction (the reply stands as it was).
        Not a stored bot reply (or, with an ``owner``, not in that owner's session):
        ``MessageNotFound``."""
        if rating is not None and rating not in RATINGS:
            raise StoreArgumentError(f"rating must be 'good' or 'bad', not {rating!r}")
        if correction is not None and (not isinstance(correction, str) or not correction.strip()):
            raise StoreArgumentError("a correction must be a non-empty string")
        if rating is None and correction is None:
            raise StoreArgumentError("give a rating, a correction or both")
        _check_owner(owner, optional=True)
        try:
            return self._set_feedback(message_id, rating, correction, owner)
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError):  # the reply was deleted under us (PostgreSQL)
                raise MessageNotFound(f"message {message_id} is not a stored bot reply") from exc.__cause__
            raise

    def _set_feedback(self, message_id: int, rating: str | None, correction: str | None,
                      owner: str | None) -> Feedback:
        with self._session(write=True) as s:
            message = s.get(MessageRow, message_id) if _message_id(message_id) is not None else None
            if (message is None or message.role != "bot"
                    or (owner is not None and s.get(SessionRow, message.session_id).owner != owner)):
                raise MessageNotFound(f"message {message_id} is not a stored bot reply")
            row = s.get(FeedbackRow, message_id) or FeedbackRow(message_id=message_id)
            if rating is not None:
                row.rating = rating
            if correction is not None:
                row.correction = correction
            elif rating == "good":  # a later verdict replaces an earlier one: the reply stands as it was
                row.correction = None
            row.updated_at = _now()
            s.add(row)
            s.flush()
            return _feedback(row)

    def get_feedback(self, message_id: int, *, owner: str | None = None) -> Feedback | None:
        """The feedback on a reply; None when there is none (or, with an ``owner``, when the
        reply is not in that owner's session)."""
        _check_owner(owner, optional=True)
        if _message_id(message_id) is None:
            return None
        query = select(FeedbackRow).where(FeedbackRow.message_id == message_id)
        if owner is not None:
            query = (query.join(MessageRow, MessageRow.id == FeedbackRow.message_id)
                     .join(SessionRow, SessionRow.id == MessageRow.session_id).where(SessionRow.owner == owner))
        with self._session() as s:
            row = s.scalar(query)
            return None if row is None else _feedback(row)

    def session_feedback(self, session_id: int | str, *, owner: str | None = None) -> dict[int, Feedback]:
        """The feedback on a session's replies, by message id."""
        with self._session() as s:
            sid = self._row(s, session_id, owner=owner).id
            rows = s.scalars(select(FeedbackRow).join(MessageRow, MessageRow.id == FeedbackRow.message_id)
                             .where(MessageRow.session_id == sid))
            return {r.message_id: _feedback(r) for r in rows}

    def feedback_pairs(self, session_id: int | str | None = None, *,
                       owner: str | None = None) -> list[tuple[str, str]]:
        """(question, answer) pairs to retrain on: a correction replaces the reply, a reply
        rated good stands as it was, a reply rated bad (uncorrected) is left out. Fallback
        replies count only when corrected. Oldest first. Only ``owner``'s sessions, when given."""
        _check_owner(owner, optional=True)
        question = aliased(MessageRow)
        query = (select(question.text, MessageRow.text, MessageRow.fallback, FeedbackRow.rating,
                        FeedbackRow.correction)
                 .join(MessageRow, MessageRow.id == FeedbackRow.message_id)
                 .join(question, question.id == MessageRow.in_reply_to)
                 .order_by(MessageRow.session_id, MessageRow.position))
        if owner is not None:
            query = query.join(SessionRow, SessionRow.id == MessageRow.session_id).where(SessionRow.owner == owner)
        with self._session() as s:
            if session_id is not None:
                query = query.where(MessageRow.session_id == self._row(s, session_id, owner=owner).id)
            rows = s.execute(query).all()
        pairs = []
        for asked, replied, fallback, rating, correction in rows:
            if correction:
                pairs.append((asked, correction))
            elif rating == "good" and not fallback:
                pairs.append((asked, replied))
        return pairs

    def export_feedback(self, session_id: int | str | None = None, format: str = "yaml", *,
                        owner: str | None = None) -> str:
        """``feedback_pairs`` as a trainable corpus: ChatterBot YAML or question/answer JSONL."""
        if format not in ("jsonl", "yaml"):
            raise StoreArgumentError(f"unknown export format {format!r} (expected 'jsonl' or 'yaml')")
        pairs = self.feedback_pairs(session_id, owner=owner)
        if format == "yaml":
            doc = {"categories": ["feedback"], "conversations": [[q, a] for q, a in pairs]}
            return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
        return "".join(_json_line({"question": q, "answer": a}) + "\n" for q, a in pairs)

    # --- export --------------------------------------------------------------------------------
    def export_session(self, session_id: int | str, format: str = "jsonl", *, owner: str | None = None) -> str:
        """``jsonl``: one object per message. ``yaml``: a trainable ChatterBot corpus
        (``chatbot.data.corpus.load_corpus``), each question with the reply the bot stored for it
        as a conversation of its own, without context: the whole session as one conversation read
        as pairs of neighbours, so it trained the bot's replies to be answered by the user's next
        question. Fallback replies (the bot did not know) and questions left without a reply are
        not pairs to learn; ``export_feedback`` gives the pairs people rated or corrected."""
        if format not in ("jsonl", "yaml"):
            raise StoreArgumentError(f"unknown export format {format!r} (expected 'jsonl' or 'yaml')")
        with self._session() as s:  # one snapshot: the session and its messages agree
            session = self._row(s, session_id, owner=owner)
            messages = self._messages(s, session.id)
        if format == "yaml":
            asked = {m.id: m.text for m in messages if m.role == "user"}
            pairs = [[asked[m.in_reply_to], m.text] for m in messages
                     if m.role == "bot" and not m.fallback and m.in_reply_to in asked]
            if not pairs:  # the corpus reader would refuse an empty corpus
                raise StoreArgumentError(f"session {session.name or session.id} has no question with a reply "
                                         "(fallbacks aside): a corpus needs a question and its answer")
            doc = {"categories": [session.name or f"session {session.id}"], "conversations": pairs}
            return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
        lines = []
        for m in messages:
            record = asdict(m)
            del record["session_id"]
            record["created_at"] = m.created_at.isoformat()
            lines.append(_json_line(record))
        return "".join(line + "\n" for line in lines)

    # --- maintenance ---------------------------------------------------------------------------
    def schema_version(self) -> int:
        """``schema_info.version`` (``SCHEMA_VERSION``), the marker versions before Alembic read."""
        with self._session() as s:
            return int(s.scalar(select(func.max(SchemaInfo.version))))

    def schema_revision(self) -> str:
        """The database's Alembic revision (``HEAD_REVISION`` once opened)."""
        with self._session() as s:
            return s.scalar(text("SELECT version_num FROM alembic_version"))

    def integrity_check(self) -> bool:
        """SQLite: ``PRAGMA integrity_check`` is 'ok' and no foreign key is dangling.

        Other databases enforce this themselves: always True.
        """
        if not self._sqlite:
            return True
        with self._session() as s:
            result = [r[0] for r in s.execute(text("PRAGMA integrity_check"))]
            dangling = s.execute(text("PRAGMA foreign_key_check")).fetchall()
        if result != ["ok"] or dangling:
            log.warning("integrity check of %s failed: %s; %d dangling foreign keys",
                        self._shown, "; ".join(map(str, result[:5])), len(dangling))
            return False
        return True

    def close(self) -> None:
        self._closed = True
        self.engine.dispose()

    def holds(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` is this database's file or one SQLite keeps beside it (journal,
        WAL): writing an export there would destroy every stored conversation."""
        if self.file is None:
            return False
        target = Path(path).expanduser().absolute()
        own = {self.file.with_name(self.file.name + suffix) for suffix in ("", "-wal", "-shm", "-journal")}
        return any(target == f or (target.exists() and f.exists() and os.path.samefile(target, f)) for f in own)

    def __enter__(self) -> "SessionStore":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SessionStore({self._shown!r})"


def _check_owner(owner, optional: bool = False) -> None:
    """An owner is a string of at most ``OWNER_MAX`` characters ('' for none); None only
    where it means "any owner"."""
    if owner is None and optional:
        return
    if not isinstance(owner, str) or len(owner) > OWNER_MAX:
        raise StoreArgumentError(f"a session owner must be a string of at most {OWNER_MAX} characters, "
                                 f"not {type(owner).__name__ if not isinstance(owner, str) else f'{len(owner)} characters'}")
    _check_unicode(owner, "a session owner")


def _sessions_activity(owner: str | None):
    """Per session: its message count ``n`` and last message time ``last`` (a subquery, only
    ``owner``'s messages read when given), and when each session was last active (its last
    message, else its own update time) for the outer query that joins it."""
    activity = (select(MessageRow.session_id, func.count(MessageRow.id).label("n"),
                       func.max(MessageRow.created_at).label("last"))
                .group_by(MessageRow.session_id))
    if owner is not None:  # only this owner's messages are read, not every owner's
        activity = activity.join(SessionRow, SessionRow.id == MessageRow.session_id).where(SessionRow.owner == owner)
    activity = activity.subquery()
    return activity, func.coalesce(activity.c.last, SessionRow.updated_at)


def _check_session_name(name, new: bool = False) -> None:
    """A name to look up, or with ``new`` one to give a session: not a path (the HTTP API names
    sessions in URL paths, where a "/" could not reach it)."""
    if not isinstance(name, str) or not name.strip():
        raise StoreArgumentError("a session name must be a non-empty string")
    _check_unicode(name, "session name")
    if is_session_id(name):
        raise StoreArgumentError(f"session name {name!r} is all digits and would read as an id")
    if new and "/" in name:
        raise StoreArgumentError(f"session name {name!r} holds a '/', which the HTTP API's paths could not name")
    if new and name != name.strip():  # "  x  " could not be found again as x, which is what people type
        raise StoreArgumentError(f"session name {name!r} starts or ends with white space")
    if new and UNSHOWABLE.search(name):  # escape codes would run in the terminal of whoever lists sessions
        raise StoreArgumentError(f"session name {name!r} holds a control character")


# Seconds to connect; then dead peers found by TCP keepalives (idle connections) and by data
# left unacknowledged for 15 s (a query's connection), libpq's names and units.
POSTGRES_TIMEOUTS = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                     "keepalives_count": 3, "tcp_user_timeout": 15000}


_STORES: "weakref.WeakSet[SessionStore]" = weakref.WeakSet()


def _after_fork() -> None:
    """In a forked child, every store forgets the connections it inherited without closing
    them (they are the parent's: a child that used one corrupted both ends' conversation with
    PostgreSQL); the child opens its own. SQLAlchemy's recipe for pools across fork."""
    for store in list(_STORES):
        store.engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _make_private(database: Path) -> None:
    """The default database and its folder made private when an older version left them
    readable by others (0644 in 0755: every local user could read every conversation). Only
    the default place: a file given with --db keeps the mode its owner chose."""
    for path, private in ((database.parent, 0o700), (database, 0o600)):
        status = path.stat()
        if hasattr(os, "getuid") and status.st_uid == os.getuid() and status.st_mode & 0o077:
            path.chmod(private)
            log.warning("%s was readable by other users; made private (%o)", path, private)


def _identity(file: Path) -> tuple[int, int] | None:
    """(device, inode) of ``file``; None when it is gone."""
    try:
        status = os.stat(file)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _named(query, name: str):
    """``query`` narrowed to the session called ``name``, however its accents were composed: a
    Mac's keyboard and a Linux one send "Jürgen" as different code points, one name to a person.
    New names are stored NFC; a name stored before that is found as it was typed, first."""
    _check_unicode(name, "session name")
    composed = unicodedata.normalize("NFC", name)
    if composed == name:
        return query.where(SessionRow.name == name)
    return query.where(SessionRow.name.in_([name, composed])).order_by((SessionRow.name == name).desc())


def _check_unicode(text: str, what: str) -> None:
    """Text with no UTF-8 form (a lone surrogate, as a command line's undecodable bytes arrive)
    can be neither stored nor sent back: the caller's mistake, not a database error."""
    problem = unicode_error(text, what)
    if problem is not None:
        raise StoreArgumentError(str(problem))


def _check_plain_json(value, what: str, finite: bool = True) -> None:
    """Stored as JSON, so JSON it must be, and with ``finite`` without NaN or infinity (which
    strict readers, an HTTP response among them, refuse), and UTF-8 (``json.dumps`` escapes a
    lone surrogate, which an HTTP response could then not encode). Refused before the write,
    as the caller's mistake, not as a database error."""
    try:
        json.dumps(value, allow_nan=not finite, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise StoreArgumentError(f"{what} is not valid Unicode: it holds a lone surrogate") from None
    except ValueError:
        raise StoreArgumentError(f"{what} must be plain JSON: NaN and infinity are not JSON numbers") from None
    except TypeError as exc:
        raise StoreArgumentError(f"{what} must be plain JSON ({exc})") from None


def _row_id(value: int | str) -> int | None:
    """An id as an int for a query; None when no row can have it (beyond a 64-bit integer,
    which no database column holds and the driver would refuse with ``OverflowError``)."""
    if isinstance(value, str) and len(value.lstrip("0")) > len(str(MAX_ID)):
        return None  # also spares int() a string of thousands of digits (a ValueError)
    number = int(value)
    return number if -MAX_ID <= number <= MAX_ID else None


def _message_id(value) -> int | None:
    """A message id to look up; None when no row can have it. Not an int: ``StoreArgumentError``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise StoreArgumentError(f"a message id must be an int, not {type(value).__name__}")
    return _row_id(value)


def _read_only_uri(path: Path) -> str:
    """A ``file:`` URI that opens ``path`` read-only. ``immutable`` when the WAL files cannot
    be created beside it (a read-only directory or file system): SQLite then reads the file
    alone, without locks, which is right for media nobody can write to either (a ``-wal`` file
    left there without its ``-shm`` is not read then: its last commits are not seen)."""
    uri = "file:" + urllib.parse.quote(str(path)) + "?mode=ro"
    wal_files = [Path(f"{path}-wal"), Path(f"{path}-shm")]
    if not os.access(path.parent, os.W_OK) and not all(f.exists() for f in wal_files):
        uri += "&immutable=1"
    return uri


@dataclass(frozen=True)
class _Schema:
    """What a database holds: its Alembic revisions and its ``schema_info`` version."""

    revisions: tuple[str, ...] = ()
    version: int | None = None
    empty: bool = True

    @property
    def current(self) -> bool:
        return self.revisions == (HEAD_REVISION,)

    def __str__(self) -> str:
        if self.empty:
            return "no tables"
        if self.revisions:
            return "schema revision " + ", ".join(self.revisions)
        if self.version is not None:
            return f"schema version {self.version}"
        return "an unfinished chatbot schema"


def migration_config(connection: Connection | None = None):
    """An ``alembic.config.Config`` for the store's migrations (no alembic.ini): the package's
    ``migrations`` folder, and ``connection``, the one ``env.py`` migrates on (in its current
    transaction)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.lru_cache(maxsize=1)
def _revision_ids() -> frozenset[str]:
    from alembic.script import ScriptDirectory

    return frozenset(script.revision for script in ScriptDirectory.from_config(migration_config()).walk_revisions())


def _known_revision(revision: str) -> bool:
    """A revision of this code's migrations (exactly: Alembic would also take a prefix)."""
    return revision in _revision_ids()


def _sqlite_file(url: URL) -> bool:
    return bool(url.database) and url.database != ":memory:" and url.query.get("mode") != "memory"


def _json_line(record: dict) -> str:
    """JSON with real unicode, but never a character that ``str.splitlines`` breaks a line at."""
    line = json.dumps(record, ensure_ascii=False)
    for ch in ("\x85", "\u2028", "\u2029"):
        line = line.replace(ch, f"\\u{ord(ch):04x}")
    return line
