"""Typed exceptions. Library code raises these; the interfaces turn them into what their users
read: ``chatbot.cli.main`` into one-line messages and exit codes, ``chatbot.serving.errors`` into
JSON error bodies with HTTP statuses."""

from __future__ import annotations


class ChatbotError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(ChatbotError, ValueError):
    """A configuration key is unknown or its value is invalid."""


class CorpusError(ChatbotError, ValueError):
    """A corpus file cannot be read; names the file and, where known, the line or entry."""

    def __init__(self, file, line: int | None, why: str):
        self.file = str(file)
        self.line = line
        self.why = why
        where = self.file if line is None else f"{self.file}:{line}"
        super().__init__(f"{where}: {why}")


class TokenizerError(ChatbotError, ValueError):
    """A tokenizer cannot be fitted or loaded."""


class BundleError(ChatbotError):
    """A model bundle is missing, corrupt, or from a newer format."""


class EncoderUnavailable(ChatbotError):
    """The sentence encoder of semantic retrieval is not installed or its files are unreadable."""


class TrainingError(ChatbotError):
    """Training cannot start or resume."""


class DecodingError(ChatbotError):
    """A reply could not be generated."""


class InputError(ChatbotError, ValueError):
    """A message cannot be used as input (empty, whitespace only)."""


class StoreError(ChatbotError):
    """The conversation database cannot be opened, read or written."""


class DatabaseCorrupt(StoreError):
    """The database file is damaged ("database disk image is malformed"): retrying cannot help;
    its operator restores it from a copy (``chatbot sessions`` commands fail the same way)."""


class DatabaseOutdated(StoreError):
    """A read-only store was asked to open a database of an older schema revision: a command
    that writes migrates it (``chatbot sessions upgrade``, or any use that stores a message)."""


class StoreArgumentError(StoreError, InputError):
    """An argument the store cannot take (a wrong type, a rating that is not one): the caller's
    mistake, not the database's (a server answers 400, not 503)."""


class SessionNotFound(StoreError, LookupError):
    """No session has the given id or name (or it belongs to another owner)."""


class MessageNotFound(StoreError, LookupError):
    """No stored message (for feedback: no stored bot reply) has the given id, or it is in
    another owner's session."""


class SessionExists(StoreError):
    """A session with this name already exists (``get_or_create_session`` reads it instead)."""


class MessageNotStored(StoreError):
    """``ChatBot.reply`` could not store the user's message (a locked or full database, say), so
    nothing was stored and no reply was made: ``text`` is the message, to send again."""

    def __init__(self, message: str, text: str):
        super().__init__(message)
        self.text = text


class ReplyNotStored(StoreError):
    """A reply was made and the user's message stored, but the reply itself could not be
    stored: ``reply`` is what the bot said (its ``message_id`` is None)."""

    def __init__(self, message: str, reply):
        super().__init__(message)
        self.reply = reply


class PlotError(ChatbotError):
    """A plot cannot be drawn: matplotlib is missing, or there is nothing to plot."""


def first_line(exc: BaseException, default: str | None = None) -> str:
    """An exception's message as one line, for a log line or an error body; without one,
    ``default`` or the exception's type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else (default or type(exc).__name__)
