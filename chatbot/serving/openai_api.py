"""OpenAI-compatible chat completions: ``POST /v1/chat/completions``, ``GET /v1/models``.

The last user message is the input; earlier user and assistant turns are its context
(``system`` messages are accepted and ignored: the model has no instructions to follow).
With an ``X-Session`` header (a session name or id) the server keeps the conversation itself:
the context comes from the stored history and both turns are stored. The reply is decoded in
one call (a few milliseconds); ``stream`` then sends it as chunks, as the official API does."""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from chatbot.data.text import CJK_CHARACTER
from chatbot.dialogue.bot import ReplyRequest, retrieved_json
from chatbot.serving.errors import ERROR_RESPONSES, ApiError, from_library
from chatbot.serving.schemas import ChatCompletion, ModelCard, ModelList, documented
from chatbot.serving.state import owner, state_of, within_limits

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"], responses=ERROR_RESPONSES)
SESSION_HEADER = "x-session"


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            # Parts are separate pieces of text ("What is" and "AI?" were read as "What isAI?").
            return "\n".join(part.text for part in self.content if part.type == "text" and part.text)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields of OpenAI's request this server uses; others are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)  # 0: the most likely token, greedy
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=-(2 ** 63), le=2 ** 64 - 1)  # OpenAI takes 64-bit seeds
    stop: str | list[str] | None = None
    user: str | None = None
    # Asked for and not supported: refused, since a client would parse plain text as what it
    # asked for (LangChain's structured output returned None). ``tools`` alone, or with
    # tool_choice "auto" or "none", leaves the model free to answer in text, as it does.
    tool_choice: str | dict | None = None
    response_format: dict | None = None
    logprobs: bool | None = None


def decoding_for(body: ChatCompletionRequest, settings, model_decoding) -> dict:
    """OpenAI's sampling fields as the model's decoding settings. No temperature and no top_p:
    the model's own settings (greedy by default); temperature 0: greedy (top_p aside); otherwise
    sampling.
    ``n`` > 1 without sampling takes the n best of a beam search."""
    if isinstance(body.tool_choice, dict) or body.tool_choice == "required":
        raise ApiError(400, "unsupported_parameter", "tool_choice: this model cannot call tools")
    if body.response_format and body.response_format.get("type") not in (None, "text"):
        raise ApiError(400, "unsupported_parameter", "response_format: this model replies in plain text only")
    if body.logprobs:
        raise ApiError(400, "unsupported_parameter", "logprobs: this server does not return them")
    if body.n > settings.max_n:
        raise ApiError(400, "invalid_request", f"n: at most {settings.max_n}")
    decoding: dict = {}
    limit = body.max_completion_tokens or body.max_tokens
    if limit is not None:
        if limit > settings.max_tokens:
            raise ApiError(400, "invalid_request", f"max_tokens: at most {settings.max_tokens} on this server")
        decoding["max_length"] = limit
    # Temperature 0 asks for the most likely reply whatever top_p says (clients often send both).
    sampling = (body.temperature != 0 and body.top_p != 0
                and (bool(body.temperature) or (body.top_p is not None and body.top_p < 1)))
    if sampling:
        decoding.update(strategy="sample", beam=1, n_best=1, temperature=body.temperature or 1.0,
                        top_p=body.top_p if body.top_p is not None else 1.0)
    elif body.temperature == 0 or body.top_p == 0:
        decoding.update(strategy="greedy", beam=1, n_best=1)
    if body.seed is not None:  # the decode loops take 31-bit seeds: a wider one is folded into them
        decoding["seed"] = body.seed % 2 ** 31
    if body.n > 1 and not sampling:
        decoding.update(strategy="beam", beam=max(body.n, model_decoding.beam), n_best=body.n)
    return within_limits(decoding, settings)


def _cut_at_stop(text: str, stop) -> tuple[str, bool]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _choice_of(reply, bot) -> tuple[str, bool, int]:
    """(text, ended, tokens) of a reply: a fallback's text was not decoded, so its decode's
    token count and end do not apply to it (it came back as "length" after max_tokens 3)."""
    if reply.fallback:
        return reply.text, True, bot.count_tokens(reply.text) + 1
    return reply.text, reply.ended, reply.tokens


def _choices(body, replies, bot) -> list[tuple[str, str, int]]:
    """(text, finish_reason, completion tokens) per choice: "length" for a reply cut at the
    limit, not for one that reached its end token on the last step it had."""
    limit = body.max_completion_tokens or body.max_tokens or bot.decoding.max_length
    if len(replies) == 1 and body.n > 1:  # n best of one beam search
        reply = replies[0]
        choices = [_choice_of(reply, bot)]
        for text, _ in reply.alternatives[1:body.n]:  # their ids are not kept: counted again, [END] too
            counted = bot.count_tokens(text) + 1
            choices.append((text, counted <= limit, min(counted, limit)))
    else:
        choices = [_choice_of(r, bot) for r in replies]
    out = []
    for text, ended, tokens in choices:
        text, stopped = _cut_at_stop(text, body.stop)
        if stopped:  # what is returned is counted, as OpenAI does
            tokens = min(tokens, bot.count_tokens(text))
        out.append((text, "stop" if ended or stopped else "length", tokens))
    return out


@router.get("/models", responses=documented(ModelList))
async def list_models(request: Request, _: str = Depends(owner)):
    state = state_of(request)
    await state.bot_when_ready()
    return {"object": "list", "data": [_model_card(state)]}


@router.get("/models/{model_id}", responses=documented(ModelCard))
async def get_model(model_id: str, request: Request, _: str = Depends(owner)):
    state = state_of(request)
    await state.bot_when_ready()
    if model_id != state.model_name:
        raise ApiError(404, "model_not_found", f"no model {model_id!r}; this server has {state.model_name!r}")
    return _model_card(state)


