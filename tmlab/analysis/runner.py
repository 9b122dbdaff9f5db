"""How the analyses send many requests: what sweeps, scoring, classification, probes and
audits share.

:func:`sweep_client` makes the AsyncClient a batch of requests goes through (the settings of
the caller's client, tolerant of time queued at the server), :func:`client_kwargs` the
arguments of a twin of a client, :func:`run_in_thread` runs the batch's coroutine from
synchronous code (also where an event loop already runs, as in Jupyter; Ctrl-C cancels it),
:func:`one_line` gives a failed request's error as the one line its row holds, and
:func:`positive_int` checks a count.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from typing import Any

import httpx

from tmlab.client import AsyncClient
from tmlab.client.base import BaseClient
from tmlab.errors import ParameterError, redact

__all__ = ["client_kwargs", "one_line", "positive_int", "run_in_thread", "sweep_client"]


def positive_int(name: str, value: Any) -> int:
    """``value`` if it is an int ≥ 1, else a :class:`~tmlab.ParameterError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParameterError(name, f"{name}={value!r} is not a positive int", "an int ≥ 1")
    return value


def client_kwargs(client: BaseClient) -> dict[str, Any]:
    """Constructor arguments for a twin of ``client`` (the key travels, unprinted)."""
    s = client._settings
    return {
        "base_url": client.base_url or s.base_url,
        "api_key": s.api_key,
        "model": client.model,
        "timeout": client.timeout,
        "max_retries": client.max_retries,
    }


def _queue_tolerant(timeout: float | httpx.Timeout | None, loopback: bool) -> httpx.Timeout | None:
    # Time queued behind the other requests of the sweep is not a hung server: a server on
    # this machine gets no read timeout. No pool timeout either: the sweep's own bound
    # (concurrency) decides how many requests wait.
    if timeout is None:
        return None
    t = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
    return httpx.Timeout(
        connect=t.connect, read=None if loopback else t.read, write=t.write, pool=None
    )


def sweep_client(client: Any) -> AsyncClient:
    """A fresh AsyncClient with the settings of ``client`` (or the session's): the sweep may
    run on another event loop than the one an AsyncClient was used on."""
    if client is None:
        ac = AsyncClient()
    elif isinstance(client, BaseClient):
        kwargs = client_kwargs(client)
        transport = getattr(client, "_transport", None)
        if isinstance(client, AsyncClient) and transport is not None:
            kwargs["transport"] = transport
        ac = AsyncClient(**kwargs)
    else:
        raise ParameterError(
            "client", f"client={type(client).__name__} is not a tmlab client", "a tmlab.Client"
        )
    ac.timeout = _queue_tolerant(ac.timeout, ac._settings.loopback)
    return ac


def one_line(exc: BaseException, secret: str | None) -> str:
    """An error as one line for a frame's ``error`` column (at most 300 characters, the key
    scrubbed)."""
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return redact(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, secret)


def run_in_thread(coro: Any) -> Any:
    """Run ``coro`` on a new event loop in a new thread; Ctrl-C here cancels it.

    A thread, so that it also works where an event loop already runs (Jupyter); the caller's
    context variables go along. The loop's task handles its cancellation and returns.
    """
    loop = asyncio.new_event_loop()
    ctx = contextvars.copy_context()
    ready, done = threading.Event(), threading.Event()
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["task"] = task = loop.create_task(coro)
            ready.set()
            out["value"] = loop.run_until_complete(task)
        except BaseException as exc:  # handed to the caller
            out["error"] = exc
        finally:
            ready.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            done.set()

    thread = threading.Thread(target=ctx.run, args=(target,), name="tmlab-sweep", daemon=True)
    thread.start()
    # Waiting on an Event, not Thread.join: on Python 3.11 a KeyboardInterrupt inside join()
    # marks the thread as finished while it still runs. Short waits let Ctrl-C land.
    try:
        while not done.wait(0.1):
            pass
    except KeyboardInterrupt:
        ready.wait()
        task = out.get("task")
        if task is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed: it finished
                loop.call_soon_threadsafe(task.cancel)
        done.wait()
    if "error" in out:
        raise out["error"]
    return out["value"]
