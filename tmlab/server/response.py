"""The response side of a chat run: finished choices, logprobs entries, usage, timings.

Pure functions of a finished :class:`ChoiceResult` and the request: they shape what the
generation loop in :mod:`tmlab.server.chat` produced into the OpenAI ``chat.completion``
pieces. All numbers are plain Python types (no numpy floats).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tmlab.server.engine import Engine
from tmlab.server.prompting import Plan
from tmlab.server.protocol import ChatRequest
from tmlab.server.sampler import Step
from tmlab.server.trace import CHAIN, TraceSpec

__all__ = [
    "ChoiceResult",
    "ServerTiming",
    "choice_dict",
    "logprob_content",
    "perf_metrics",
    "raw_output",
    "trace_dict",
    "usage",
]


@dataclass
class ServerTiming:
    """Times of one request, in ``time.perf_counter`` seconds."""

    arrived: float
    started: float = 0.0
    first_token: float | None = None
    tokens: int = 0  # completion tokens, once the request is done (for the request log)


@dataclass
class ChoiceResult:
    """One finished choice, with everything the response may show."""

    index: int
    content: str
    reasoning: str | None
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str
    stop_reason: str | None
    token_ids: list[int]
    logprobs: list[dict[str, Any]] | None
    reasoning_tokens: int
    raw_completion: str
    raw_prompts: list[str] = field(default_factory=list)
    # what the stream has not sent yet: it goes out with finish_reason (the end-of-generation
    # step, so that a reassembled stream has every token the response has)
    rest_logprobs: list[dict[str, Any]] = field(default_factory=list)
    rest_ids: list[int] = field(default_factory=list)
    # what the logprobs describe: {"logprobs_mode": ..., "echo_tokens": ...}
    logprobs_meta: dict[str, Any] = field(default_factory=dict)
    # {"sampler_trace": ..., "logprobs_for": ...} when asked (tmlab.server.trace)
    trace: dict[str, Any] = field(default_factory=dict)


def _lp_entry(engine: Engine, token: int, logprob: float | None) -> dict[str, Any]:
    b = engine.token_bytes(token)
    return {
        "token": b.decode("utf-8", errors="replace"),
        "logprob": logprob,
        "bytes": list(b),
        "token_id": token,
    }


def logprob_content(engine: Engine, step: Step) -> dict[str, Any]:
    """The OpenAI logprobs entry of one step (exact alternatives; ``logprob`` null for the
    prompt's first token, which nothing precedes)."""
    entry = _lp_entry(engine, step.token_id, step.logprob)
    entry["top_logprobs"] = [_lp_entry(engine, t, lp) for t, lp in step.top or []]
    return entry


def usage(plan: Plan, results: list[ChoiceResult], cache: object = None) -> dict[str, Any]:
    """OpenAI usage: completion tokens include reasoning tokens (counted apart too).

    ``cache``: the request's :class:`~tmlab.server.prompt_cache.CacheScope` (its cancel
    flag): ``cached_tokens`` are the prompt tokens its evaluation reused (0 without
    ``--prompt-cache``); ``cache_exact: false`` is added when it reused some and the start-up
    self-test found that reuse changes the numbers.
    """
    from tmlab.server.prompt_cache import CacheScope

    prompt = len(plan.prompt_tokens)
    completion = sum(len(r.token_ids) + r.reasoning_tokens for r in results)
    scope = cache if isinstance(cache, CacheScope) else None
    cached = min(scope.cached_tokens or 0, prompt) if scope is not None else 0
    details: dict[str, Any] = {"cached_tokens": cached}
    if cached and scope is not None and scope.exact is False:
        details["cache_exact"] = False
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": details,
        "completion_tokens_details": {"reasoning_tokens": sum(r.reasoning_tokens for r in results)},
    }


def perf_metrics(plan: Plan, timing: ServerTiming, results: list[ChoiceResult]) -> dict[str, Any]:
    """Server-side timings up to now, in seconds."""
    t = timing
    end = time.perf_counter()
    completion = sum(len(r.token_ids) + r.reasoning_tokens for r in results)
    gen_time = end - (t.first_token or end)
    return {
        "prompt_tokens": len(plan.prompt_tokens),
        "cached_prompt_tokens": 0,
        "completion_tokens": completion,
        "queue_time": round(t.started - t.arrived, 6),
        "time_to_first_token": round((t.first_token or end) - t.arrived, 6),
        "processing_time": round(end - t.started, 6),
        "total_time": round(end - t.arrived, 6),
        "tokens_per_second": round((completion - 1) / gen_time, 3)
        if gen_time > 0 and completion > 1
        else None,
    }


def raw_output(plan: Plan, r: ChoiceResult) -> dict[str, Any]:
    """The prompt text as templated and the raw completion (special tokens included)."""
    return {
        "prompt_fragments": r.raw_prompts,
        "completion": r.raw_completion,
        "prompt_token_ids": plan.prompt_tokens,
        "completion_token_ids": r.token_ids,
    }


def choice_dict(req: ChatRequest, plan: Plan, r: ChoiceResult) -> dict[str, Any]:
    """A finished choice in the ``chat.completion`` shape."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if r.tool_calls and not r.content else r.content,
    }
    if r.reasoning is not None:
        message["reasoning"] = r.reasoning
    if r.tool_calls:
        message["tool_calls"] = r.tool_calls
    choice: dict[str, Any] = {
        "index": r.index,
        "message": message,
        "logprobs": None if r.logprobs is None else {"content": r.logprobs, **r.logprobs_meta},
        "finish_reason": r.finish_reason,
        "stop_reason": r.stop_reason,
    }
    if req.get("return_token_ids"):
        choice["token_ids"] = r.token_ids
    if req.get("raw_output"):
        choice["raw_output"] = raw_output(plan, r)
    choice.update(r.trace)
    return choice


def trace_dict(
    spec: TraceSpec | None,
    traced: list[dict[str, Any]],
    watched: list[dict[str, Any]],
    token_bytes: Callable[[int], bytes],
) -> dict[str, Any]:
    """A choice's ``sampler_trace`` and ``logprobs_for`` (what was asked of them)."""
    if spec is None:
        return {}
    out: dict[str, Any] = {}
    if spec.trace:
        out["sampler_trace"] = {
            "chain": list(CHAIN),
            "top": spec.top,
            "draw": traced[0]["draw"] if traced else None,
            "positions": traced,
        }
    if spec.watch:
        out["logprobs_for"] = {
            "tokens": [
                {"id": t, "token": token_bytes(t).decode("utf-8", errors="replace")}
                for t in spec.watch
            ],
            "positions": watched,
        }
    return out
