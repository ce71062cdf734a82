"""Baseline: the schema of chatbot's ``schema_info`` version 3, the last before Alembic.

Revision ID: 0001
Revises:
Create Date: 2026-12-10

On an empty database this creates the whole schema, exactly as ``create_all`` made it before
Alembic (the unique constraint on ``sessions.name`` unnamed, as it was). On a database written
before Alembic (a ``schema_info`` row of version 1, 2 or 3, or our interrupted creation) it
creates only what that version lacked, the way the old in-place upgrade did: version 1 had no
``feedback`` table and no ``messages.confidence`` / ``messages.details``; every row is kept.
``SessionStore`` has already checked that the tables present are ours.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VERSION = 3  # schema_info.version of this schema


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    present = set(inspector.get_table_names())
    if "schema_info" not in present:
        op.create_table(
            "schema_info",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("version", sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
    if "sessions" not in present:
        op.create_table(
            "sessions",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("name", sa.String(length=200), nullable=True),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.Column("updated_at", sa.DateTime(), nullable=False),
            sa.Column("metadata", sa.JSON(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("name"),
        )
    if "messages" not in present:
        op.create_table(
            "messages",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("session_id", sa.Integer(), nullable=False),
            sa.Column("position", sa.Integer(), nullable=False),
            sa.Column("role", sa.String(length=8), nullable=False),
            sa.Column("text", sa.Text(), nullable=False),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.Column("model_name", sa.String(length=200), nullable=True),
            sa.Column("model_version", sa.String(length=100), nullable=True),
            sa.Column("decoding", sa.JSON(), nullable=True),
            sa.Column("score", sa.Float(), nullable=True),
            sa.Column("latency_ms", sa.Float(), nullable=True),
            sa.Column("fallback", sa.Boolean(), nullable=True),
            sa.Column("confidence", sa.Float(), nullable=True),
            sa.Column("details", sa.JSON(), nullable=True),
            sa.Column("in_reply_to", sa.Integer(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("session_id", "position", name="uq_messages_session_position"),
            sa.CheckConstraint("role IN ('user', 'bot')", name="ck_messages_role"),
            sa.ForeignKeyConstraint(["session_id"], ["sessions.id"], ondelete="CASCADE"),
            sa.ForeignKeyConstraint(["in_reply_to"], ["messages.id"], ondelete="SET NULL"),
        )
        op.create_index("ix_messages_in_reply_to", "messages", ["in_reply_to"])
    else:  # version 1: the columns of version 3 were added in place, nullable
        columns = {c["name"] for c in inspector.get_columns("messages")}
        for name, kind in (("confidence", sa.Float()), ("details", sa.JSON())):
            if name not in columns:
                op.add_column("messages", sa.Column(name, kind, nullable=True))
    if "feedback" not in present:
        op.create_table(
            "feedback",
            sa.Column("message_id", sa.Integer(), nullable=False),
            sa.Column("rating", sa.String(length=8), nullable=True),
            sa.Column("correction", sa.Text(), nullable=True),
            sa.Column("updated_at", sa.DateTime(), nullable=False),
            sa.PrimaryKeyConstraint("message_id"),
            sa.CheckConstraint("rating IN ('good', 'bad')", name="ck_feedback_rating"),
            sa.ForeignKeyConstraint(["message_id"], ["messages.id"], ondelete="CASCADE"),
        )
    marker = sa.table("schema_info", sa.column("id", sa.Integer()), sa.column("version", sa.Integer()))
    if bind.execute(sa.select(sa.func.count()).select_from(marker)).scalar():
        op.execute(marker.update().values(version=VERSION))
    else:
        op.execute(marker.insert().values(id=1, version=VERSION))


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_index("ix_messages_in_reply_to", table_name="messages")
    op.drop_table("messages")
    op.drop_table("sessions")
    op.drop_table("schema_info")
