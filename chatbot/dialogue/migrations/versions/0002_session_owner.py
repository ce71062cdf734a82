"""Session owners: ``sessions.owner`` and names unique per owner.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-10

``chatbot serve`` records who made a session (a hash of the API key); sessions made without
keys (the library, the CLI, a server without keys) have the owner ''. Existing sessions get ''.
The unique constraint on ``name`` becomes UNIQUE (owner, name), whose index (owner first) also
serves the lookups by owner. SQLite alters constraints by copying the table (batch mode), with
foreign keys off so that dropping the old table cascades to no message.

``schema_info.version`` becomes 4: a chatbot from before Alembic refuses the database ("newer
than this chatbot supports") instead of reading sessions across owners.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VERSION = 4  # schema_info.version of this schema
# Names the constraints a batch copy reflects unnamed (the baseline's UNIQUE (name) on SQLite).
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}

_marker = sa.table("schema_info", sa.column("version", sa.Integer()))


def _unique_on_name(bind) -> str | None:
    """The unique constraint on ``sessions.name`` to drop: by the name the database gave it
    (PostgreSQL: sessions_name_key), by the batch naming convention's when SQLite reflects it
    unnamed, None when SQLite does not reflect it at all (an inline ``name ... UNIQUE``, which
    the batch copy then leaves out by itself)."""
    for constraint in sa.inspect(bind).get_unique_constraints("sessions"):
        if constraint["column_names"] == ["name"]:
            return constraint.get("name") or "uq_sessions_name"
    return None


def upgrade() -> None:
    old = _unique_on_name(op.get_bind())
    with op.batch_alter_table("sessions", naming_convention=NAMING) as batch:
        batch.add_column(sa.Column("owner", sa.String(length=64), nullable=False, server_default=sa.text("''")))
        if old is not None:
            batch.drop_constraint(old, type_="unique")
        batch.create_unique_constraint("uq_sessions_owner_name", ["owner", "name"])
    op.execute(_marker.update().values(version=VERSION))


def downgrade() -> None:
    """Fails (an integrity error, nothing changed) while two owners have sessions of one name."""
    name = "sessions_name_key" if op.get_bind().dialect.name == "postgresql" else "uq_sessions_name"
    with op.batch_alter_table("sessions", naming_convention=NAMING) as batch:
        batch.drop_constraint("uq_sessions_owner_name", type_="unique")
        batch.drop_column("owner")
        batch.create_unique_constraint(name, ["name"])
    op.execute(_marker.update().values(version=3))
