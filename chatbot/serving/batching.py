"""Requests that arrive while a decode runs join the next one.

Up to ``decoders`` decodes run at once, each in a thread of its own: the compiled loops release
Python's lock while they compute, so one batch's Python work (retrieval, tokenising, storing)
runs beside another's arithmetic (one worker on 2 cores, 32 clients, beam 8: 63.8 replies/s
with one decoder, 88.1 with two, and no more with three or four in a probe; bench/README.md). Requests
queue up while the decoders are busy; the next free one takes them all (at most ``max_batch``),
so under load each decode serves many requests for about the price of one. A request waits at
most ``wait_ms`` for company, and only under load (another decode runs, or the last batch had
company): a lone client's requests are decoded at once (bench/README.md, serve_load.py, "No
wait on an idle server").

Given ``prepare`` and ``finish`` (``ChatBot.prepare_replies`` and ``finish_replies``) and a
``store`` runner, a request's database work runs on the store's threads before and after its
decode, and the decode threads only decode: a database that stops answering holds no decoder,
so stateless requests are still answered."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable, Callable, Sequence

from chatbot.dialogue.bot import Reply, ReplyRequest


class DecodeBatcher:
    def __init__(self, reply_many: Callable[[Sequence, bool], list], max_batch: int = 32,
                 wait_ms: float = 2.0, on_batch: Callable[[int], None] | None = None,
                 on_queue: Callable[[int], None] | None = None, decoders: int = 1,
                 prepare: Callable[[Sequence[ReplyRequest]], list] | None = None,
                 finish: Callable[[list, list], list] | None = None,
                 store: Callable[..., Awaitable] | None = None):
        """``reply_many(items, True)`` decodes a batch: the requests themselves, or with
        ``prepare`` and ``finish``, what ``prepare`` made of them (``store(function, *args)``
        runs those two off the decode threads)."""
        self._reply_many = reply_many
        self._prepare, self._finish, self._store = prepare, finish, store
        self.decoders = decoders
        self.max_batch = max_batch
        self.wait = wait_ms / 1000.0
        self._on_batch = on_batch or (lambda size: None)
        self._on_queue = on_queue or (lambda size: None)
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=decoders, thread_name_prefix="chatbot-decode")
        self._slots: asyncio.Semaphore | None = None
        self._decoding: set[asyncio.Task] = set()
        self._last_size = 0  # requests in the last batch formed
        self._carried = None  # a queued item that would have made the last batch too big

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._slots = asyncio.Semaphore(self.decoders)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="chatbot-batcher")

    async def stop(self) -> None:
        """After the server has drained: nothing is queued any more."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await asyncio.gather(*self._decoding, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def run_blocking(self, function, *args):
        """Run ``function`` in a decode thread (e.g. loading the model, warming it up)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def submit(self, requests: Sequence[ReplyRequest]) -> list[Reply | Exception]:
        """Replies to ``requests`` (decoded with whatever else is waiting), in order; a failed
        request's place holds its exception."""
        if self._queue is None:
            raise RuntimeError("the batcher is not running")
        if self._prepare is None:
            return await self._decoded(list(requests))
        prepared = await self._store_step(requests, self._prepare, list(requests))
        generated = await self._decoded(prepared)
        return await self._store_step(requests, self._finish, prepared, generated)

    async def _store_step(self, requests: Sequence[ReplyRequest], function, *args):
        """A step with database work on the store's threads; one without (stateless requests)
        on the loop's own, so that a database that hangs holds none of them either."""
        if any(getattr(r, "store", True) for r in requests):
            return await self._store(function, *args)
        return await asyncio.to_thread(function, *args)

    async def _decoded(self, items: list) -> list:
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((items, future))
        self._on_queue(self._queue.qsize())
        return await future

    async def _run(self) -> None:
        queue = self._queue
        while True:
            await self._slots.acquire()  # a decoder is free: what waits now makes its batch
            waiting = [self._carried if self._carried is not None else await queue.get()]
            self._carried = None
            size = len(waiting[0][0])
            # Wait for company only under load (another decode runs, or the last batch had
            # company): a lone client's requests would wait for nothing.
            loaded = bool(self._decoding) or self._last_size > 1
            deadline = time.monotonic() + (self.wait if loaded else 0.0)
            while size < self.max_batch:
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                if size + len(item[0]) > self.max_batch:  # several samples of one request: next batch
                    self._carried = item
                    break
                waiting.append(item)
                size += len(item[0])
            self._on_queue(queue.qsize())
            self._last_size = size
            live = [(requests, future) for requests, future in waiting if not future.cancelled()]
            if not live:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._decode(live), name="chatbot-decode")
            self._decoding.add(task)
            task.add_done_callback(self._decoding.discard)

    async def _decode(self, live) -> None:
        """Decode one batch and hand each waiting request its replies; frees its decoder."""
        try:
            flat = [r for requests, _ in live for r in requests]
            self._on_batch(len(flat))
            try:
                results = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._reply_many, flat, True)
            except Exception as exc:  # noqa: BLE001 - every waiting request learns of it
                results = [exc] * len(flat)
            start = 0
            for requests, future in live:
                if not future.done():
                    future.set_result(results[start:start + len(requests)])
                start += len(requests)
        finally:
            self._slots.release()