def _model_card(state) -> dict:
    return {"id": state.model_name, "object": "model", "created": state.model_created, "owned_by": "chatbot"}


@router.post("/chat/completions", responses=documented(ChatCompletion))
async def chat_completions(body: ChatCompletionRequest, request: Request, who: str = Depends(owner)):
    state = state_of(request)
    settings = state.settings
    bot = await state.bot_when_ready()
    if body.model != state.model_name:
        raise ApiError(404, "model_not_found",
                       f"no model {body.model!r}; this server has {state.model_name!r}")
    if len(body.messages) > settings.max_messages:
        raise ApiError(400, "invalid_request", f"messages: at most {settings.max_messages}")
    if body.messages[-1].role != "user":
        raise ApiError(400, "invalid_request", "messages: the last message must be the user's")
    decoding = decoding_for(body, settings, bot.decoding)
    question = body.messages[-1].text()
    parts = body.messages[-1].content
    if not question and isinstance(parts, list) and parts:  # "the message is empty" said nothing useful
        raise ApiError(400, "unsupported_parameter", "messages: this model reads text only "
                                                     f"(the last message has {', '.join(sorted({p.type for p in parts}))} parts)")
    session = _header_text(request.headers.get(SESSION_HEADER))
    sampled_choices = body.n if decoding.get("strategy") == "sample" else 1
    if session is not None:
        if body.stop:  # the session would keep, and read as context, a reply the client never saw
            raise ApiError(400, "invalid_request", "stop cannot be used with X-Session: the stored reply would "
                                                   "differ from the one returned")
        if sampled_choices > 1:
            raise ApiError(400, "invalid_request", "n > 1 with sampling cannot be stored in a session")
        # A new name is created only once the message and settings pass (in ``reply_many``).
        requests = [ReplyRequest(question, session=session_ref(session), decoding=decoding, owner=who,
                                 create=True, sample=0)]
    else:
        context = [m.text() for m in body.messages[:-1] if m.role in ("user", "assistant")]
        # Each choice its own sample of the seed: a request samples the same replies in any batch.
        requests = [ReplyRequest(question, decoding=decoding, context=context, store=False, sample=i)
                    for i in range(sampled_choices)]
    replies = await state.batcher.submit(requests)
    for reply in replies:
        if isinstance(reply, Exception):
            raise from_library(reply)
    state.count_replies(replies)
    choices = _choices(body, replies, bot)
    prompt_tokens = replies[0].input_tokens  # what the model read: question, context, retrieved pairs
    completion_tokens = sum(tokens for _, _, tokens in choices)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    first = replies[0]
    extra = {"session_id": first.session_id, "message_id": first.message_id, "score": round(first.score, 4),
             "confidence": round(first.confidence, 4), "fallback": first.fallback,
             "latency_ms": round(first.latency_ms, 2), "retrieved": retrieved_json(first.retrieved)}
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _stream(completion_id, created, state.model_name, state.model_fingerprint, choices,
                    usage if include_usage else None, extra, settings.stream_chunk_words),
            media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return JSONResponse({
        "id": completion_id, "object": "chat.completion", "created": created, "model": state.model_name,
        "system_fingerprint": state.model_fingerprint,
        "choices": [{"index": i, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": reason} for i, (text, reason, _) in enumerate(choices)],
        "usage": usage, "chatbot": extra})


def session_ref(value: str) -> int | str:
    """A session named by a header or a path segment: an id (ASCII digits) or a name."""
    if not value.strip() or len(value) > 200:
        raise ApiError(400, "invalid_request", "session: a name of 1 to 200 characters, or an id")
    return int(value) if value.isascii() and value.isdigit() and len(value) < 19 else value


def words(text: str, per_chunk: int) -> list[str]:
    """``text`` cut into chunks of ``per_chunk`` words, each with the space before it, so that
    joining the chunks gives the text back exactly. A Chinese or Japanese character counts as a
    word (those scripts put no space between words: a reply came as one chunk)."""
    pieces, start, count = [], 0, 0
    for i, ch in enumerate(text):
        if i > 0 and not text[i - 1].isspace() and (ch.isspace() or CJK_CHARACTER.match(ch)):
            count += 1
            if count == per_chunk:
                pieces.append(text[start:i])
                start, count = i, 0
    pieces.append(text[start:])
    return [p for p in pieces if p]


def _event(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _stream(completion_id, created, model, fingerprint, choices, usage, extra, per_chunk):
    """OpenAI's chunks; the last choice's closing chunk carries the ``chatbot`` object as a
    whole response does (the stored message's id, which feedback needs)."""
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": fingerprint}
    for index, (text, reason, _) in enumerate(choices):
        yield _event({**base, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                           "logprobs": None, "finish_reason": None}]})
        for piece in words(text, per_chunk):
            yield _event({**base, "choices": [{"index": index, "delta": {"content": piece},
                                               "logprobs": None, "finish_reason": None}]})
        closing = {**base, "choices": [{"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}]}
        yield _event({**closing, "chatbot": extra} if index == len(choices) - 1 else closing)
    if usage is not None:
        yield _event({**base, "choices": [], "usage": usage})
    yield "data: [DONE]\n\n"


def _header_text(value: str | None) -> str | None:
    """A header as the client wrote it: HTTP hands it over as Latin-1, and a client sends a
    name such as "Jürgen" as UTF-8, which read as Latin-1 made another session ("JÃ¼rgen")."""
    if value is None:
        return None
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:  # (encode) not from the wire; (decode) really Latin-1
        return value
