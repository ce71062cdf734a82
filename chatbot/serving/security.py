"""API keys and rate limits.

A key is never stored or logged: the store and the logs see only its *owner id*, a hash of
it. Each key owns the sessions made with it and sees no other (the store filters by owner)."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time

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
    """A token bucket per client: ``burst`` requests at once, then ``per_minute``."""

    def __init__(self, per_minute: float, burst: int, clock=time.monotonic):
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """0 when the request may go ahead, else the seconds until it may."""
        with self._lock:
            now = self.clock()
            tokens, when = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - when) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                return 0.0
            self._buckets[client] = (tokens, now)
            if len(self._buckets) > 100_000:  # forget full buckets: they are the default anyway
                self._buckets = {c: v for c, v in self._buckets.items() if v[0] < self.burst}
            return (1.0 - tokens) / self.rate
