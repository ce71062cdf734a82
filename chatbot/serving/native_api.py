"""The native REST API over the dialogue manager: sessions, messages (with score, confidence,
latency, alternatives and what retrieval showed the model), history pages and feedback.

A caller sees only its own sessions: with API keys each key owns the sessions made with it,
and another key's session is answered exactly like a missing one (404)."""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from chatbot.dialogue.bot import ReplyRequest, retrieved_json
from chatbot.errors import SessionExists
from chatbot.ids import MAX_ID
from chatbot.serving.errors import ERROR_RESPONSES, ApiError, from_library
from chatbot.serving.schemas import BotReply, Feedback, MessagePage, Session, SessionList, documented
from chatbot.serving.openai_api import session_ref, words
from chatbot.serving.state import owner, state_of, within_limits

router = APIRouter(prefix="/api", tags=["sessions"], responses=ERROR_RESPONSES)


class NewSession(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=200)
    metadata: dict[str, Any] = Field(default_factory=dict)


class NewMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    decoding: dict[str, Any] | None = None  # e.g. {"beam": 5, "n_best": 3}, as ask --set
    stream: bool = False


class NewFeedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rating: Literal["good", "bad"] | None = None
    correction: str | None = None


def session_json(info) -> dict:
    return {"id": info.id, "name": info.name, "created_at": info.created_at.isoformat(),
            "updated_at": info.updated_at.isoformat(), "message_count": info.message_count,
            "metadata": info.metadata}


def feedback_json(feedback) -> dict | None:
    if feedback is None:
        return None
    return {"message_id": feedback.message_id, "rating": feedback.rating, "correction": feedback.correction,
            "updated_at": feedback.updated_at.isoformat()}


def message_json(message, feedback=None) -> dict:
    out = {"id": message.id, "session_id": message.session_id, "position": message.position,
           "role": message.role, "text": message.text, "created_at": message.created_at.isoformat()}
    if message.role == "bot":
        out.update(score=_rounded(message.score, 4), confidence=_rounded(message.confidence, 4),
                   fallback=message.fallback, latency_ms=_rounded(message.latency_ms, 2), in_reply_to=message.in_reply_to,
                   retrieved=(message.details or {}).get("retrieved", []), feedback=feedback_json(feedback))
    return out


def _rounded(value: float | None, digits: int) -> float | None:
    """As a reply's figures are rounded (a stored message may lack them: None)."""
    return None if value is None else round(value, digits)


def reply_json(reply) -> dict:
    return {"id": reply.message_id, "session_id": reply.session_id, "in_reply_to": reply.user_message_id,
            "text": reply.text, "score": round(reply.score, 4), "confidence": round(reply.confidence, 4),
            "fallback": reply.fallback, "latency_ms": round(reply.latency_ms, 2),
            "alternatives": [{"text": t, "score": round(s, 4)} for t, s in reply.alternatives],
            "retrieved": retrieved_json(reply.retrieved), "read_as": reply.read_as}


async def _call(request: Request, call):
    """``call(bot)`` off the event loop, on a store thread, errors mapped: the store's work
    goes through ``ChatBot``, the one door to it."""
    state = state_of(request)
    bot = await state.bot_when_ready()
    try:
        return await state.run_store_call(call, bot)
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise from_library(exc) from None


@router.post("/sessions", status_code=201, responses=documented(Session, 201))
async def create_session(request: Request, body: NewSession | None = None, who: str = Depends(owner)):
    body = body or NewSession()  # both fields are optional, so the body is too
    # Plain JSON it must be (no NaN): the store refuses it, a 400 (StoreArgumentError).
    if len(json.dumps(body.metadata)) > 4096:
        raise ApiError(400, "invalid_request", "metadata: at most 4096 characters of JSON")
    if body.name is not None and body.name.isascii() and body.name.isdigit():
        raise ApiError(400, "invalid_request", "name: a session name must not be a number (ids are)")

    def create(bot):
        try:
            return bot.new_session(body.name, body.metadata, owner=who)
        except SessionExists:
            raise ApiError(409, "session_exists", "a session with this name exists") from None
    return session_json(await _call(request, create))


@router.get("/sessions", responses=documented(SessionList))
async def list_sessions(request: Request, who: str = Depends(owner)):
    return {"sessions": [session_json(s) for s in await _call(request, lambda bot: bot.sessions(owner=who))]}


@router.get("/sessions/{session}", responses=documented(Session))
async def get_session(session: str, request: Request, who: str = Depends(owner)):
    return session_json(await _call(request, lambda bot: bot.session(session_ref(session), False, owner=who)))


@router.delete("/sessions/{session}", status_code=204)
async def delete_session(session: str, request: Request, who: str = Depends(owner)):
    await _call(request, lambda bot: bot.delete_session(session_ref(session), owner=who))
    return Response(status_code=204)


@router.get("/sessions/{session}/messages", responses=documented(MessagePage))
async def history(session: str, request: Request, who: str = Depends(owner),
                  limit: int = Query(50, ge=1), before: int | None = Query(None, ge=1, le=MAX_ID)):
    state = state_of(request)
    limit = min(limit, state.settings.page_limit)
    messages, next_before, feedback = await _call(
        request, lambda bot: bot.history_page(session_ref(session), limit, before, owner=who))
    return {"messages": [message_json(m, feedback.get(m.id)) for m in messages], "next_before": next_before}


@router.post("/sessions/{session}/messages", responses=documented(BotReply))
async def post_message(session: str, body: NewMessage, request: Request, who: str = Depends(owner)):
    state = state_of(request)
    within_limits(body.decoding or {}, state.settings)
    info = await _call(request, lambda bot: bot.session(session_ref(session), False, owner=who))
    (reply,) = await state.batcher.submit(
        [ReplyRequest(body.text, session=info.id, decoding=body.decoding, owner=who, sample=0)])
    if isinstance(reply, Exception):
        raise from_library(reply)
    state.count_replies([reply])
    out = reply_json(reply)
    if not body.stream:
        return out

    async def events():
        for piece in words(reply.text, state.settings.stream_chunk_words):
            yield f"event: delta\ndata: {json.dumps({'text': piece}, ensure_ascii=False)}\n\n"
        yield f"event: reply\ndata: {json.dumps(out, ensure_ascii=False)}\n\n"
    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/messages/{message_id}/feedback", responses=documented(Feedback))
async def feedback(message_id: int, body: NewFeedback, request: Request, who: str = Depends(owner)):
    if body.rating is None and body.correction is None:
        raise ApiError(400, "invalid_request", "give a rating, a correction or both")
    if message_id > MAX_ID:
        raise ApiError(404, "message_not_found", "no such bot reply")
    saved = await _call(request, lambda bot: bot.give_feedback(message_id, body.rating, body.correction, owner=who))
    return feedback_json(saved)
