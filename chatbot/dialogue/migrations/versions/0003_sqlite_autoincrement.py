"""SQLite never hands out an id twice: AUTOINCREMENT on ``sessions`` and ``messages``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

SQLite gives a new row max(id) + 1, so deleting the newest session let the next session take
its id: a REPL (or an API client) still holding the old id wrote into someone else's
conversation, and a stale message id could rate another reply. With AUTOINCREMENT, SQLite
keeps the highest id ever used (``sqlite_sequence``) and never goes below it. It cannot be added
to a table in place, so both tables are copied (batch mode, foreign keys off, every row and id
kept; the copy takes the highest id in the table as its start). PostgreSQL's sequences never
go back: nothing to do there.
"""
from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("sessions", "messages")


def _copy_with_autoincrement(on: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in TABLES:
        with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": on}):
            pass


def upgrade() -> None:
    _copy_with_autoincrement(True)


def downgrade() -> None:
    _copy_with_autoincrement(False)
