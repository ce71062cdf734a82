"""API keys and rate limits.

A key is never stored or logged: the store and the logs see only its *owner id*, a hash of
it. Each key owns the sessions made with it and sees no other (the store filters by owner)."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from urllib.parse import urlsplit

from starlette.datastructures import Headers

from chatbot.serving.errors import error_response

ANONYMOUS = ""  # the owner of sessions made without keys (library, CLI, a server without keys)


def owner_of(key: str) -> str:
    """The id a key's sessions are stored under: 32 hex digits of SHA-256, not the key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


class KeyRing:
    def __init__(self, keys: tuple[str, ...]):
        self._keys = [(k.encode("utf-8"), owner_of(k)) for k in keys]

    @property
    def required(self) -> bool:
        return bool(self._keys)

    def owner(self, presented: str | None) -> str | None:
        """The owner id of a presented key, or None when it matches no key. Every key is
        compared, in constant time, whichever matches: the time says nothing about the keys."""
        if not self._keys:
            return ANONYMOUS
        given = (presented or "").encode("utf-8", "surrogateescape")
        found = None
        for key, owner in self._keys:
            if hmac.compare_digest(given, key):
                found = owner
        return found


class RateLimiter:
    """A token bucket per client: ``burst`` requests at once, then ``per_minute``. Clients are
    API keys, or addresses for requests without a valid key, so the table is pruned: once it
    holds ``prune_at`` clients, buckets that have refilled by now (the default for a new client
    anyway) are forgotten, and the next prune waits until the table has doubled."""

    def __init__(self, per_minute: float, burst: int, clock=time.monotonic, prune_at: int = 100_000):
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when)
        self._lock = threading.Lock()
        self._least_prune_at = self._prune_at = prune_at

    def take(self, client: str) -> float:
        """0 when the request may go ahead, else the seconds until it may."""
        with self._lock:
            now = self.clock()
            if len(self._buckets) >= self._prune_at:
                self._buckets = {c: (t, w) for c, (t, w) in self._buckets.items()
                                 if t + (now - w) * self.rate < self.burst}
                self._prune_at = max(self._least_prune_at, 2 * len(self._buckets))
            tokens, when = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - when) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def __len__(self) -> int:
        """Clients tracked."""
        return len(self._buckets)


# --- what a web page on another site could make the browser do ---------------------------------
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def host_name(host: str) -> str:
    """The name in a Host header, without its port: ``[::1]:8000`` is ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


class BrowserGuard:
    """ASGI middleware against other web sites: a server without keys trusts whoever reaches it,
    and a browser reaches loopback for any page it shows.

    * ``allowed_hosts`` (when given): a Host header naming another server is refused (400), so a
      page whose own name was rebound to 127.0.0.1 (DNS rebinding) cannot read the sessions.
    * Without keys, a request that changes something (POST, DELETE...) from a page of another
      origin is refused (403) unless that origin is one of ``cors_origins``: CORS only hides the
      response from such a page, the request itself would run. With keys there is nothing to
      guard: a page cannot send the key cross-origin without CORS' leave.
    * Every response says ``X-Content-Type-Options: nosniff``."""

    def __init__(self, app, *, allowed_hosts: tuple[str, ...], cors_origins: tuple[str, ...], keys_required: bool):
        self.app = app
        self.hosts = frozenset(host_name(h) for h in allowed_hosts)
        self.origins = frozenset(cors_origins)
        self.keyless = not keys_required

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        origin = headers.get("origin")
        refusal = None
        if self.hosts and host_name(host) not in self.hosts:
            refusal = error_response(400, "invalid_host", f"this server does not answer to the host {host!r} "
                                                          "(chatbot serve --allowed-host adds a name)")
        elif (self.keyless and origin is not None and scope["method"] not in SAFE_METHODS
              and not self._trusted(origin, host)):
            refusal = error_response(403, "cross_origin", f"a request from a page of {origin!r} may not change "
                                                          "anything here (chatbot serve --cors-origin allows an origin)")
        if refusal is not None:
            return await refusal(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _trusted(self, origin: str, host: str) -> bool:
        return origin in self.origins or "*" in self.origins or urlsplit(origin).netloc.lower() == host.strip().lower()
