"""The Starlette app: routes, auth, SSE, and the error envelope for every failure.

Routes: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /v1/stats``, ``GET /health``,
``GET /version``, ``POST /tokenize``, ``POST /detokenize``. With an API key, the routes that
use the model need ``Authorization: Bearer KEY``; models, stats, health and version stay open,
as on Tensormesh.

Three kinds of thread, so that no request holds up the others for long:

* the event loop only moves bytes: it reads a body up to the size limit and sends answers, so
  ``/health`` and every other request answer while a large one is being refused;
* one *preparing* thread decodes and validates each body, then plans it (chat template,
  tokenising, grammar checks: :func:`~tmlab.server.prompting.plan_request`). Planning uses
  only the model's vocabulary, which llama.cpp reads without changing (its own server
  tokenises in its HTTP threads while it decodes), so it runs beside a generation instead of
  holding it up; one thread, so that at most one body's JSON is being decoded at a time;
* the model's worker (:mod:`tmlab.server.worker`) evaluates prompts and generates, one
  request at a time.

The routes that use the model admit a request only while the queue has room
(:mod:`tmlab.server.limits`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tmlab.meta import VERSION
from tmlab.server.chat import run_chat
from tmlab.server.engine import Engine
from tmlab.server.limits import Admission, Limits, prompt_bound, read_body
from tmlab.server.prompt_cache import CacheScope
from tmlab.server.prompting import Plan, plan_request
from tmlab.server.protocol import (
    ChatRequest,
    RequestError,
    bad,
    error_body,
    parse_chat_request,
    parse_json,
    without_optional,
)
from tmlab.server.response import ServerTiming
from tmlab.server.stats import RequestLog, Stats
from tmlab.server.worker import DONE, Worker

__all__ = ["Limits", "create_app"]

T = TypeVar("T")

_READY = object()
_GONE = object()
_DISCONNECT_POLL_S = 0.25


def _dumps(obj: Any) -> str:
    # Responses hold plain Python numbers only (chat.py converts); a NaN or a numpy scalar
    # is a bug to surface, not a value to invent.
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


def _sse_line(item: Any) -> str:
    """One ``data:`` event of a stream: a chunk, or an error raised while generating."""
    if isinstance(item, Exception):
        err = (
            item.body()
            if isinstance(item, RequestError)
            else error_body(f"generation failed: {item}", "server_error")
        )
        return f"data: {_dumps(err)}\n\n"
    return f"data: {_dumps(item)}\n\n"


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return _dumps(content).encode("utf-8")


def _error(exc: RequestError) -> Response:
    headers = dict(exc.headers)
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return _JSON(exc.body(), status_code=exc.status, headers=headers or None)


class _Server:
    """The state behind the routes: one engine, its worker, the limits and the optional key."""

    def __init__(
        self, engine: Engine, api_key: str | None, limits: Limits, instance: str | None
    ) -> None:
        self.engine = engine
        self.instance = instance
        self.minimal = False
        """Serve as a server without the optional capabilities (``--minimal``)."""
        self.parallel = engine.batch.parallel if engine.batch is not None else 1
        self.worker = Worker(threads=self.parallel)
        self.api_key = api_key
        self.limits = limits
        self.admission = Admission(limits.max_queue, self.worker.pending, self.parallel)
        self.counters = Stats(lambda: engine.tokens_generated)
        if engine.batch is not None:  # how many sequences each step decodes together
            engine.batch.on_step = self.counters.decoded_together
        self.preparer = ThreadPoolExecutor(1, thread_name_prefix="tmlab-prepare")
        self._preparing = threading.Lock()  # held while the preparer uses the vocabulary
        self.created = int(time.time())
        self.preparer.submit(self._prepare, lambda: prompt_bound(engine))  # computed once

    def _prepare(self, fn: Callable[[], T]) -> T:
        with self._preparing:
            return fn()

    def close(self, timeout: float = 5.0) -> bool:
        """Stop preparing and the worker after its queued jobs; True if both stopped.

        Waits up to ``timeout`` seconds for each; only then may the model be freed.
        """
        self.preparer.shutdown(wait=False, cancel_futures=True)
        # kept for good: a preparation that is late to start must not use a freed model
        idle = self._preparing.acquire(timeout=timeout)
        return self.worker.close(timeout) and idle

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Admit a request (or raise the 503) until its job is handed to the worker."""
        wait = self.worker.mean_job_s * (self.admission.waiting() + 1) / self.parallel
        with self.admission.enter(retry_after=wait):
            yield

    async def prepared(self, request: Request, prepare: Callable[[Any], T]) -> T:
        """The body, read up to the limit, then decoded and ``prepare``d off the event loop."""
        raw = await read_body(request, self.limits.max_body_bytes, self.limits.body_timeout)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.preparer, self._prepare, lambda: prepare(_decode(raw))
        )

    def chat_request(self, body: Any) -> ChatRequest:
        """A decoded body validated as a chat request (in the preparing thread)."""
        engine = self.engine
        req = parse_chat_request(body, [engine.model_name], engine.n_vocab, max_n=self.limits.max_n)
        return without_optional(req) if self.minimal else req

    def chat_plan(self, body: Any) -> tuple[ChatRequest, Plan]:
        """A decoded body validated and planned (in the preparing thread)."""
        req = self.chat_request(body)
        budget = self.limits.max_request_tokens
        return req, plan_request(self.engine, req, max_request_tokens=budget)

    def check_auth(self, request: Request) -> None:
        if not self.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        ):
            raise RequestError(
                401,
                "Missing or incorrect API key: send 'Authorization: Bearer <key>'",
                type="authentication_error",
                code="invalid_api_key",
            )

    # --- routes ------------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        timing = ServerTiming(arrived=time.perf_counter())
        request.state.timing = timing  # the request log reads its tokens
        self.check_auth(request)
        cancel = CacheScope()  # the request's cancel flag, and its prompt-cache scope
        engine = self.engine
        with self.admitted():
            req, plan = await self.prepared(request, self.chat_plan)
            cancel.key = req.get("prompt_cache_isolation_key")
            if not req.stream:

                def complete() -> dict[str, Any] | None:
                    return run_chat(engine, req, plan, timing=timing, cancel=cancel)

                job = self.worker.submit(complete, cancel)
            else:

                def produce(emit: Any) -> None:
                    emit(_READY)
                    run_chat(engine, req, plan, timing=timing, cancel=cancel, emit=emit)

                items = self.worker.stream(produce, cancel)
        if not req.stream:
            try:
                result = await _unless_disconnected(request, asyncio.wrap_future(job))
            finally:
                cancel.set()
            if result is _GONE:
                return Response(status_code=499)  # nobody is listening any more
            return _JSON(result)

        # Headers go out when generation starts; a client that leaves while its request is
        # still queued behind others must not cost the model a generation.
        batch = await _unless_disconnected(request, anext(items))
        if batch is _GONE:
            cancel.set()
            return Response(status_code=499)
        first, rest = batch[0], batch[1:]
        if isinstance(first, RequestError):
            cancel.set()
            return _error(first)
        if first is not _READY:  # an unexpected failure before the first token
            cancel.set()
            raise first if isinstance(first, Exception) else RuntimeError("stream ended")

        async def sse() -> AsyncIterator[str]:
            # what the generation emitted since the last write goes out in one write
            try:
                batch = rest
                while True:
                    lines = [_sse_line(item) for item in batch if item is not DONE]
                    end = bool(batch) and batch[-1] is DONE
                    if end:
                        lines.append("data: [DONE]\n\n")
                    if lines:
                        yield "".join(lines)
                    if end:
                        return
                    batch = await anext(items)
            finally:
                cancel.set()  # also when the client went away: stop generating

        return StreamingResponse(
            sse(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def models(self, request: Request) -> Response:
        return _JSON(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.engine.model_name,
                        "object": "model",
                        "created": self.created,
                        "owned_by": "tmlab",
                        "max_model_len": self.engine.n_ctx,
                        **self.batching(),
                        "prompt_cache": self.prompt_cache(),
                    }
                ],
            }
        )

    def batching(self) -> dict[str, Any]:
        """How requests are decoded: the slots, and whether answers depend on the load."""
        batch = self.engine.batch
        invariant = batch is None or batch.batch_invariant
        info: dict[str, Any] = {"parallel": self.parallel, "batch_invariant": invariant}
        if batch is not None:
            measured = batch.invariance
            info["batch_self_test"] = measured.as_json() if measured is not None else None
            said = measured.describe() if measured is not None else "not measured"
            info["notice"] = (
                f"up to {self.parallel} requests are decoded together, each in its own KV "
                f"cache: an answer's numbers are those it gets alone ({said})"
                if invariant
                else f"up to {self.parallel} requests are decoded together: an answer's "
                "numbers (and so a seeded or greedy answer) may depend on what else the "
                f"server is doing at the time ({said})"
            )
        return info

    def prompt_cache(self) -> dict[str, Any]:
        """Whether prompts reuse cached prefixes, whether that was measured exact, the counts."""
        cache = self.engine.prompt_cache
        return {"enabled": False} if cache is None else cache.as_json()

    async def stats(self, request: Request) -> Response:
        """``GET /v1/stats``: requests queued and running, tokens/s, what each slot does."""
        running = self.worker.running
        batch = self.engine.batch
        shared = {}
        if batch is not None:
            slots = [dataclasses.asdict(slot) for slot in batch.slots()]
            shared = {"prompt_tokens_shared": batch.prompt_tokens_shared}
        else:
            slots = [{"slot": 0, "state": "generating" if running else "idle"}]
        return _JSON(
            {
                **self.batching(),
                "queued": max(0, self.worker.pending() - running) + self.admission.receiving,
                "running": running,
                "tokens_per_s": round(self.counters.tokens_per_s(), 2),
                "slots": slots,
                **shared,
                "prompt_cache": self.prompt_cache(),
                **self.counters.snapshot(),
            }
        )

    async def health(self, request: Request) -> Response:
        """``GET /health``: ok, and which server this is (a launcher checks that a state
        file's URL still reaches tmlab's server of that instance and model)."""
        return _JSON(
            {
                "status": "ok",
                "model": self.engine.model_name,
                "server": "tmlab",
                "version": VERSION,
                "model_path": str(self.engine.model_path),
                "parallel": self.parallel,
                "instance": self.instance,
            }
        )

    async def version(self, request: Request) -> Response:
        try:
            llama = metadata.version("llama_cpp_python")
        except metadata.PackageNotFoundError:  # pragma: no cover
            llama = None
        limits = self.limits
        return _JSON(
            {
                "version": VERSION,
                "llama_cpp_python": llama,
                "model": self.engine.model_name,
                "limits": {
                    "max_body_bytes": limits.max_body_bytes,
                    "max_n": limits.max_n,
                    "max_request_tokens": limits.max_request_tokens,
                    "max_queue": limits.max_queue,
                    "body_timeout": limits.body_timeout,
                    "n_ctx": self.engine.n_ctx,
                },
            }
        )

    async def tokenize(self, request: Request) -> Response:
        """``POST /tokenize``: ``{"prompt": str}``, or a chat request's ``messages`` (with
        ``add_generation_prompt``, ``tools``, … as in a chat request): the token ids of the
        text, or exactly those of the prompt the chat template makes of the messages, with
        each token's text (``pieces``) and their ``count``."""
        self.check_auth(request)
        engine = self.engine

        def count(body: Any) -> list[int]:
            if not isinstance(body, dict):
                raise bad("the request body must be a JSON object")
            if body.get("messages") is not None:
                req = self.chat_request({**body, "model": engine.model_name})
                return plan_request(engine, req).prompt_tokens
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                raise bad("send {'prompt': str} or {'messages': [...]}", "prompt")
            least = prompt_bound(engine).at_least(prompt)
            if least >= engine.n_ctx:  # refused untokenised, as a chat prompt would be
                raise RequestError(
                    400,
                    f"the prompt is at least {least} tokens long; this model's context is "
                    f"{engine.n_ctx} tokens",
                    param="prompt",
                    code="context_length_exceeded",
                )
            return engine.tokenize(prompt, special=True)

        with self.admitted():  # tokenising uses the vocabulary only: no job for the worker
            tokens = await self.prepared(request, count)
        return _JSON(
            {
                "tokens": tokens,
                "count": len(tokens),
                "max_model_len": engine.n_ctx,
                # each token's text, special tokens spelled out (a partial UTF-8 sequence: U+FFFD)
                "pieces": [engine.token_text(t) for t in tokens],
            }
        )

    async def detokenize(self, request: Request) -> Response:
        self.check_auth(request)
        engine = self.engine

        def text(body: Any) -> str:
            tokens = body.get("tokens") if isinstance(body, dict) else None
            if not isinstance(tokens, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in tokens
            ):
                raise bad("send {'tokens': [int, ...]}", "tokens")
            n = engine.n_vocab
            if any(not 0 <= t < n for t in tokens):
                raise bad(f"token ids must be in 0..{n - 1}", "tokens")
            return engine.detokenize(tokens)

        with self.admitted():
            return _JSON({"prompt": await self.prepared(request, text)})


