"""``chatbot serve``'s app: the OpenAI-compatible API, the native REST API, keys, limits,
batching and errors, through FastAPI's TestClient on the tiny model."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from chatbot.serving import schemas
from chatbot.serving.app import create_app
from chatbot.serving.batching import DecodeBatcher
from chatbot.serving.openai_api import words
from chatbot.serving.security import KeyRing, RateLimiter, owner_of
from chatbot.serving.settings import ServerSettings
from chatbot.version import __version__

KEY_A, KEY_B = "key-a-0123456789abcdef", "key-b-0123456789abcdef"


def client_for(bot, **settings) -> TestClient:
    return TestClient(create_app(bot=bot, settings=ServerSettings(**settings), warm_up=False))


@pytest.fixture
def api(bot):
    with client_for(bot) as client:
        yield client


def chat(client, content, headers=None, **fields):
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}], **fields}
    return client.post("/v1/chat/completions", json=body, headers=headers or {})


def stream_events(response) -> list:
    frames = [f for f in response.text.split("\n\n") if f.strip()]
    assert all(f.startswith("data: ") for f in frames)
    assert frames[-1] == "data: [DONE]"
    return [json.loads(f[len("data: "):]) for f in frames[:-1]]


# --- mounted in another app ---------------------------------------------------------------------
def test_an_app_mounted_with_its_lifespan_serves_under_its_prefix(bot, tiny_pairs):
    """docs/SERVING.md's recipe: Starlette runs no lifespan of a mounted app, so the host runs it."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    bot_app = create_app(bot=bot, settings=ServerSettings(), warm_up=False)

    @asynccontextmanager
    async def lifespan(app):
        async with bot_app.router.lifespan_context(bot_app):
            yield

    host = FastAPI(lifespan=lifespan)
    host.mount("/bot", bot_app)
    question, answer = tiny_pairs[0]
    with TestClient(host) as client:
        body = {"model": "tiny", "messages": [{"role": "user", "content": question}]}
        assert client.post("/bot/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"] == answer
        assert client.get("/bot/readyz").json()["status"] == "ready"
        docs = client.get("/bot/docs").text  # the docs page finds its schema and files under the prefix
        assert "'/bot/openapi.json'" in docs and "/bot/docs-assets/swagger-ui.css" in docs
        assert client.get("/bot/openapi.json").json()["info"]["title"] == "chatbot"
        assert client.get("/bot/docs-assets/swagger-ui.css").status_code == 200


