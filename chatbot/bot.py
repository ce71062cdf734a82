"""``ChatBot``: the object applications embed. Loads a bundle and answers questions.

Sessions and stored history are added on top of this class by the dialogue manager; the
stateless ``ask`` path is the one the command line's ``chatbot ask`` uses.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from .bundle import Bundle
from .corpus import clean_text
from .errors import BundleError, InputError
from .generator import Generation, Generator

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = PROJECT_ROOT / "models"


def resolve_model_path(model: str | Path | None) -> Path:
    """A path, a name under ``models/``, ``$CHATBOT_MODEL``, or the bundled default."""
    if model is None:
        model = os.environ.get("CHATBOT_MODEL") or MODELS_DIR / "default"
    path = Path(model).expanduser()
    if not path.exists() and not path.is_absolute() and (MODELS_DIR / path).is_dir():
        path = MODELS_DIR / path
    if not path.exists():
        raise BundleError(f"{path}: no such model (give a bundle directory or a name under {MODELS_DIR})")
    return path


class ChatBot:
    def __init__(self, bundle: Bundle, warm_up: bool = True):
        self.bundle = bundle
        self.generator = Generator(bundle.model, bundle.tokenizer, bundle.config.data, bundle.config.decoding)
        if warm_up:
            self.generator.warm_up()

    @classmethod
    def load(cls, model: str | Path | None = None, warm_up: bool = True) -> "ChatBot":
        """Load a bundle (default: ``models/default``); ``model`` may be a path or a name."""
        return cls(Bundle.load(resolve_model_path(model)), warm_up=warm_up)

    @property
    def name(self) -> str:
        return self.bundle.name

    def ask(self, question: str, context: Sequence[str] = ()) -> str:
        """A stateless reply to one question, optionally after some previous turns."""
        return self.generate([question], [context])[0].text

    def generate(self, questions: Sequence[str],
                 contexts: Sequence[Sequence[str]] | None = None,
                 max_length: int | None = None) -> list[Generation]:
        """Replies with scores and latency for many questions, decoded in batches."""
        contexts = contexts or [()] * len(questions)
        turns_per_input = self.bundle.config.data.context_turns
        inputs = []
        for question, context in zip(questions, contexts):
            cleaned = clean_text(question)
            if not cleaned:
                raise InputError("the message is empty")
            recent = [clean_text(t) for t in context][-turns_per_input:] if turns_per_input else []
            inputs.append([t for t in recent if t] + [cleaned])
        return self.generator.generate(inputs, max_length=max_length)

    def close(self) -> None:
        """Release resources (the session store, once attached)."""

    def __enter__(self) -> "ChatBot":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