def _decode(raw: bytes) -> Any:
    """:func:`parse_json` with the garbage collector paused.

    Decoding holds the GIL, so the event loop waits meanwhile. A body of a million small
    arrays makes a million tracked objects, and with the collector on, their allocation runs
    full collections over and over: 0.5-1 s for 4 MiB instead of 0.15 s.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return parse_json(raw)
    finally:
        if enabled:
            gc.enable()


async def _unless_disconnected(request: Request, awaitable: Awaitable[Any]) -> Any:
    """Await ``awaitable``; return :data:`_GONE` early if the client disconnects meanwhile.

    The caller sets the job's cancel flag, so a queued job is skipped and a running one
    stops at its next token.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                return _GONE
    finally:
        if not task.done():
            # Stop waiting for the job: one that is skipped (its client left while it was
            # queued) sends nothing, and a task left waiting for it would be destroyed
            # pending. Its outcome is retrieved so that none is logged as "never retrieved".
            task.cancel()
            task.add_done_callback(lambda t: t.cancelled() or t.exception())


async def _request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return _error(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return _JSON(
        error_body(f"{request.method} {request.url.path}: {exc.detail}", kind),
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def _server_error(request: Request, exc: Exception) -> Response:
    return _JSON(
        error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"), status_code=500
    )


def create_app(
    engine: Engine,
    *,
    api_key: str | None = None,
    close_engine: bool = False,
    limits: Limits | None = None,
    log: Callable[[str], None] | None = None,
    instance: str | None = None,
    minimal: bool = False,
) -> RequestLog:
    """The ASGI app serving ``engine``, holding each request to ``limits`` (default: the
    defaults of :class:`~tmlab.server.limits.Limits`); ``log`` gets one line per request
    (:func:`~tmlab.server.stats.request_line`); ``instance`` names this server in
    ``/health`` (the shared server's launcher checks it); ``minimal`` serves it as a server
    without the optional capabilities (:func:`~tmlab.server.protocol.without_optional`).

    At shutdown it stops its worker thread and, with ``close_engine``, then frees the model.
    """
    s = _Server(engine, api_key, limits or Limits(), instance)
    s.minimal = minimal

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        # Free the model only once the worker has stopped: freeing it under a running
        # generation would crash the process on its way out.
        stopped = await asyncio.to_thread(s.close)
        if stopped and close_engine:
            engine.close()

    routes = [
        Route("/v1/chat/completions", s.chat, methods=["POST"]),
        Route("/chat/completions", s.chat, methods=["POST"]),
        Route("/v1/models", s.models, methods=["GET"]),
        Route("/v1/stats", s.stats, methods=["GET"]),
        Route("/health", s.health, methods=["GET"]),
        Route("/version", s.version, methods=["GET"]),
        Route("/tokenize", s.tokenize, methods=["POST"]),
        Route("/detokenize", s.detokenize, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            RequestError: _request_error,
            HTTPException: _http_error,
            Exception: _server_error,
        },
    )
    app.state.server = s
    headers = {
        "X-Tmlab-Parallel": str(s.parallel),
        "X-Tmlab-Batch-Invariant": "true" if s.batching()["batch_invariant"] else "false",
    }
    return RequestLog(app, s.counters, log, headers)
