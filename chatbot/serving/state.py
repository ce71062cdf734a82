"""What every route needs: the bot (once loaded), the decode batcher, keys, limits, metrics."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi import Request, Security
from fastapi.security import HTTPBearer

from chatbot.serving.batching import DecodeBatcher
from chatbot.serving.errors import ApiError
from chatbot.serving.metrics import Metrics
from chatbot.serving.security import KeyRing, RateLimiter
from chatbot.serving.settings import ServerSettings

log = logging.getLogger("chatbot.serving")
READY_WAIT_S = 120.0  # a request that arrives while the model loads waits this long for it
# A database call of the native API (sessions, history, feedback) that has not answered in this
# long is a 503: a database that stopped answering (a frozen server, a partition) must not hold
# the request, or the thread, for ever.
STORE_DEADLINE_S = 15.0
# Starlette runs no lifespan of a mounted app: the host app must run it (docs/SERVING.md).
NOT_STARTED = ("the chatbot app's lifespan has not run, so its model never loads: a host app that mounts it "
               "must run it in its own lifespan (docs/SERVING.md)")


@dataclass
class ServerState:
    settings: ServerSettings
    keys: KeyRing
    limiter: RateLimiter
    metrics: Metrics
    batcher: DecodeBatcher | None = None
    bot: object | None = None  # ChatBot, once loaded
    load_error: str | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    model_name: str = ""
    model_created: int = 0
    model_fingerprint: str = ""
    compiling: asyncio.Task | None = None  # greedy decoding's programs, compiled after ready
    # The native API's database calls run here, not on the decode threads: a database that
    # hangs took every decoder with it, and then the replies that need no database too.
    store_threads: ThreadPoolExecutor | None = None  # made and shut down by the app's lifespan

    async def run_store_call(self, function, *args):
        """``function(*args)`` on a store thread, given up on (503) after ``STORE_DEADLINE_S``;
        it runs in a copy of the caller's context, so what it logs names the request."""
        future = asyncio.get_running_loop().run_in_executor(self.store_threads, contextvars.copy_context().run,
                                                            function, *args)
        try:
            return await asyncio.wait_for(future, STORE_DEADLINE_S)
        except asyncio.TimeoutError:
            log.error("store: the session database did not answer in %g s", STORE_DEADLINE_S)
            raise ApiError(503, "store_unavailable", f"the session database did not answer in "
                                                     f"{STORE_DEADLINE_S:g} s; retry later", {"Retry-After": "5"}) from None

    def count_replies(self, replies) -> None:
        self.metrics.replies.inc(len(replies))
        self.metrics.fallbacks.inc(sum(1 for r in replies if r.fallback))

    async def bot_when_ready(self):
        if self.batcher is None:
            raise ApiError(503, "not_started", NOT_STARTED)
        if not self.ready.is_set():
            try:
                await asyncio.wait_for(self.ready.wait(), READY_WAIT_S)
            except asyncio.TimeoutError:
                raise ApiError(503, "model_loading", "the model is still loading; retry shortly",
                               {"Retry-After": "5"}) from None
        if self.bot is None:
            raise ApiError(503, "model_unavailable", "the model could not be loaded")
        return self.bot


def state_of(request: Request) -> ServerState:
    return request.app.state.chatbot


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


# Declares the bearer scheme in the API's schema (the docs page's "Authorize" button); the key
# itself is read by ``bearer_token``, and a missing one is this app's 401, not FastAPI's 403.
_BEARER = HTTPBearer(auto_error=False, description="one of the server's API keys (--api-key)")


async def owner(request: Request, _: object = Security(_BEARER)) -> str:
    """The caller's owner id (a FastAPI dependency): checks the key, then the rate limit."""
    state = state_of(request)
    found = state.keys.owner(bearer_token(request))
    if found is None:
        # Wrong keys spend their address's budget: guessing keys is throttled as using one is.
        address = request.client.host if request.client else ""
        wait = state.limiter.take(f"no key from {address}")
        if wait > 0:
            raise ApiError(429, "rate_limited", "too many requests without a valid API key; slow down",
                           {"Retry-After": str(max(1, math.ceil(wait)))})
        raise ApiError(401, "invalid_api_key", "a valid API key is required (Authorization: Bearer <key>)",
                       {"WWW-Authenticate": "Bearer"})
    # Per key. Without keys the server listens on loopback only (unless --insecure), where
    # every client has the same address: a per-address limit would throttle them all as one.
    wait = state.limiter.take(found) if state.keys.required else 0.0
    if wait > 0:
        raise ApiError(429, "rate_limited", "too many requests; slow down",
                       {"Retry-After": str(max(1, math.ceil(wait)))})
    return found


def within_limits(decoding: dict, settings: ServerSettings, where: str = "decoding") -> dict:
    """A request's decoding overrides, refused (400) past the server's limits: the work one
    request may ask for is bounded whichever API it comes through."""
    for key, limit in (("max_length", settings.max_tokens), ("beam", settings.max_n), ("n_best", settings.max_n)):
        value = decoding.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            raise ApiError(400, "invalid_request", f"{where}.{key}: at most {limit} on this server")
    return decoding