def test_an_app_mounted_without_its_lifespan_says_so_at_once(bot):
    from fastapi import FastAPI

    host = FastAPI()
    host.mount("/bot", create_app(bot=bot, settings=ServerSettings(), warm_up=False))
    with TestClient(host) as client:
        ready = client.get("/bot/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "not_started"
        schemas.Readiness.model_validate(ready.json())
        failed = client.get("/bot/api/sessions")
        assert failed.status_code == 503 and failed.json()["error"]["code"] == "not_started"
        assert "lifespan" in failed.json()["error"]["message"]


# --- OpenAI-compatible ------------------------------------------------------------------------
def test_chat_completion_is_the_models_decoded_reply(api, bot, tiny_pairs):
    question, answer = tiny_pairs[2]
    response = chat(api, question)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    [choice] = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": answer, "refusal": None}
    assert choice["finish_reason"] == "stop"
    generated = bot.generate([question])[0]
    assert choice["message"]["content"] == generated.text
    usage = body["usage"]
    # What the model read: the question and the retrieved pairs shown beside it. A system
    # message, which the model does not read, counts nothing.
    assert usage["prompt_tokens"] == generated.input_tokens > bot.count_tokens(question)
    system = [{"role": "system", "content": "You are a helpful assistant. " * 20}, {"role": "user", "content": question}]
    assert api.post("/v1/chat/completions", json={"model": "tiny", "messages": system}).json()["usage"] == usage
    assert usage["completion_tokens"] == generated.tokens
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["chatbot"]["confidence"] == pytest.approx(generated.confidence, abs=1e-3)
    assert body["chatbot"]["session_id"] is None  # stateless: nothing stored
    assert bot.sessions() == []


def test_models_lists_the_served_model_and_other_names_are_404(api):
    assert [m["id"] for m in api.get("/v1/models").json()["data"]] == ["tiny"]
    assert api.get("/v1/models/tiny").json()["object"] == "model"
    wrong = chat(api, "hi", model="gpt-4")
    assert wrong.status_code == 404 and wrong.json()["error"]["code"] == "model_not_found"


def test_streaming_sends_the_same_reply_in_chunks(api, tiny_pairs):
    question, answer = tiny_pairs[0]
    events = stream_events(chat(api, question, stream=True, stream_options={"include_usage": True}))
    ids = {e["id"] for e in events}
    assert len(ids) == 1 and all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == answer
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0
    assert len(events) >= 2 + len(answer.split())  # one chunk per word


def test_a_streamed_reply_in_a_session_names_its_stored_message(api, tiny_pairs):
    """As a whole response does: a streaming client needs the id to send feedback."""
    question, answer = tiny_pairs[0]
    events = stream_events(chat(api, question, headers={"X-Session": "streamed"}, stream=True))
    [extra] = [e["chatbot"] for e in events if "chatbot" in e]
    assert extra["session_id"] is not None and extra["message_id"] is not None
    history = api.get(f"/api/sessions/{extra['session_id']}/messages").json()["messages"]
    assert [(m["id"], m["text"]) for m in history][-1] == (extra["message_id"], answer)
    fingerprint = chat(api, question).json()["system_fingerprint"]
    assert fingerprint and {e["system_fingerprint"] for e in events} == {fingerprint}


def test_n_best_and_seeded_sampling(api, bot, tiny_pairs):
    question = tiny_pairs[1][0]
    beam = chat(api, question, n=3).json()["choices"]
    expected = bot.generate([question], decoding={"beam": 3, "n_best": 3})[0].alternatives
    assert [c["message"]["content"] for c in beam] == [t for t, _ in expected]
    first = chat(api, question, n=2, temperature=1.5, seed=11).json()["choices"]
    again = chat(api, question, n=2, temperature=1.5, seed=11).json()["choices"]
    assert [c["message"]["content"] for c in first] == [c["message"]["content"] for c in again]
    wide = chat(api, question, n=2, temperature=1.5, seed=11 + 2 ** 40)  # OpenAI takes 64-bit seeds
    assert wide.status_code == 200, wide.text
    assert chat(api, question, seed=2 ** 64).status_code == 400


def test_max_tokens_and_stop(api, tiny_pairs):
    question, answer = tiny_pairs[2]  # "Paris is the capital of France."
    cut = chat(api, question, max_tokens=2).json()
    assert cut["choices"][0]["finish_reason"] == "length" and cut["usage"]["completion_tokens"] == 2
    # A reply whose end token is the last one allowed ended on its own: "stop", not "length".
    whole = chat(api, question).json()["usage"]["completion_tokens"]
    exact = chat(api, question, max_tokens=whole).json()["choices"][0]
    assert exact == {**exact, "finish_reason": "stop", "message": {**exact["message"], "content": answer}}
    assert chat(api, question, max_tokens=whole - 1).json()["choices"][0]["finish_reason"] == "length"
    stopped = chat(api, question, stop=[" capital"]).json()
    assert stopped["choices"][0]["message"]["content"] == answer.split(" capital")[0]
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["usage"]["completion_tokens"] < whole  # what was returned is counted, not the whole reply
    # In a session the stored reply would not be the one returned (and would be read as context).
    refused = chat(api, question, headers={"X-Session": "cut"}, stop=[" capital"])
    assert refused.status_code == 400 and "X-Session" in refused.json()["error"]["message"]


@pytest.mark.parametrize("fields, status", [
    ({"tool_choice": "required", "tools": [{"type": "function", "function": {"name": "f"}}]}, 400),
    ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, 400),
    ({"tool_choice": "auto", "tools": [{"type": "function", "function": {"name": "f"}}]}, 200),  # free to answer
    ({"response_format": {"type": "json_object"}}, 400),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "A"}}}, 400),
    ({"response_format": {"type": "text"}}, 200),
    ({"logprobs": True, "top_logprobs": 2}, 400),
    ({"logprobs": False}, 200),
    ({"top_p": 0}, 200),  # the most likely token: greedy (it was refused)
])
def test_what_the_model_cannot_do_is_refused_not_ignored(api, tiny_pairs, fields, status):
    """Plain text where a client asked for a tool call or JSON: LangChain's structured output
    returned None, with no error."""
    response = chat(api, tiny_pairs[0][0], **fields)
    assert response.status_code == status, response.text
    if status == 400:
        assert response.json()["error"]["code"] == "unsupported_parameter"
    else:
        assert response.json()["choices"][0]["message"]["content"] == tiny_pairs[0][1]


def test_a_fallback_is_a_whole_reply_with_its_own_token_count(tiny_bundle_path, tiny_pairs):
    """A fallback replaced a decode cut at max_tokens 3: it came back as "length", counted 3."""
    from chatbot.dialogue.bot import ChatBot

    with ChatBot.load(tiny_bundle_path, db="sqlite://", warm_up=False,
                      dialogue={"min_confidence": 1.0, "fallback_text": "Sorry, say again?"}) as unsure:
        with client_for(unsure) as client:
            body = chat(client, tiny_pairs[2][0], max_tokens=3).json()
            assert body["choices"][0]["message"]["content"] == "Sorry, say again?"
            assert body["choices"][0]["finish_reason"] == "stop"
            assert body["usage"]["completion_tokens"] == unsure.count_tokens("Sorry, say again?") + 1


def test_earlier_turns_are_accepted_as_context(api, tiny_pairs):
    question, answer = tiny_pairs[0]
    messages = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"}, {"role": "function", "name": "f", "content": "42"},
                {"role": "user", "content": [{"type": "text", "text": question}]}]
    response = api.post("/v1/chat/completions", json={"model": "tiny", "messages": messages})
    assert response.json()["choices"][0]["message"]["content"] == answer
    # Several text parts are several pieces of text, not one word across their seam.
    from chatbot.serving.openai_api import ChatMessage

    parts = [{"type": "text", "text": "What is"}, {"type": "image_url"}, {"type": "text", "text": "AI?"}]
    assert ChatMessage(role="user", content=parts).text() == "What is\nAI?"
    image = api.post("/v1/chat/completions", json={"model": "tiny", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]})
    assert image.status_code == 400 and "reads text only (the last message has image_url parts)" in image.text


def test_a_named_session_keeps_the_conversation(api, bot, tiny_pairs):
    for question, _ in tiny_pairs[:2]:
        response = chat(api, question, headers={"X-Session": "support-42"})
        assert response.status_code == 200
    session = bot.find_session("support-42")
    history = bot.history(session.id)
    assert [m.text for m in history] == [tiny_pairs[0][0], tiny_pairs[0][1], tiny_pairs[1][0], tiny_pairs[1][1]]
    assert response.json()["chatbot"]["message_id"] == history[-1].id
    # A name in UTF-8 is the session of that name (read as Latin-1, "Jürgen" was "JÃ¼rgen").
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": tiny_pairs[0][0]}]})
    sent = api.post("/v1/chat/completions", content=body,
                    headers={"content-type": "application/json", "X-Session": "Jürgen".encode()})
    assert sent.status_code == 200 and bot.find_session("Jürgen") is not None


