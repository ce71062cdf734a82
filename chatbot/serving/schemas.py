"""What the API's successful responses hold, for its OpenAPI schema (the docs page, generated
clients). The routes build their JSON themselves, so these models only describe it; a test
validates real responses against them (``extra="forbid"``), so the two cannot drift apart."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Retrieved(_Strict):
    """A training pair retrieval showed the model beside the question."""
    question: str
    answer: str
    similarity: float


# --- OpenAI-compatible ------------------------------------------------------------------------
class AssistantMessage(_Strict):
    role: Literal["assistant"]
    content: str
    refusal: None = None


class Choice(_Strict):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class Usage(_Strict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ReplyDetails(_Strict):
    """The ``chatbot`` object: what the reply was made from, and where it was stored."""
    session_id: int | None
    message_id: int | None
    score: float
    confidence: float
    fallback: bool
    latency_ms: float
    retrieved: list[Retrieved]


class ChatCompletion(_Strict):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[Choice]
    usage: Usage
    chatbot: ReplyDetails


class ModelCard(_Strict):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(_Strict):
    object: Literal["list"]
    data: list[ModelCard]


# --- native -----------------------------------------------------------------------------------
class Session(_Strict):
    id: int
    name: str | None
    created_at: str
    updated_at: str
    message_count: int
    metadata: dict[str, Any]


class SessionList(_Strict):
    sessions: list[Session]


class Feedback(_Strict):
    message_id: int
    rating: Literal["good", "bad"] | None
    correction: str | None
    updated_at: str


class Message(_Strict):
    """A stored turn; a bot reply also has the fields after ``created_at``."""
    id: int
    session_id: int
    position: int
    role: Literal["user", "bot"]
    text: str
    created_at: str
    score: float | None = None
    confidence: float | None = None
    fallback: bool | None = None
    latency_ms: float | None = None
    in_reply_to: int | None = None
    retrieved: list[Retrieved] | None = None
    feedback: Feedback | None = None


class MessagePage(_Strict):
    messages: list[Message]
    next_before: int | None  # ask again with ?before=this for the page before; None: no more


class Alternative(_Strict):
    text: str
    score: float


class BotReply(_Strict):
    id: int | None
    session_id: int | None
    in_reply_to: int | None
    text: str
    score: float
    confidence: float
    fallback: bool
    latency_ms: float
    alternatives: list[Alternative]
    retrieved: list[Retrieved]
    read_as: str


# --- operations -------------------------------------------------------------------------------
class Health(_Strict):
    status: Literal["ok"]


class Readiness(_Strict):
    """``/readyz``: 200 with ``ready`` (``compiling``: greedy decoding's programs are still being
    compiled beside requests; ``database``: whether the session database answers now, with
    ``error`` when not); 503 with ``loading``, ``failed`` or ``not_started`` and ``error``."""
    status: Literal["ready", "loading", "failed", "not_started"]
    model: str | None = None
    compiling: bool | None = None
    database: Literal["ok", "unavailable"] | None = None
    error: str | None = None


class ModelInfo(_Strict):
    name: str
    created: str | None
    chatbot_version: str
    decoding: dict[str, Any]  # the model's decoding settings (the ``[decoding]`` config section)
    max_message_chars: int  # a longer message is refused (``dialogue.max_message_chars``)
    auth: bool  # whether requests need an API key


def documented(model: type[BaseModel], status: int = 200, description: str | None = None) -> dict:
    """A route's ``responses=`` entry for a status it answers with ``model``."""
    return {status: {"model": model, **({"description": description} if description else {})}}
