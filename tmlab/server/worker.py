"""The thread that owns the model (or, with ``--parallel N``, the N threads that run one
request each), and the bridge from them to asyncio.

A llama.cpp context is not thread-safe (two threads on one ``Llama`` abort the process), so
every use of the context (evaluating, sampling) is a job on :class:`Worker`'s queue, run in
turn. With ``--parallel N`` there are N threads, each running one request's job, and the
context they generate with belongs to the batch engine's scheduler thread
(:mod:`tmlab.server.batch`), which they only hand their sequences to. Only the read-only
vocabulary (tokenising, templating, grammar checks) is used from elsewhere: the app's preparing
thread plans requests beside a running generation. Each job carries a cancel flag that the
generation loop checks at every token; a job cancelled while still queued is skipped. The
worker counts its jobs (queued or running, their client still there) and keeps a running mean
of how long one takes, which the server's queue limit reads (:mod:`tmlab.server.limits`).
A streaming job's chunks reach the event loop in batches (everything emitted since the loop
last looked, with one wake-up each), so a loop that falls behind the tokens catches up in
one write instead of one per token.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["DONE", "Worker"]

T = TypeVar("T")

DONE = object()
"""Sentinel that ends a job's event stream."""


@dataclass(eq=False)
class _WorkItem:
    fn: Callable[[], Any]
    fut: Future[Any]
    cancel: threading.Event

    def dropped(self) -> bool:
        """Its client is gone (the request set the flag, or cancelled the future)."""
        return self.cancel.is_set() or self.fut.cancelled()


class Worker:
    """Threads running jobs in arrival order: one (the default: one job at a time), or
    ``threads`` of them, each running one request's job while the batch engine decodes them
    together (``--parallel N``)."""

    def __init__(self, name: str = "tmlab-model", threads: int = 1) -> None:
        self._cond = threading.Condition()
        self._queue: collections.deque[_WorkItem | None] = collections.deque()
        self._running: set[_WorkItem] = set()
        self.slots = threads
        self.mean_job_s = 1.0  # running mean of a job's duration, for Retry-After estimates
        self._threads = [
            threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    @property
    def running(self) -> int:
        """Jobs being run now (their client still there)."""
        with self._cond:
            return sum(not j.dropped() for j in self._running)

    def pending(self) -> int:
        """Jobs queued or running whose client is still there.

        Queued jobs whose client left are dropped here and then, so that neither their
        place in the queue nor the request they hold outlives their client.
        """
        with self._cond:
            gone = [j for j in self._queue if j is not None and j.dropped()]
            if gone:
                self._queue = collections.deque(
                    j for j in self._queue if j is None or not j.dropped()
                )
                for job in gone:
                    job.fut.cancel()
            running = sum(not j.dropped() for j in self._running)
            return running + sum(j is not None for j in self._queue)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                job = self._queue.popleft()
                if job is None:
                    return
                self._running.add(job)
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._running.discard(job)

    def _run(self, job: _WorkItem) -> None:
        if job.cancel.is_set():  # its client is gone
            job.fut.cancel()
            return
        if not job.fut.set_running_or_notify_cancel():
            return
        t0 = time.perf_counter()
        try:
            job.fut.set_result(job.fn())
        except BaseException as exc:  # handed to the awaiting request
            job.fut.set_exception(exc)
        self.mean_job_s += 0.2 * (time.perf_counter() - t0 - self.mean_job_s)

    def _put(self, job: _WorkItem | None) -> None:
        with self._cond:
            self._queue.append(job)
            self._cond.notify()

    def submit(self, fn: Callable[[], T], cancel: threading.Event | None = None) -> Future[T]:
        """Queue ``fn``; its result (or exception) arrives in the returned future."""
        fut: Future[T] = Future()
        self._put(_WorkItem(fn, fut, cancel or threading.Event()))
        return fut

    async def call(self, fn: Callable[[], T], cancel: threading.Event | None = None) -> T:
        """Run ``fn`` on the worker and await its result."""
        return await asyncio.wrap_future(self.submit(fn, cancel))

    def stream(
        self, fn: Callable[[Callable[[Any], None]], None], cancel: threading.Event
    ) -> AsyncIterator[list[Any]]:
        """Run ``fn(emit)`` on the worker; iterate over what it emits, in batches, then
        :data:`DONE` (the last item of the last batch).

        A batch is everything emitted since the previous one was taken (never empty): the
        event loop is woken once per batch, not once per item, so a stream that it cannot
        keep up with costs it fewer wake-ups and fewer writes, and the generating thread
        never waits for it. An exception raised by ``fn`` is an item before :data:`DONE`.
        """
        loop = asyncio.get_running_loop()
        pending: collections.deque[Any] = collections.deque()
        lock = threading.Lock()
        ready = asyncio.Event()
        woken = False  # a wake-up of the event loop is on its way

        def emit(item: Any) -> None:
            nonlocal woken
            with lock:
                pending.append(item)
                if woken:
                    return
                woken = True
            loop.call_soon_threadsafe(ready.set)

        def job() -> None:
            try:
                fn(emit)
            except Exception as exc:
                emit(exc)
            finally:
                emit(DONE)

        self.submit(job, cancel)

        async def batches() -> AsyncIterator[list[Any]]:
            nonlocal woken
            while True:
                await ready.wait()
                with lock:
                    ready.clear()
                    woken = False
                    batch = list(pending)
                    pending.clear()
                if not batch:  # taken with the batch before this wake-up's
                    continue
                yield batch
                if batch[-1] is DONE:
                    return

        return batches()

    def close(self, timeout: float | None = None) -> bool:
        """Stop the threads after the jobs already queued; True once they have stopped.

        Waits up to ``timeout`` seconds (None: as long as it takes) for them to end.
        """
        for _ in self._threads:
            self._put(None)
        end = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if end is None else max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)
