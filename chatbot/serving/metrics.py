"""Prometheus metrics of one app (a registry of its own, so several apps in a process do not
mix).

``chatbot serve --workers N`` runs N processes behind one port, and a scrape reaches whichever
accepts it: each counting alone, the counters would seem to jump back and forth. There the
server sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers start, every worker writes its
figures to files in that folder (prometheus_client's multiprocess mode), and any worker's
``/metrics`` sums them all. Per-process collectors (memory, CPU) cannot be summed and are
left out in that mode."""

from __future__ import annotations

import glob
import os
import re
from typing import Callable

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector,
                               generate_latest, multiprocess)

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
SHARED_FOLDER = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it when first imported


def shared_folder() -> str | None:
    """The folder the workers' figures are shared through, when the process runs in
    prometheus_client's multiprocess mode."""
    return os.environ.get(SHARED_FOLDER) or os.environ.get(SHARED_FOLDER.lower()) or None


class Metrics:
    def __init__(self):
        self.shared = shared_folder()
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
        # Gauges of several workers: what waits in all of them, ready once every one is, and the
        # programs compiled summed (each worker compiles its own).
        self.queue = Gauge("chatbot_decode_queue", "requests waiting for a decode", registry=self.registry,
                           multiprocess_mode="livesum")
        self.ready = Gauge("chatbot_model_ready", "1 once the model is loaded", registry=self.registry,
                           multiprocess_mode="livemin")
        # Still rising under steady load: replies waiting for XLA to compile a shape first met.
        self.compiled_programs = Gauge("chatbot_compiled_programs", "decode-loop programs compiled (XLA)",
                                       registry=self.registry, multiprocess_mode="livesum")
        # An Info metric as its exposition writes it (a gauge of 1 named *_info), which, unlike
        # prometheus_client's Info, works with several workers.
        self.build = Gauge("chatbot_build_info", "chatbot version and the model served",
                           ["model", "model_created", "version"], registry=self.registry,
                           multiprocess_mode="livemax")
        self._programs: Callable[[], int] | None = None
        if not self.shared:
            # The worker process: memory (a model holds over a gigabyte), CPU, open files, and
            # its start time, which shows a restarted one.
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)

    def model_loaded(self, version: str, model: str, created: str, programs: Callable[[], int]) -> None:
        self.build.labels(model, created, version).set(1)
        self._programs = programs
        if self.shared:  # another worker's scrape cannot call this one's function: set as it changes
            self.compiled_programs.set(programs())
        else:
            self.compiled_programs.set_function(programs)
        self.ready.set(1)

    def decoded(self, size: int) -> None:
        """One decode call of ``size`` requests (the batcher's hook)."""
        self.batch_size.observe(size)
        if self.shared and self._programs is not None:  # a shape first met compiles a program
            self.compiled_programs.set(self._programs())

    def render(self) -> bytes:
        if not self.shared:
            return generate_latest(self.registry)
        if self._programs is not None:
            self.compiled_programs.set(self._programs())
        forget_dead_workers(self.shared)
        everyone = CollectorRegistry()
        multiprocess.MultiProcessCollector(everyone, path=self.shared)
        return generate_latest(everyone)


def forget_dead_workers(folder: str) -> None:
    """Drop the live gauges of workers that are gone (uvicorn restarts a dead worker under a
    new pid): a killed worker's queue and readiness must not count for ever."""
    for path in glob.glob(os.path.join(folder, "gauge_live*_*.db")):
        found = re.search(r"_(\d+)\.db$", path)
        if found and not _alive(int(found.group(1))):
            multiprocess.mark_process_dead(int(found.group(1)), folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
