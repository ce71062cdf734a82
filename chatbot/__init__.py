"""A conversational chatbot framework on sequence-to-sequence learning (TensorFlow/Keras).

The package mirrors the data flow, each layer importing only those below it (checked by the
import-linter contracts in ``pyproject.toml``)::

    data -> model -> inference -> dialogue -> evaluation -> training -> serving -> cli

with leaf modules (``config``, ``errors``, ``files``, ``version``, ``compile_cache``) under all
of them.
``ChatBot`` (``chatbot.dialogue.bot``) is the object applications embed.
"""

from chatbot.errors import (
    BundleError, ChatbotError, ConfigError, CorpusError, DecodingError, InputError, MessageNotStored,
    PlotError, ReplyNotStored, StoreError, TokenizerError, TrainingError,
)
from chatbot.version import __version__


def __getattr__(name):
    # ChatBot pulls in TensorFlow; load it on first use so `import chatbot` stays light.
    if name in ("ChatBot", "ReplyRequest"):
        from chatbot.dialogue import bot
        return getattr(bot, name)
    if name == "Config":
        from chatbot.config import Config
        return Config
    raise AttributeError(f"module 'chatbot' has no attribute {name!r}")


__all__ = ["ChatBot", "ReplyRequest", "Config", "ChatbotError", "BundleError", "ConfigError", "CorpusError",
           "DecodingError", "InputError", "MessageNotStored", "PlotError", "ReplyNotStored", "StoreError",
           "TokenizerError", "TrainingError", "__version__"]
