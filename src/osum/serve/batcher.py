"""Concurrent requests -> batches: requests wait a few milliseconds for company, then decode together.

One thread forms batches; each batch is decoded on one of `model.engine.concurrency` decoding threads (torch: one
model call at a time, which keeps memory bounded and lets torch use every core; vLLM: several batches in flight,
whose requests its engine schedules together: continuous batching across batches). While every decoding thread
is busy, the forming thread waits, so batches grow with the load. Requests are grouped by what must be equal within a model call (prompt, language,
label scoring, decoding options); task tags may differ inside a batch. `max_batch=1` turns batching off,
for comparison. A request's failure (its own bad input) fails only that request; a batch that fails as a
whole is retried one request at a time, so one poisoned input never takes its neighbours down. A request
whose future is already settled when its turn comes (the server cancelled it: its client has gone) is
dropped undecoded and counted in `dropped`.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..infer.api import SpeechModel
from ..infer.inputs import AudioInput

log = logging.getLogger(__name__)


@dataclass
class Request:
    audio: AudioInput
    task: str
    options: dict[str, Any]  # prompt, language, label_scoring, decoding options
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    queued: float = field(default_factory=time.perf_counter)

    @property
    def group(self) -> tuple:
        return tuple(sorted((k, repr(v)) for k, v in self.options.items()))


class Batcher:
    def __init__(self, model: SpeechModel, max_batch: int = 16, max_wait_ms: float = 10.0):
        self.model = model
        self.max_batch = max(1, max_batch)
        self.max_wait = max_wait_ms / 1000
        self.queue: queue.Queue[Request | None] = queue.Queue()
        self.batches = 0
        self.requests = 0  # decoded
        self.dropped = 0  # cancelled before their turn: never decoded
        self._pending: list[Request] = []
        workers = max(1, int(getattr(getattr(model, "engine", None), "concurrency", 1)))
        self._slots = threading.Semaphore(workers)  # a batch is formed only when a decoding thread is free
        self._decoders = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="osum-decode")
        self._counts = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="osum-batcher", daemon=True)
        self.thread.start()

    async def submit(self, audio: AudioInput, task: str, **options: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.queue.put(Request(audio, task, options, future, loop))
        return await future

    @property
    def waiting(self) -> int:
        """Requests queued for the model thread (not yet in a batch)."""
        return self.queue.qsize() + len(self._pending)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)
        self._decoders.shutdown(wait=True)

    # ------------------------------------------------------------------------------------ worker thread
    def _run(self) -> None:
        pending = self._pending
        while True:
            self._slots.acquire()
            first = pending.pop(0) if pending else self.queue.get()
            if first is None:
                return
            if self._gone(first):
                self._slots.release()
                continue
            batch, deadline = [first], time.perf_counter() + self.max_wait
            for item in [p for p in pending if p.group == first.group][: self.max_batch - 1]:
                pending.remove(item)
                batch.append(item)
            while len(batch) < self.max_batch:
                timeout = deadline - time.perf_counter()
                if timeout <= 0:
                    break
                try:
                    item = self.queue.get(timeout=timeout)
                except queue.Empty:
                    break
                if item is None:
                    self.queue.put(None)  # stop after this batch
                    break
                if self._gone(item):
                    continue
                if item.group == first.group:
                    batch.append(item)
                else:
                    pending.append(item)  # another kind of request: its own batch next
            self._decoders.submit(self._decode_then_free, batch)

    def _decode_then_free(self, batch: list[Request]) -> None:
        try:
            self._decode(batch)
        finally:
            self._slots.release()

    def _gone(self, request: Request) -> bool:
        # future.done() only reads its state: safe from this thread. Cancelled = nobody waits for the answer.
        if request.future.done():
            with self._counts:
                self.dropped += 1
            log.info("dropped a %s request: its client went away before its turn", request.task)
            return True
        return False

    def _decode(self, batch: list[Request]) -> None:
        batch = [r for r in batch if not self._gone(r)]  # some may have gone while the batch was forming
        if not batch:
            return
        with self._counts:
            self.batches += 1
            self.requests += len(batch)
        try:
            results = self.model.generate_audio([r.audio for r in batch], [r.task for r in batch], **batch[0].options)
        except Exception as err:  # noqa: BLE001 - reported to the requests, never kills the worker
            if len(batch) > 1:
                for request in batch:
                    self._decode([request])
                return
            results = [err]
        for request, result in zip(batch, results):
            request.loop.call_soon_threadsafe(_settle, request.future, result)


def _settle(future: asyncio.Future, result: Any) -> None:
    if future.done():  # the client went away
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)
