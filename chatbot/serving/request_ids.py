"""Request IDs: every response carries ``X-Request-ID``, and the server's log lines about a
request name it, so an operator finds what a client's failed request did (the ``openai``
client reads the header as ``_request_id``).

A proxy's own ID (nginx's ``$request_id``) is kept when it is a plain token; any other value
is replaced, so a client cannot write arbitrary text into the logs."""

from __future__ import annotations

import contextvars
import logging
import re
import uuid

HEADER = "X-Request-ID"
_GIVEN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_CURRENT: contextvars.ContextVar[str] = contextvars.ContextVar("chatbot_request_id", default="")


def current_request_id() -> str:
    """The ID of the request being handled ("" outside one); its ``asyncio.to_thread`` calls
    and store calls (``ServerState.run_store_call``) run in a copy of its context and see it
    too; a decode thread, which decodes many requests at once, does not."""
    return _CURRENT.get()


def _request_id(scope) -> str:
    for name, value in scope.get("headers") or ():
        if name == b"x-request-id":
            given = value.decode("latin-1")
            if _GIVEN.fullmatch(given):
                return given
            break
    return f"req_{uuid.uuid4().hex}"


class _NamesTheRequest(logging.Filter):
    """Ends each line the server logs while a request is handled with ``(request ID)``."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = current_request_id()
        if request_id:
            record.msg = f"{record.msg} (request {request_id})"  # a plain token: no % to format
        return True


_NAMES_THE_REQUEST = _NamesTheRequest()


class RequestIds:
    """ASGI middleware, outermost, so that every response has the header, refusals included;
    the server's log lines (logger ``chatbot.serving``) about a request then name it."""

    def __init__(self, app):
        self.app = app
        logging.getLogger("chatbot.serving").addFilter(_NAMES_THE_REQUEST)  # once, whatever the apps

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = _request_id(scope)
        header = (HEADER.lower().encode(), request_id.encode())

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        # Set, not reset afterwards: an exception raised outside ``LimitAndMeasure`` reaches
        # Starlette's outermost handler (``errors.install``'s ``unexpected``) after this call, and
        # its log line and response must still name the request. Each request sets its own first.
        _CURRENT.set(request_id)
        await self.app(scope, receive, send_with_id)
