"""The server's own settings: keys, limits and batching (the model's settings stay in its bundle)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from chatbot.errors import ConfigError

KEYS_VARIABLE = "CHATBOT_API_KEYS"  # comma-separated, beside or instead of --api-key


def keys_from_environment() -> tuple[str, ...]:
    return tuple(k.strip() for k in os.environ.get(KEYS_VARIABLE, "").split(",") if k.strip())


@dataclass(frozen=True)
class ServerSettings:
    api_keys: tuple[str, ...] = ()  # none: no authentication (loopback only, unless insecure)
    max_body_bytes: int = 64 * 1024  # a request body over this is refused (413) before parsing
    max_messages: int = 256  # messages in one chat completion request
    max_tokens: int = 512  # the most a request may ask to generate (max_tokens)
    max_n: int = 8  # the most choices per chat completion
    page_limit: int = 200  # the most messages per history page
    rate_per_minute: float = 600.0  # requests per API key (no limit without keys: loopback only)
    rate_burst: int = 60  # requests a key may send at once before the rate applies
    max_batch: int = 8  # requests decoded together at most (see decoding.XLA_MAX_BATCH)
    batch_wait_ms: float = 2.0  # how long a decode waits for more requests to join it
    decoders: int = 0  # decodes at once; 0: one per TensorFlow thread of the worker (its cores)
    stream_chunk_words: int = 1  # words per streamed chunk
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    allowed_hosts: tuple[str, ...] = field(default_factory=tuple)  # Host header names; none: any

    def __post_init__(self):
        for name in ("max_body_bytes", "max_messages", "max_tokens", "max_n", "page_limit", "rate_burst",
                     "max_batch", "stream_chunk_words"):
            if getattr(self, name) < 1:
                raise ConfigError(f"server setting {name} must be at least 1, not {getattr(self, name)}")
        if self.rate_per_minute <= 0 or self.batch_wait_ms < 0 or self.decoders < 0:
            raise ConfigError("server settings rate_per_minute must be > 0, batch_wait_ms and decoders >= 0")
        for key in self.api_keys:
            # No comma either: keys travel to the workers, and in CHATBOT_API_KEYS, comma-separated,
            # where "a,b" would become two keys, each half of the real one.
            if len(key) < 16 or not key.isprintable() or " " in key or "," in key:
                raise ConfigError("an API key must be at least 16 printable characters without spaces or commas "
                                  f"(one given is {len(key)} long{', with a comma' if ',' in key else ''})")