@pytest.mark.parametrize("body, status", [
    (b"{not json", 400),
    (b"\xff\xfe\x00", 400),  # not UTF-8
    (b"[" * 20000 + b"]" * 20000, 400),  # nested too deeply
    (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "\ud800"}]}).encode(), 400),
    (json.dumps({"model": "tiny", "messages": "hello"}).encode(), 400),
    (json.dumps({"model": "tiny", "messages": []}).encode(), 400),
    (json.dumps({"model": "tiny", "messages": [{"role": "assistant", "content": "hi"}]}).encode(), 400),
    (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 99}).encode(), 400),
    (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10 ** 6}).encode(), 400),
    (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * 70000}]}).encode(), 413),
    (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * 30000}]}).encode(), 400),
])
def test_hostile_bodies_get_a_json_4xx_and_store_nothing(api, bot, body, status):
    response = api.post("/v1/chat/completions", content=body,
                        headers={"content-type": "application/json", "X-Session": "victim"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["code"] and "Traceback" not in response.text
    assert bot.sessions() == []


def test_message_length_limit_is_the_dialogue_setting(api, bot):
    limit = bot.dialogue.max_message_chars
    assert limit < 30000  # the case above is over it


# --- native REST API --------------------------------------------------------------------------
def test_sessions_messages_history_and_feedback(api, tiny_pairs):
    created = api.post("/api/sessions", json={"name": "alice", "metadata": {"plan": "pro"}})
    assert created.status_code == 201
    sid = created.json()["id"]
    assert api.post("/api/sessions", json={"name": "alice"}).status_code == 409
    blank = api.post("/api/sessions", json={"name": "   "})  # the caller's mistake, not "database unavailable"
    assert blank.status_code == 400 and blank.json()["error"]["message"] == "a session name must be a non-empty string"
    # Refused before anything is stored: a name no URL path could reach, metadata that is not
    # JSON (NaN, which Python's parser takes, once stored broke every later session list).
    assert api.post("/api/sessions", json={"name": "team/alice"}).status_code == 400
    nan = api.post("/api/sessions", content=b'{"name": "n", "metadata": {"x": NaN}}',
                   headers={"Content-Type": "application/json"})
    assert nan.status_code == 400 and "NaN" in nan.json()["error"]["message"]
    # A lone surrogate in metadata: JSON escapes it, so it once passed, was stored, and every
    # later session list was a 500 (no response could encode it).
    lone = api.post("/api/sessions", content=b'{"name": "s", "metadata": {"k": "\\ud800"}}',
                    headers={"Content-Type": "application/json"})
    assert lone.status_code == 400 and "surrogate" in lone.json()["error"]["message"]
    assert [s["name"] for s in api.get("/api/sessions").json()["sessions"]] == ["alice"]
    # A digit string too long to be an id is no name either: the caller's mistake, not a 503.
    assert chat(api, "hi", headers={"X-Session": "1" * 25}).status_code == 400
    question, answer = tiny_pairs[0]
    reply = api.post(f"/api/sessions/{sid}/messages", json={"text": question}).json()
    assert reply["text"] == answer and reply["session_id"] == sid and 0 < reply["confidence"] <= 1
    assert reply["latency_ms"] > 0 and reply["alternatives"][0]["text"] == answer
    assert api.get("/api/sessions/alice").json()["message_count"] == 2
    page = api.get(f"/api/sessions/{sid}/messages").json()
    assert [m["role"] for m in page["messages"]] == ["user", "bot"] and page["next_before"] is None
    assert page["messages"][1]["id"] == reply["id"] and page["messages"][1]["in_reply_to"] == reply["in_reply_to"]
    # The stored reply's figures as the reply gave them, rounded alike.
    assert {k: page["messages"][1][k] for k in ("score", "confidence")} == {k: reply[k] for k in ("score", "confidence")}
    rated = api.post(f"/api/messages/{reply['id']}/feedback", json={"rating": "good", "correction": "Tiny."})
    assert rated.json()["rating"] == "good" and rated.json()["correction"] == "Tiny."
    assert api.post(f"/api/messages/{reply['in_reply_to']}/feedback", json={"rating": "bad"}).status_code == 404
    stored = api.get(f"/api/sessions/{sid}/messages").json()["messages"][1]["feedback"]
    assert (stored["rating"], stored["correction"]) == ("good", "Tiny.")
    assert [s["name"] for s in api.get("/api/sessions").json()["sessions"]] == ["alice"]
    assert api.delete(f"/api/sessions/{sid}").status_code == 204
    assert api.get(f"/api/sessions/{sid}").status_code == 404
    assert api.get("/api/sessions/../../etc/passwd").status_code == 404
    too_wide = api.post(f"/api/sessions/{sid}/messages", json={"text": "hi", "decoding": {"beam": 64}})
    assert too_wide.status_code == 400 and "beam: at most 8" in too_wide.json()["error"]["message"]


def test_history_pages_cover_every_message_once(api, bot):
    session = bot.new_session()
    for i in range(25):
        bot.store.add_message(session.id, "user", f"m{i}")
    seen, before = [], None
    while True:
        params = {"limit": 10} | ({"before": before} if before else {})
        page = api.get(f"/api/sessions/{session.id}/messages", params=params).json()
        seen = [m["text"] for m in page["messages"]] + seen
        before = page["next_before"]
        if before is None:
            break
    assert seen == [f"m{i}" for i in range(25)]


def test_streamed_native_reply(api, tiny_pairs):
    created = api.post("/api/sessions")  # no body: both its fields are optional
    assert created.status_code == 201
    sid = created.json()["id"]
    response = api.post(f"/api/sessions/{sid}/messages", json={"text": tiny_pairs[3][0], "stream": True})
    frames = [f for f in response.text.split("\n\n") if f.strip()]
    deltas = [json.loads(f.split("data: ", 1)[1])["text"] for f in frames if f.startswith("event: delta")]
    final = json.loads(frames[-1].split("data: ", 1)[1])
    assert frames[-1].startswith("event: reply") and "".join(deltas) == final["text"] == tiny_pairs[3][1]


# --- keys, ownership, limits ------------------------------------------------------------------
def test_keys_are_required_and_each_key_sees_only_its_own_sessions(bot, tiny_pairs):
    a, b = ({"Authorization": f"Bearer {k}"} for k in (KEY_A, KEY_B))
    with client_for(bot, api_keys=(KEY_A, KEY_B)) as client:
        assert client.get("/api/sessions").status_code == 401
        wrong = client.get("/api/sessions", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert chat(client, "hi").status_code == 401
        sid = client.post("/api/sessions", json={"name": "mine"}, headers=a).json()["id"]
        reply = client.post(f"/api/sessions/{sid}/messages", json={"text": tiny_pairs[0][0]}, headers=a).json()
        before = [m.text for m in bot.history(sid)]
        for method, path, body in [
            ("get", f"/api/sessions/{sid}", None), ("get", "/api/sessions/mine", None),
            ("get", f"/api/sessions/{sid}/messages", None), ("delete", f"/api/sessions/{sid}", None),
            ("post", f"/api/sessions/{sid}/messages", {"text": "hello"}),
            ("post", f"/api/messages/{reply['id']}/feedback", {"rating": "bad"}),
        ]:
            response = client.request(method, path, json=body, headers=b)
            assert response.status_code == 404, (method, path)
            assert "mine" not in response.text and tiny_pairs[0][0] not in response.text
        assert client.get("/api/sessions", headers=b).json() == {"sessions": []}
        # B's own "mine" is another session; A's is untouched
        assert chat(client, "hello", headers={**b, "X-Session": "mine"}).status_code == 200
        assert [m.text for m in bot.history(sid)] == before
        assert bot.store.get_session(sid).owner == owner_of(KEY_A)
        assert bot.store.list_sessions()[0].owner == owner_of(KEY_B)
        assert KEY_A not in json.dumps([s.metadata for s in bot.store.list_sessions()])


def test_rate_limit_answers_429_with_retry_after(bot):
    a, b = ({"Authorization": f"Bearer {k}"} for k in (KEY_A, KEY_B))
    with client_for(bot, api_keys=(KEY_A, KEY_B), rate_per_minute=1, rate_burst=2) as client:
        codes = [client.get("/api/sessions", headers=a).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        limited = client.get("/api/sessions", headers=a)
        assert int(limited.headers["retry-after"]) >= 1 and limited.json()["error"]["code"] == "rate_limited"
        assert client.get("/api/sessions", headers=b).status_code == 200  # another key has its own budget
        # Guessing keys is throttled too: wrong keys spend their address's budget.
        wrong = {"Authorization": "Bearer not-a-key-0123456789"}
        assert [client.get("/api/sessions", headers=wrong).status_code for _ in range(3)] == [401, 401, 429]
        assert client.get("/api/sessions", headers=b).status_code == 200


def test_key_ring_and_rate_limiter_units():
    ring = KeyRing((KEY_A,))
    assert ring.owner(KEY_A) == owner_of(KEY_A) and len(owner_of(KEY_A)) == 32 and KEY_A not in owner_of(KEY_A)
    assert ring.owner(KEY_A + "x") is None and ring.owner(None) is None and ring.owner("\udcff") is None
    assert KeyRing(()).owner(None) == ""
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=1, clock=lambda: now[0])
    assert limiter.take("k") == 0 and limiter.take("k") == pytest.approx(1.0)
    now[0] = 1.0
    assert limiter.take("k") == 0 and limiter.take("other") == 0


def test_the_rate_limiter_forgets_clients_whose_buckets_refilled():
    """Each address sending a wrong key is a client: the old prune kept every bucket (none is
    stored full) and ran only on a refused request, so the table grew by one per address, forever."""
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=2, clock=lambda: now[0], prune_at=100)
    for hour in range(1, 4):
        for n in range(150):
            assert limiter.take(f"{hour}:{n}") == 0
        assert len(limiter) <= 200  # pruned on the way, not only on a refusal
        now[0] = hour * 3600.0  # an hour later every bucket has refilled
    limiter.take("busy"), limiter.take("busy")
    assert limiter.take("busy") > 0  # a client still limited is not forgotten by a prune
    for n in range(200):
        limiter.take(f"new:{n}")
    assert limiter.take("busy") > 0 and len(limiter) <= 202


def test_short_keys_and_keys_with_commas_are_refused():
    from chatbot.errors import ConfigError

    with pytest.raises(ConfigError, match="at least 16"):
        ServerSettings(api_keys=("short",))
    # Keys reach the workers comma-separated: "a,b" would serve as two keys, each half of it.
    with pytest.raises(ConfigError, match="with a comma"):
        ServerSettings(api_keys=("team-secret-0001,team-secret-0002",))


def test_responses_match_the_schema_the_api_documents(api, tiny_pairs):
    """The OpenAPI schema's response models (``chatbot.serving.schemas``) describe what the routes
    send: each real response validates, with no key the schema lacks."""

    question = tiny_pairs[0][0]
    stored = schemas.ChatCompletion.model_validate(chat(api, question, headers={"X-Session": "schema"}).json())
    assert stored.chatbot.message_id is not None
    schemas.ChatCompletion.model_validate(chat(api, question, n=2).json())
    schemas.ModelList.model_validate(api.get("/v1/models").json())
    schemas.ModelCard.model_validate(api.get("/v1/models/tiny").json())
    session = schemas.Session.model_validate(api.post("/api/sessions", json={"name": "documented"}).json())
    schemas.SessionList.model_validate(api.get("/api/sessions").json())
    schemas.Session.model_validate(api.get(f"/api/sessions/{session.id}").json())
    reply = schemas.BotReply.model_validate(
        api.post(f"/api/sessions/{session.id}/messages", json={"text": question}).json())
    schemas.Feedback.model_validate(api.post(f"/api/messages/{reply.id}/feedback", json={"rating": "good"}).json())
    page = schemas.MessagePage.model_validate(api.get(f"/api/sessions/{session.id}/messages").json())
    assert [m.role for m in page.messages] == ["user", "bot"] and page.messages[1].feedback.rating == "good"
    schemas.Health.model_validate(api.get("/healthz").json())
    assert schemas.Readiness.model_validate(api.get("/readyz").json()).status == "ready"
    info = schemas.ModelInfo.model_validate(api.get("/api/model").json())
    assert info.name == "tiny" and info.decoding["strategy"]
    documented = api.get("/openapi.json").json()["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]
    assert documented["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletion")


# --- operations ---------------------------------------------------------------------------------
def test_made_up_methods_do_not_add_metric_series(api):
    """The method label came from the client as sent: X0 ... X299 added 300 series for good."""
    for i in range(20):
        api.request(f"X{i}", "/healthz")
    metrics = api.get("/metrics").text
    assert 'method="X' not in metrics
    assert 'chatbot_http_requests_total{method="other",route="/healthz",status="405"} 20.0' in metrics


def test_health_readiness_and_metrics(api, tiny_pairs):
    assert api.get("/healthz").json() == {"status": "ok"}
    chat(api, tiny_pairs[0][0])  # waits for the model
    assert api.get("/readyz").json() == {"status": "ready", "model": "tiny", "compiling": False, "database": "ok"}
    metrics = api.get("/metrics").text
    assert 'chatbot_http_requests_total{method="POST",route="/v1/chat/completions",status="200"} 1.0' in metrics
    assert "chatbot_replies_total 1.0" in metrics and "chatbot_decode_batch_size_count 1.0" in metrics
    # What an operator needs beside the requests: the worker's memory and start time, and what it serves.
    assert "process_resident_memory_bytes " in metrics and "process_start_time_seconds " in metrics
    assert f'chatbot_build_info{{model="tiny",model_created=' in metrics and f'version="{__version__}"' in metrics
    schema = api.get("/openapi.json").json()
    # The schema tells what the server does: bearer keys (the docs page's "Authorize"), and the
    # one error shape at the statuses it sends, not FastAPI's 422 (invalid input is a 400).
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path in ("/v1/chat/completions", "/api/sessions/{session}/messages"):
        responses = schema["paths"][path]["post"]["responses"]
        assert "422" not in responses and {"400", "401", "404", "429"} <= responses.keys()
        assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    docs = api.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    assert api.get("/docs-assets/swagger-ui-bundle.js").status_code == 200


def test_openai_sampling_fields_map_onto_decoding_settings():
    """Temperature 0 is the most likely reply even beside a top_p (clients often send both);
    a top_p alone or a temperature samples; neither leaves the model's own decoding."""
    from chatbot.config import DecodingConfig
    from chatbot.serving.openai_api import ChatCompletionRequest, decoding_for

    def mapped(**fields):
        body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], **fields)
        return decoding_for(body, ServerSettings(), DecodingConfig())

    assert mapped(temperature=0, top_p=0.9) == mapped(temperature=0) == {"strategy": "greedy", "beam": 1, "n_best": 1}
    assert mapped(top_p=0.9)["strategy"] == mapped(temperature=0.7)["strategy"] == "sample"
    assert mapped(temperature=0.7, top_p=0.9)["temperature"] == 0.7 and mapped(top_p=0.9)["temperature"] == 1.0
    assert mapped() == {}


def test_a_server_compiles_greedy_decoding_once_ready_whatever_the_models_own(tiny_bundle_path, monkeypatch):
    """Requests at temperature 0 decode greedily on a model whose own decoding is a beam search:
    once ready, the server compiles greedy decoding's programs for its batches and widths, and
    /readyz and /metrics say so."""
    import time

    import chatbot.serving.app as app_module
    from chatbot.dialogue.bot import ChatBot
    from chatbot.model.bundle import Bundle

    monkeypatch.setattr(app_module, "SERVER_WIDTHS", (16, 32))
    monkeypatch.setattr(app_module, "SERVER_BATCHES", (1, 2))
    with ChatBot(Bundle.load(tiny_bundle_path), db="sqlite://", warm_up=False) as bot:  # its own generator
        bot.generator.decoding = bot.generator.resolve({"strategy": "beam", "beam": 2, "n_best": 2})
        with TestClient(create_app(bot=bot, settings=ServerSettings())) as client:
            assert chat(client, "hi").status_code == 200  # waits for ready
            deadline = time.monotonic() + 120
            while client.get("/readyz").json()["compiling"] and time.monotonic() < deadline:
                time.sleep(0.05)
            greedy = {(batch, width) for batch, width, _ in bot.generator.loops.compiled_shapes}
            assert {(1, 16), (1, 32), (2, 32)} <= greedy
            assert f"chatbot_compiled_programs {float(bot.compiled_programs)}" in client.get("/metrics").text


def test_every_response_carries_a_request_id_that_the_servers_log_lines_name(bot, tiny_pairs, monkeypatch, caplog):
    """X-Request-ID on answers, errors and refusals alike: a proxy's own plain token is kept,
    anything else replaced (it is written into the log); a failed request's log line names it."""
    import logging
    import re

    from chatbot.errors import StoreError

    fresh = re.compile(r"req_[0-9a-f]{32}")
    with client_for(bot, api_keys=(KEY_A,), allowed_hosts=("testserver",)) as client:
        auth = {"Authorization": f"Bearer {KEY_A}"}
        responses = [chat(client, tiny_pairs[0][0], auth), client.get("/healthz"), chat(client, "hi"),
                     client.get("/api/sessions/404", headers=auth), client.get("/healthz", headers={"Host": "evil"})]
        assert [r.status_code for r in responses] == [200, 200, 401, 404, 400]
        ids = [r.headers["x-request-id"] for r in responses]
        assert all(fresh.fullmatch(i) for i in ids) and len(set(ids)) == len(ids)
        kept = client.get("/healthz", headers={"X-Request-ID": "nginx-7f3a:12.5"})
        assert kept.headers["x-request-id"] == "nginx-7f3a:12.5"
        for hostile in ("two words", "x" * 129, "id\u00e9".encode("latin-1"), "", "a\tb"):
            assert fresh.fullmatch(client.get("/healthz", headers={"X-Request-ID": hostile}).headers["x-request-id"])

        from chatbot.serving.request_ids import current_request_id

        seen = []  # what a store thread logs names the request too
        monkeypatch.setattr(bot, "sessions", lambda *a, **k: seen.append(current_request_id()) or [])
        assert client.get("/api/sessions", headers={**auth, "X-Request-ID": "support-ticket-41"}).status_code == 200
        assert seen == ["support-ticket-41"]
        monkeypatch.setattr(bot, "sessions", lambda *a, **k: (_ for _ in ()).throw(StoreError("disk I/O error")))
        with caplog.at_level(logging.ERROR, logger="chatbot.serving"):
            failed = client.get("/api/sessions", headers={**auth, "X-Request-ID": "support-ticket-42"})
        assert failed.status_code == 503 and failed.headers["x-request-id"] == "support-ticket-42"
        assert "store: disk I/O error (request support-ticket-42)" in caplog.text

    # An exception no route maps is answered inside the CORS layer: a page of another origin
    # reads the error and its ID (Starlette's own handler answered outside it: a network error).
    from chatbot.serving.metrics import Metrics

    monkeypatch.setattr(Metrics, "render", lambda self: 1 / 0)
    origin = {"Origin": "https://app.example", "X-Request-ID": "support-ticket-43"}
    with client_for(bot, cors_origins=("https://app.example",)) as client, caplog.at_level(logging.ERROR, "chatbot.serving"):
        broken = client.get("/metrics", headers=origin)
    assert broken.status_code == 500 and broken.json()["error"]["code"] == "internal_error"
    assert broken.headers["x-request-id"] == "support-ticket-43"
    assert broken.headers["access-control-allow-origin"] == "https://app.example"
    assert "X-Request-ID" in broken.headers["access-control-expose-headers"]
    assert "unexpected error (request support-ticket-43)" in caplog.text


def test_dns_rebinding_and_other_sites_cannot_reach_a_server_without_keys(bot):
    """A browser sends any page's requests to loopback: a rebound name (Host) is refused, and
    a page of another origin cannot change anything (CORS hid only the response; the request ran)."""
    hosts = ("localhost", "127.0.0.1", "::1")
    with client_for(bot, allowed_hosts=hosts, cors_origins=("https://app.example",)) as client:
        for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
            assert client.get("/api/sessions", headers={"Host": host}).status_code == 200, host
        for host in ("rebind.attacker.example:8000", "127.0.0.1.attacker.example", ""):
            refused = client.get("/api/sessions", headers={"Host": host})
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_host", host
        local = {"Host": "localhost:8000"}
        evil = client.post("/api/sessions", json={"name": "planted"}, headers={**local, "Origin": "http://evil.example"})
        assert evil.status_code == 403 and evil.json()["error"]["code"] == "cross_origin"
        assert client.delete("/api/sessions/1", headers={**local, "Origin": "null"}).status_code == 403
        assert client.get("/api/sessions", headers=local).json()["sessions"] == []  # nothing was made
        same = client.post("/api/sessions", json={"name": "mine"}, headers={**local, "Origin": "http://localhost:8000"})
        listed = client.post("/api/sessions", json={}, headers={**local, "Origin": "https://app.example"})
        assert same.status_code == 201 and listed.status_code == 201
    with client_for(bot, api_keys=("k" * 16,)) as client:  # a page cannot send the key cross-origin
        keyed = {"Authorization": "Bearer " + "k" * 16, "Origin": "http://elsewhere.example"}
        assert client.post("/api/sessions", json={}, headers=keyed).status_code == 201


def test_the_chat_page_is_not_framed_and_docs_serve_only_their_own_files(api):
    page = api.get("/")
    assert page.status_code == 200 and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    assert api.head("/").status_code == 200 and api.head("/healthz").status_code == 200  # monitors send HEAD
    assert api.get("/docs-assets/swagger-ui.css").status_code == 200
    for name in ("index.html", "oauth2-redirect.html", "..%2Findex.html"):  # Swagger's demo page, and tricks
        assert api.get(f"/docs-assets/{name}").status_code == 404, name


def test_cors_lets_the_configured_origin_in_and_read_retry_after(bot):
    with client_for(bot, cors_origins=("https://app.example",)) as client:
        allowed = client.get("/healthz", headers={"Origin": "https://app.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "retry-after" in allowed.headers["access-control-expose-headers"].lower()  # a 429's wait
        assert "access-control-allow-origin" not in client.get("/healthz", headers={"Origin": "https://evil.example"}).headers


def test_readyz_reports_a_model_that_failed_to_load(tmp_path):
    app = create_app(tmp_path / "missing", "sqlite://", settings=ServerSettings())
    with TestClient(app) as client:
        assert chat(client, "hi").json()["error"]["code"] == "model_unavailable"  # waits for the load
        response = client.get("/readyz")
        assert response.status_code == 503 and response.json()["status"] == "failed"
        schemas.Readiness.model_validate(response.json())
        assert "missing" in response.json()["error"]


def test_a_database_down_at_start_fails_only_what_needs_it(tiny_bundle_path, tiny_pairs):
    """The model loads whatever the database does: stateless replies are answered, session
    requests get a 503 and try the database again (it used to fail the whole load for good)."""
    app = create_app(tiny_bundle_path, "sqlite:////proc/no-such-folder/chat.db", settings=ServerSettings(),
                     warm_up=False)
    with TestClient(app) as client:
        question, answer = tiny_pairs[0]
        assert chat(client, question).json()["choices"][0]["message"]["content"] == answer
        ready = client.get("/readyz")  # ready for stateless requests, and says why sessions fail
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        assert ready.json()["database"] == "unavailable" and "cannot open database" in ready.json()["error"]
        down = client.get("/api/sessions")
        assert down.status_code == 503 and down.json()["error"]["code"] == "store_unavailable"


def test_a_database_that_stops_answering_holds_neither_the_decoders_nor_the_request(bot, tiny_pairs, monkeypatch):
    """A frozen database server (SIGSTOP, a partition) answers nothing: the native API's calls
    took the decode threads and never let go, and then stateless replies hung too. They run on
    threads of their own, and a call unanswered past the deadline is a 503."""
    from chatbot.serving import state as state_module

    monkeypatch.setattr(state_module, "STORE_DEADLINE_S", 1.0)
    frozen = threading.Event()
    monkeypatch.setattr(bot, "sessions", lambda *a, **k: frozen.wait(30) and [])
    question, answer = tiny_pairs[0]
    with client_for(bot, decoders=1) as client, ThreadPoolExecutor(4) as pool:
        stuck = [pool.submit(client.get, "/api/sessions") for _ in range(3)]  # more than the decoders
        time.sleep(0.2)
        assert chat(client, question).json()["choices"][0]["message"]["content"] == answer
        for response in (f.result(10) for f in stuck):
            assert response.status_code == 503 and response.json()["error"]["code"] == "store_unavailable"
            assert "did not answer in 1 s" in response.json()["error"]["message"]
        frozen.set()


def test_session_replies_waiting_on_a_frozen_database_hold_no_decoder(bot, tiny_pairs, monkeypatch):
    """A reply in a session stored its question and its answer on the decode thread: a frozen
    database held every decoder, and stateless replies waited with them. The database steps
    run on the store's threads now, given up on (503) after the deadline."""
    from chatbot.serving import state as state_module

    monkeypatch.setattr(state_module, "STORE_DEADLINE_S", 1.0)
    frozen = threading.Event()
    add_message = bot.store.add_message
    monkeypatch.setattr(bot.store, "add_message", lambda *a, **k: frozen.wait(120) and add_message(*a, **k))
    session = bot.new_session("s").id
    question, answer = tiny_pairs[0]
    with client_for(bot, decoders=1) as client, ThreadPoolExecutor(4) as pool:
        stuck = [pool.submit(client.post, f"/api/sessions/{session}/messages", json={"text": question})
                 for _ in range(3)]
        time.sleep(0.2)
        stateless = pool.submit(chat, client, question)  # answered while the database stays frozen
        assert stateless.result(60).json()["choices"][0]["message"]["content"] == answer
        for response in (f.result(10) for f in stuck):
            assert response.status_code == 503 and response.json()["error"]["code"] == "store_unavailable"
        frozen.set()


def test_a_second_lifespan_loads_afresh_and_never_answers_with_the_closed_bot(tiny_bundle_path, tmp_path):
    """A host app that runs the lifespan again (or a test client used twice): the closed bot of
    the first run answered stateless requests and /readyz called it ready."""
    import shutil

    model = tmp_path / "tiny"  # the name chat() asks for
    shutil.copytree(tiny_bundle_path, model)
    app = create_app(model, f"sqlite:///{tmp_path / 'chat.db'}", settings=ServerSettings(), warm_up=False)
    with TestClient(app) as client:
        assert chat(client, "hi").status_code == 200  # waits for the load
        assert client.get("/readyz").status_code == 200
    shutil.rmtree(model)  # the second load fails
    with TestClient(app) as client:
        assert chat(client, "hi").json()["error"]["code"] == "model_unavailable"
        assert client.get("/readyz").json()["status"] == "failed"


def test_a_database_damaged_in_place_is_not_a_retry_later(tiny_bundle_path, tiny_pairs, tmp_path):
    """Pages overwritten under a running server: every request was a 503 "retry later" and each
    retry stored nothing; a damaged file is a 500 naming it, and stateless replies go on."""
    import os

    db = tmp_path / "chat.db"
    app = create_app(tiny_bundle_path, f"sqlite:///{db}", settings=ServerSettings(), warm_up=False)
    question, answer = tiny_pairs[0]
    with TestClient(app) as client:
        session = client.post("/api/sessions", json={"name": "s"}).json()["id"]
        for _ in range(60):  # pages of messages to damage
            assert client.post(f"/api/sessions/{session}/messages", json={"text": "x" * 400}).status_code == 200
        with open(db, "r+b") as file:
            file.seek(2 * 4096)
            file.write(os.urandom(db.stat().st_size - 2 * 4096))
        damaged = client.get(f"/api/sessions/{session}/messages")
        assert damaged.status_code == 500 and damaged.json()["error"]["code"] == "database_corrupt"
        assert "Retry-After" not in damaged.headers
        assert chat(client, question).json()["choices"][0]["message"]["content"] == answer


def test_a_reply_made_but_not_stored_is_not_a_retry_later(bot, tiny_pairs, monkeypatch):
    """Retrying stored the user's message twice: the message was stored, the reply not."""
    from chatbot.errors import StoreError

    add_message = bot.store.add_message

    def replies_fail(session_id, role, text, **kwargs):
        if role == "bot":
            raise StoreError("database error: disk I/O error")
        return add_message(session_id, role, text, **kwargs)

    session = bot.new_session("s").id
    monkeypatch.setattr(bot.store, "add_message", replies_fail)
    with client_for(bot) as client:
        response = client.post(f"/api/sessions/{session}/messages", json={"text": tiny_pairs[0][0]})
    body = response.json()["error"]
    assert response.status_code == 500 and body["code"] == "reply_not_stored"
    assert "Retry-After" not in response.headers
    [stored] = bot.history(session)
    assert f"your message was stored (message {stored.id}): do not send it again" in body["message"]


def test_requests_arriving_during_a_decode_join_the_next_one():
    sizes, release = [], threading.Event()

    def reply_many(requests, keep):
        sizes.append(len(requests))
        release.wait(5)
        return [f"reply to {r}" for r in requests]

    async def scenario():
        batcher = DecodeBatcher(reply_many, max_batch=8, wait_ms=0)
        batcher.start()
        first = asyncio.create_task(batcher.submit(["q0"]))
        await asyncio.sleep(0.05)  # q0's decode is running
        rest = [asyncio.create_task(batcher.submit([f"q{i}"])) for i in range(1, 11)]
        await asyncio.sleep(0.05)
        samples = asyncio.create_task(batcher.submit([f"s{i}" for i in range(7)]))  # one request, seven samples
        await asyncio.sleep(0.05)
        release.set()
        results = await asyncio.gather(first, *rest, samples)
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert [r[0] for r in results[:11]] == [f"reply to q{i}" for i in range(11)]
    assert results[11] == [f"reply to s{i}" for i in range(7)]
    # q1..q10 waited together, at most max_batch at once; the samples did not fit beside q9, q10
    assert sizes == [1, 8, 2, 7]


def test_a_request_to_an_idle_server_does_not_wait_for_company():
    """``wait_ms`` is how long a request waits for others to join its decode, but only under
    load (another decode runs, or the last batch had company): one client's requests, one after
    another, would wait for nothing."""
    sizes = []

    def reply_many(requests, keep):
        sizes.append(len(requests))
        return [f"reply to {r}" for r in requests]

    async def scenario():
        batcher = DecodeBatcher(reply_many, max_batch=8, wait_ms=60_000)  # a minute: never reached
        batcher.start()
        replies = [await asyncio.wait_for(batcher.submit([f"q{i}"]), timeout=5) for i in range(3)]
        await batcher.stop()
        return replies

    assert asyncio.run(scenario()) == [["reply to q0"], ["reply to q1"], ["reply to q2"]]
    assert sizes == [1, 1, 1]


def test_with_two_decoders_two_batches_are_decoded_at_once():
    both_decoding = threading.Barrier(2, timeout=5)  # passed only while two batches decode together
    sizes = []

    def reply_many(requests, keep):
        sizes.append(len(requests))
        both_decoding.wait()
        return [f"reply to {r}" for r in requests]

    async def scenario():
        batcher = DecodeBatcher(reply_many, max_batch=8, wait_ms=0, decoders=2)
        batcher.start()
        first = asyncio.create_task(batcher.submit(["q0"]))
        await asyncio.sleep(0.05)  # q0's decode is running, and waits for a second one
        second = asyncio.create_task(batcher.submit(["q1", "q2"]))
        results = await asyncio.gather(first, second)
        await batcher.stop()
        return results

    assert asyncio.run(scenario()) == [["reply to q0"], ["reply to q1", "reply to q2"]]
    assert sizes == [1, 2]


def test_concurrent_clients_get_their_own_replies(bot, tiny_pairs):
    with client_for(bot, batch_wait_ms=20) as client:
        out = {}

        def ask(i):
            question = tiny_pairs[i % 5][0]
            out[i] = (question, chat(client, question).json()["choices"][0]["message"]["content"])

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(10)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        answers = dict(tiny_pairs)
        assert all(reply == answers[q] for q, reply in out.values()) and len(out) == 10
        metrics = client.get("/metrics").text
        count = float(metrics.split("chatbot_decode_batch_size_count ")[1].split()[0])
        assert count < 10  # some requests were decoded together


def test_words_rejoin_exactly():
    for text in ["", "one", "two words", "  lead and  double  spaces ", "line\nbreak\n\ncode  x", "我非常喜欢猫。 ok 東京"]:
        assert "".join(words(text, 1)) == text and "".join(words(text, 3)) == text
    assert words("我非常喜欢猫。", 1) == ["我", "非", "常", "喜", "欢", "猫。"]  # it came as one chunk
