"""A conversational chatbot framework on sequence-to-sequence learning (TensorFlow/Keras)."""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    BundleError, ChatbotError, ConfigError, CorpusError, DecodingError, InputError, MessageNotStored,
    PlotError, ReplyNotStored, StoreError, TokenizerError, TrainingError,
)


def __getattr__(name):
    # ChatBot pulls in TensorFlow; load it on first use so `import chatbot` stays light.
    if name == "ChatBot":
        from .bot import ChatBot
        return ChatBot
    if name == "Config":
        from .config import Config
        return Config
    raise AttributeError(f"module 'chatbot' has no attribute {name!r}")


__all__ = ["ChatBot", "Config", "ChatbotError", "BundleError", "ConfigError", "CorpusError",
           "DecodingError", "InputError", "MessageNotStored", "PlotError", "ReplyNotStored", "StoreError",
           "TokenizerError", "TrainingError", "__version__"]
