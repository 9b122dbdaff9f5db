"""One Explorer request: what is sent, what arrived so far, and how Stop ends it at once.

:func:`send` runs the request as an asyncio task on the client's ``AsyncClient`` twin, in the
calling (worker) thread; :meth:`ExplorerRequest.cancel` cancels that task wherever it waits (queued
on the server, prompt evaluation, streaming), which closes the connection. A client built on an
injected ``httpx.Client`` has no twin: Stop then acts when the next piece arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tmlab.result import ChatResult

if TYPE_CHECKING:
    from tmlab.client import Client
    from tmlab.client.stream import Delta

__all__ = ["ExplorerRequest", "StoppedByUser", "deadline", "partial_result", "send"]


class StoppedByUser(Exception):
    """The request was stopped with Stop: what arrived is on ``.partial`` (or None)."""

    stops_request = True  # the history says "interrupted", as for Ctrl-C

    def __init__(self, partial: ChatResult | None = None) -> None:
        super().__init__("stopped by the user")
        self.partial = partial


@dataclass
class ExplorerRequest:
    """One request: what is sent, and what arrived so far."""

    client: Client
    prompt: str
    system: str | None
    model: str | None
    params: dict[str, Any]
    stop: threading.Event = field(default_factory=threading.Event)
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    deltas: int = 0
    started: float = field(default_factory=time.perf_counter)
    thread: threading.Thread | None = None
    abort: Callable[[], object] | None = None  # cancels the request where it waits
    session_limit: int | None = None  # the session's default max_tokens, added to params

    def cancel(self) -> None:
        """Stop the request now (also one not started yet: it then never starts)."""
        self.stop.set()
        abort = self.abort
        if abort is not None:
            abort()

    def add(self, delta: Delta) -> None:
        """Keep what ``delta`` brought (the first choice's text and reasoning)."""
        if delta.choice == 0:
            self.text.append(delta.text)
            self.reasoning.append(delta.reasoning)
        self.deltas += 1


def deadline(timeout: float | None) -> Callable[[], float | None]:
    """A function giving the seconds left of ``timeout`` (None: no limit)."""
    end = None if timeout is None else time.monotonic() + timeout
    return lambda: None if end is None else max(0.0, end - time.monotonic())


def send(job: ExplorerRequest, on_delta: Callable[[Delta], None]) -> ChatResult:
    """Send ``job``'s request; raises :class:`StoppedByUser` when it is cancelled."""
    kwargs: dict[str, Any] = dict(
        system=job.system, model=job.model, stream=True, on_delta=on_delta, **job.params
    )
    twin = job.client._async_twin()
    if twin is None:  # an injected httpx client: Stop acts when the next piece arrives

        def checked(delta: Delta) -> None:
            if job.stop.is_set():
                raise StoppedByUser
            on_delta(delta)

        try:
            return job.client.chat(job.prompt, **{**kwargs, "on_delta": checked})
        except StoppedByUser as exc:
            partial = getattr(exc, "partial", None)
            raise StoppedByUser(partial if isinstance(partial, ChatResult) else None) from None

    async def request() -> ChatResult:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def abort() -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to stop
                loop.call_soon_threadsafe(task.cancel)

        job.abort = abort
        async with twin:
            try:
                if job.stop.is_set():  # stopped before it started
                    raise asyncio.CancelledError
                return await twin.chat(job.prompt, **kwargs)
            except asyncio.CancelledError as exc:
                partial = getattr(exc, "partial", None)
                raise StoppedByUser(partial if isinstance(partial, ChatResult) else None) from None

    try:
        return asyncio.run(request())
    finally:
        job.abort = None


def partial_result(job: ExplorerRequest) -> ChatResult:
    """What arrived of ``job``'s answer, as an incomplete result."""
    message = {"role": "assistant", "content": "".join(job.text)}
    if any(job.reasoning):
        message["reasoning"] = "".join(job.reasoning)
    raw = {"choices": [{"index": 0, "message": message, "finish_reason": None}]}
    return ChatResult(raw, request={"model": job.model, **job.params}, complete=False)
