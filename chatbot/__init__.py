"""A conversational chatbot framework on sequence-to-sequence learning (TensorFlow/Keras).

The package mirrors the data flow, each layer importing only those below it (checked by the
import-linter contracts in ``pyproject.toml``)::

    data -> model -> inference -> dialogue -> evaluation -> training -> serving -> cli

with leaf modules (``config``, ``errors``, ``files``, ``ids``, ``version``, ``compile_cache``) under all
of them.
``ChatBot`` (``chatbot.dialogue.bot``) is the object applications embed.
"""

from typing import TYPE_CHECKING

from chatbot.errors import (
    BundleError, ChatbotError, ConfigError, CorpusError, DatabaseCorrupt, DatabaseOutdated, DecodingError,
    EncoderUnavailable, InputError, MessageNotFound, MessageNotStored, PlotError, ReplyNotStored, SessionExists,
    SessionNotFound, StoreArgumentError, StoreError, TokenizerError, TrainingError,
)
from chatbot.version import __version__

if TYPE_CHECKING:  # what a type checker sees; at run time they load on first use (below)
    from chatbot.config import Config
    from chatbot.dialogue.bot import ChatBot, Reply, ReplyRequest
    from chatbot.dialogue.store import Feedback, Message, SessionInfo
    from chatbot.inference.generator import Generation

# What ChatBot's methods return is importable beside it: Generation (generate), SessionInfo
# (sessions, session), Message (history), Feedback (rate, correct).
_LAZY = {"ChatBot": "chatbot.dialogue.bot", "Reply": "chatbot.dialogue.bot", "ReplyRequest": "chatbot.dialogue.bot",
         "Config": "chatbot.config", "Generation": "chatbot.inference.generator",
         "SessionInfo": "chatbot.dialogue.store", "Message": "chatbot.dialogue.store", "Feedback": "chatbot.dialogue.store"}


def __getattr__(name):
    # ChatBot pulls in TensorFlow; load it on first use so `import chatbot` stays light.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'chatbot' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)


__all__ = ["ChatBot", "Reply", "ReplyRequest", "Config", "Generation", "SessionInfo", "Message", "Feedback",
           "ChatbotError", "BundleError", "ConfigError", "CorpusError", "DatabaseCorrupt", "DatabaseOutdated", "DecodingError",
           "EncoderUnavailable", "InputError", "MessageNotFound", "MessageNotStored", "PlotError", "ReplyNotStored",
           "SessionExists", "SessionNotFound", "StoreArgumentError", "StoreError", "TokenizerError", "TrainingError",
           "__version__"]
