"""Row ids as every layer checks them: the store's, the dialogue manager's stateless calls and
the HTTP API's paths and queries agree on what can name a row (a leaf: it loads nothing, so
stateless use never imports SQLAlchemy for it)."""

MAX_ID = 2 ** 63 - 1  # SQLite's (and BIGINT's) largest integer: a larger one names no row
