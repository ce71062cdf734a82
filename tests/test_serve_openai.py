"""The official ``openai`` Python client against ``chatbot serve`` on a real loopback port:
plain and streamed completions, a session kept by the server, errors as the client raises them."""

from __future__ import annotations

import pytest

openai = pytest.importorskip("openai", reason="the openai client is part of the test extra")

from live_server import serving  # noqa: E402

KEY = "openai-client-key-0123456789"


@pytest.fixture
def client(bot):
    with serving(bot, api_keys=(KEY,)) as base:
        yield openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)


def test_the_official_client_gets_the_models_replies(client, bot, tiny_pairs):
    question, answer = tiny_pairs[2]
    assert [m.id for m in client.models.list().data] == ["tiny"]
    completion = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": question}])
    assert completion.choices[0].message.content == answer == bot.ask(question)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens > 0 and completion.id.startswith("chatcmpl-")
    assert completion._request_id.startswith("req_")  # the client reads X-Request-ID

    stream = client.chat.completions.create(model="tiny", stream=True, stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": question}])
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert chunks[-1].usage.total_tokens == completion.usage.total_tokens
    assert len({c.id for c in chunks}) == 1


def test_a_session_named_in_a_header_is_kept_by_the_server(client, bot, tiny_pairs):
    for question, _ in tiny_pairs[:2]:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": question}],
                                       extra_headers={"X-Session": "client-session"})
    [session] = bot.store.list_sessions()
    assert session.name == "client-session" and session.message_count == 4


def test_errors_reach_the_client_typed(bot):
    with serving(bot, api_keys=(KEY,)) as base:
        wrong_key = openai.OpenAI(base_url=f"{base}/v1", api_key="not-the-key-at-all", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong_key.models.list()
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
        with pytest.raises(openai.NotFoundError, match="this server has 'tiny'"):
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.BadRequestError, match="max_tokens"):
            client.chat.completions.create(model="tiny", max_tokens=100_000,
                                           messages=[{"role": "user", "content": "hi"}])
