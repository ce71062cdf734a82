"""Alembic's environment for the conversation store.

Migrations run only on a connection handed over by ``SessionStore`` (``config.attributes
["connection"]``), already inside the store's write transaction: on SQLite ``BEGIN IMMEDIATE``
with foreign keys switched off (batch mode copies tables, and dropping the old ``sessions``
with foreign keys on would cascade to every message), on PostgreSQL holding an advisory lock,
so that workers opening one database together migrate it once. ``SessionStore`` upgrades a
database when it opens it; nothing else needs to run migrations.

A new revision, from a database at the current head (``--autogenerate`` compares it with
``chatbot.dialogue.store.Base.metadata``)::

    from alembic import command
    from chatbot.dialogue.store import SessionStore, migration_config
    with SessionStore("sqlite:///dev.db") as store, store.engine.connect() as conn:
        command.revision(migration_config(conn), "what changes", autogenerate=True, rev_id="0004")

with the id after ``HEAD_REVISION`` (in store.py), then set ``HEAD_REVISION`` to it (tests/test_migrations.py checks it).
"""

from alembic import context

from chatbot.dialogue.store import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("chatbot's migrations run on a connection given in config.attributes['connection'] "
                       "(chatbot.dialogue.store.migration_config); SessionStore upgrades a database on open")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite alters constraints by copying the table
    compare_type=True,
    compare_server_default=True,
)
with context.begin_transaction():  # the store's transaction: nothing is committed here
    context.run_migrations()
