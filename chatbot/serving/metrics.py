"""Prometheus metrics of one app (a registry of its own, so several apps in a process do not
mix). With several uvicorn workers each serves its own figures."""

from __future__ import annotations

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, Info, PlatformCollector, ProcessCollector,
                               generate_latest)

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("chatbot_http_requests_total", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("chatbot_http_request_seconds", "HTTP request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.replies = Counter("chatbot_replies_total", "replies generated", registry=self.registry)
        self.fallbacks = Counter("chatbot_fallbacks_total", "replies replaced by the fallback text",
                                 registry=self.registry)
        self.batch_size = Histogram("chatbot_decode_batch_size", "requests decoded together",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue = Gauge("chatbot_decode_queue", "requests waiting for a decode", registry=self.registry)
        self.ready = Gauge("chatbot_model_ready", "1 once the model is loaded", registry=self.registry)
        # Still rising under steady load: replies waiting for XLA to compile a shape first met.
        self.compiled_programs = Gauge("chatbot_compiled_programs", "decode-loop programs compiled (XLA)",
                                       registry=self.registry)
        self.build = Info("chatbot_build", "chatbot version and the model served", registry=self.registry)
        # The worker process: memory (a model holds over a gigabyte), CPU, open files, and its start
        # time, which tells the workers behind one port apart and shows a restarted one.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
