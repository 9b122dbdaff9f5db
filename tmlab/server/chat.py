"""Run a planned chat request on the engine: choices, reasoning, stops, tools, logprobs.

:func:`run_chat` runs in the worker thread that owns the model. It builds the whole
``chat.completion`` response, and when streaming it also hands ``chat.completion.chunk``
dicts to ``emit`` as tokens arrive. All numbers are plain Python types (no numpy floats).
Bytes become text in :mod:`tmlab.server.text`; finished choices become response pieces
(message, logprobs entries, usage, perf_metrics, raw_output) in :mod:`tmlab.server.response`.

The end-of-generation token is part of a choice's token table: it is in ``token_ids`` and
usage, and has its logprobs entry (``<|im_end|>`` spelled out, its raw logprob and
alternatives). A stream carries exactly what the response has: concatenating one choice's
chunks gives its content, tool calls, ``logprobs.content`` and ``token_ids``.

Logprobs say what they are: ``logprobs_mode`` (the request's, else the server's default) is
in the response (top level, and in each choice's ``logprobs``). With ``echo`` (or
``echo_last``) and ``logprobs``, the echoed prompt tokens come first in ``logprobs.content``
(their count in ``logprobs.echo_tokens``): raw log-probabilities in either mode, since no
sampler drew them, and ``null`` for the prompt's first token, as OpenAI's completions echo
does. They come from the same prompt evaluation that the answer starts from. A tool call's
tokens go out with the chunk that carries the call (or, when the call cannot be parsed, its
text as content), the end-of-generation step with the chunk that carries ``finish_reason``.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tmlab.server.batch import Group
from tmlab.server.engine import Engine
from tmlab.server.prompting import ANSWER_PREFIX, REASONING_PREFIX, TOOL_CALL_OPEN, Plan
from tmlab.server.protocol import ChatRequest
from tmlab.server.response import (
    ChoiceResult,
    ServerTiming,
    choice_dict,
    logprob_content,
    perf_metrics,
    raw_output,
    trace_dict,
    usage,
)
from tmlab.server.sampler import Sampling
from tmlab.server.text import TextStream, parse_tool_call

__all__ = ["Emit", "choice_seed", "run_chat", "sampling_of"]

Emit = Callable[[dict[str, Any]], None]


def choice_seed(seed: int, index: int) -> int:
    """The sampler seed of choice ``index`` of a request with ``seed``.

    A hash of both, so that requests never share a random stream: with ``seed + index``,
    ``seed=1, n=2`` and ``seed=2, n=1`` drew the same sample, and a sweep over seeds repeated
    itself. In 0..2**32 - 2: llama.cpp takes 32 bits and reads 2**32 - 1 as "random".
    """
    digest = hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 0xFFFFFFFF


def sampling_of(req: ChatRequest, choice_index: int = 0) -> Sampling:
    """The sampler's settings of choice ``choice_index`` (its seed: :func:`choice_seed`)."""
    base = req.sampling
    if base.seed is None:
        return base
    return dataclasses.replace(base, seed=choice_seed(base.seed, choice_index))


class ChatRun:
    """One chat request being generated: all its choices, in turn."""

    def __init__(
        self,
        engine: Engine,
        req: ChatRequest,
        plan: Plan,
        *,
        timing: ServerTiming,
        cancel: threading.Event,
        emit: Emit | None,
    ) -> None:
        self.engine = engine
        self.req = req
        self.plan = plan
        self.timing = timing
        self.cancel = cancel
        self.emit = emit
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())
        want = req.get("logprobs", False)
        self.top_logprobs: int | None = req.get("top_logprobs", 0) if want else None
        self.logprobs_mode: str = req.get("logprobs_mode") or engine.logprobs_mode
        self.echo_tokens = 0  # how many prompt tokens are echoed with their logprobs
        if want:
            n = len(plan.prompt_tokens)
            if req.get("echo"):
                self.echo_tokens = n
            elif req.get("echo_last"):
                self.echo_tokens = min(n, int(req.get("echo_last")))
        self._echo_entries: list[dict[str, Any]] | None = None
        n = int(req.get("n", 1))
        # the n choices reach the batch engine together: their prompt is evaluated once
        self.group = Group(n) if engine.batch is not None and n > 1 else None

    def logprobs_meta(self) -> dict[str, Any]:
        """What a choice's logprobs describe: ``logprobs_mode`` (and ``echo_tokens``)."""
        out: dict[str, Any] = {"logprobs_mode": self.logprobs_mode}
        if self.echo_tokens:
            out["echo_tokens"] = self.echo_tokens
        return out

    def logprobs_dict(self, content: list[dict[str, Any]]) -> dict[str, Any]:
        """A choice's ``logprobs`` object: the entries and what they describe."""
        return {"content": content, **self.logprobs_meta()}

    def echo_entries(self) -> list[dict[str, Any]]:
        """The echoed prompt tokens' logprobs entries (computed once per request).

        The scoring evaluation is the one the first choice's answer starts from (without
        reasoning, whose prompt is another; later choices evaluate the prompt again).
        """
        if self._echo_entries is None:
            steps = self.engine.prefill(
                self.plan.prompt_tokens,
                score_last=self.echo_tokens,
                top_logprobs=self.top_logprobs or 0,
                cancel=self.cancel,
            )
            # cancelled (the client left): nothing is sent any more
            self._echo_entries = [logprob_content(self.engine, s) for s in steps or []]
        return list(self._echo_entries)

    # --- streaming helpers ---------------------------------------------------------------

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """A ``chat.completion.chunk`` dict."""
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.req.model,
            "choices": choices,
            **extra,
        }

    def _send(
        self,
        index: int,
        delta: dict[str, Any],
        *,
        logprobs: list[Any] | None = None,
        token_ids: list[int] | None = None,
        finish: str | None = None,
        **extra: Any,
    ) -> None:
        if self.emit is None:
            return
        choice: dict[str, Any] = {
            "index": index,
            "delta": delta,
            "logprobs": None if logprobs is None else self.logprobs_dict(logprobs),
            "finish_reason": finish,
        }
        if token_ids is not None:
            choice["token_ids"] = token_ids
        choice.update(extra)
        self.emit(self.chunk([choice]))

    def _first_token(self) -> None:
        if self.timing.first_token is None:
            self.timing.first_token = time.perf_counter()

    # --- generation ----------------------------------------------------------------------

    def _reason(self, index: int, budget: tuple[int, int]) -> tuple[str, int, str, list[int]]:
        """The reasoning phase; returns (reasoning text, tokens, answer prompt text and ids)."""
        engine = self.engine
        prompt_text = self.plan.prompt_text + REASONING_PREFIX
        tokens = engine.tokenize(prompt_text)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        parts: list[str] = []
        ids: list[int] = []
        for step in engine.generate(
            tokens,
            sampling_of(self.req, index),
            max_tokens=budget[1],
            min_tokens=budget[0],
            cancel=self.cancel,
            group=self.group,
        ):
            self._first_token()
            ids.append(step.token_id)
            delta = decoder.decode(step.piece)
            parts.append(delta)
            if delta and self.emit is not None:
                self._send(index, {"reasoning": delta})
        parts.append(decoder.decode(b"", True))
        reasoning = "".join(parts).strip()
        answer_text = prompt_text + reasoning + ANSWER_PREFIX
        answer = engine.tokenize(answer_text)
        if len(answer) >= engine.n_ctx:
            # re-tokenising the text made it longer than the tokens it came from; the
            # budget was planned in tokens, so the tokens themselves always fit
            said = [t for t in ids if not engine.is_eog(t)]
            answer = tokens + said + engine.tokenize(ANSWER_PREFIX)
            answer_text = engine.detokenize(answer)
        return reasoning, len(ids), answer_text, answer

    def _flush(
        self,
        index: int,
        delta: dict[str, Any],
        lps: list[dict[str, Any]] | None,
        ids: list[int],
    ) -> None:
        """Send ``delta`` with the logprobs and token ids not streamed yet; clear them."""
        self._send(
            index,
            delta,
            logprobs=None if lps is None else list(lps),
            token_ids=list(ids) if self.req.get("return_token_ids") else None,
        )
        if lps is not None:
            lps.clear()
        ids.clear()

    def run_choice(self, index: int) -> ChoiceResult:
        """Generate choice ``index`` (reasoning first when asked)."""
        plan, req, engine = self.plan, self.req, self.engine
        reasoning = None
        reasoning_tokens = 0
        prompt = plan.prompt_tokens
        raw_prompts = [plan.prompt_text]
        if plan.reasoning is not None:
            reasoning, reasoning_tokens, prompt_text, prompt = self._reason(index, plan.reasoning)
            raw_prompts = [plan.prompt_text + REASONING_PREFIX, prompt_text]
        marker = TOOL_CALL_OPEN if plan.tool_mode == "auto" else None
        forced = plan.tool_mode == "forced"
        text = TextStream([] if forced else plan.stop, marker)
        echoed: list[dict[str, Any]] = []
        if self.echo_tokens:
            echoed = self.echo_entries()
        if plan.echo_text and self.emit is not None:
            self._send(
                index, {"content": plan.echo_text}, logprobs=echoed if self.echo_tokens else None
            )
        token_ids: list[int] = []
        logprobs: list[dict[str, Any]] | None = [] if self.top_logprobs is not None else None
        # tokens generated but not streamed yet (a tool call's, until it is parsed)
        pending_lp: list[dict[str, Any]] | None = [] if logprobs is not None else None
        pending_ids: list[int] = []
        raw = bytearray()
        traced: list[dict[str, Any]] = []
        watched: list[dict[str, Any]] = []
        limit = min(plan.max_tokens, engine.n_ctx - len(prompt))
        finish = None
        eog = False
        for step in engine.generate(
            prompt,
            sampling_of(req, index),
            max_tokens=plan.max_tokens,
            top_logprobs=self.top_logprobs,
            logprobs_mode=self.logprobs_mode,
            grammar=plan.grammar,
            lazy_trigger=marker,
            ignore_eos=bool(req.get("ignore_eos")),
            cancel=self.cancel,
            group=self.group if plan.reasoning is None else None,  # after reasoning: apart
            trace=plan.trace,
        ):
            self._first_token()
            if step.trace is not None:
                traced.append(step.trace)
            if step.watch is not None:
                watched.append(step.watch)
            token_ids.append(step.token_id)
            raw += engine.token_bytes(step.token_id)
            entry = logprob_content(engine, step) if logprobs is not None else None
            if entry is not None and logprobs is not None:
                logprobs.append(entry)
            if step.eog:  # streamed with finish_reason
                finish, eog = "stop", True
                break
            if entry is not None and pending_lp is not None:
                pending_lp.append(entry)
            pending_ids.append(step.token_id)
            delta = text.feed(step.piece)
            if self.emit is not None and not forced and (delta or not text.in_call):
                self._flush(index, {"content": delta}, pending_lp, pending_ids)
            if text.stopped is not None:
                finish = "stop"
                break
        if finish is None:
            # the budget ran out, or no token was allowed any more (extreme settings)
            finish = "length" if len(token_ids) >= limit else "stop"
        tail = text.feed(b"", final=True)
        if tail and self.emit is not None and not forced:
            self._send(index, {"content": tail}, logprobs=[] if logprobs is not None else None)
        content = text.text
        tool_calls = None
        if forced:
            call = parse_tool_call(content)
            if call is not None:
                tool_calls, content, finish = [call], "", "tool_calls"
        elif text.in_call:
            call = parse_tool_call(text.call_text)
            if call is not None:
                tool_calls, finish = [call], "tool_calls"
            else:  # a call cut short: its text is the content
                content += text.call_text
        if self.emit is not None:
            if tool_calls:
                calls = [{"index": i, **c} for i, c in enumerate(tool_calls)]
                self._flush(index, {"tool_calls": calls}, pending_lp, pending_ids)
            elif forced and content:
                self._flush(index, {"content": content}, pending_lp, pending_ids)
            elif text.in_call:
                self._flush(index, {"content": text.call_text}, pending_lp, pending_ids)
        if eog:
            pending_ids.append(token_ids[-1])
            if pending_lp is not None and logprobs:
                pending_lp.append(logprobs[-1])
        return ChoiceResult(
            index=index,
            content=plan.echo_text + content,
            reasoning=reasoning,
            tool_calls=tool_calls,
            finish_reason=finish,
            stop_reason=text.stopped,
            token_ids=token_ids,
            logprobs=None if logprobs is None else echoed + logprobs,
            logprobs_meta={} if logprobs is None else self.logprobs_meta(),
            reasoning_tokens=reasoning_tokens,
            raw_completion=raw.decode("utf-8", errors="replace"),
            raw_prompts=raw_prompts,
            rest_logprobs=pending_lp or [],
            rest_ids=pending_ids,
            trace=trace_dict(plan.trace, traced, watched, engine.token_bytes),
        )


def run_chat(
    engine: Engine,
    req: ChatRequest,
    plan: Plan,
    *,
    timing: ServerTiming,
    cancel: threading.Event,
    emit: Emit | None = None,
) -> dict[str, Any] | None:
    """Generate every choice; return the response dict (None when cancelled).

    With ``emit``, stream chunks are sent as they come, then the final chunks (finish
    reasons, usage when ``stream_options.include_usage``). With one slot the choices run one
    after the other; with the batch engine (``--parallel N``) each runs in a thread of its
    own, so they are decoded together and share the prompt's evaluation.
    """
    timing.started = time.perf_counter()
    run = ChatRun(engine, req, plan, timing=timing, cancel=cancel, emit=emit)
    n = req.get("n", 1)
    first_extra: dict[str, Any] = {}
    if req.get("return_token_ids"):
        first_extra["prompt_token_ids"] = plan.prompt_tokens
    mode = {"logprobs_mode": run.logprobs_mode} if run.top_logprobs is not None else {}
    first_extra.update(mode)

    def announce(i: int) -> None:
        """Choice ``i``'s first chunk (the first choice's carries the request's extras)."""
        if emit is not None:
            emit(
                run.chunk(
                    [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ],
                    **(first_extra if i == 0 else {}),
                )
            )

    def choice(i: int) -> ChoiceResult | None:
        """Choice ``i``, streamed after its first chunk; None once the request is cancelled."""
        r = run.run_choice(i)
        if cancel.is_set():
            return None
        if emit is not None:
            extra: dict[str, Any] = {"stop_reason": r.stop_reason}
            if req.get("raw_output"):
                extra["raw_output"] = raw_output(plan, r)
            extra.update(r.trace)
            run._send(
                i,
                {},
                finish=r.finish_reason,
                logprobs=r.rest_logprobs if r.logprobs is not None and r.rest_logprobs else None,
                token_ids=r.rest_ids if req.get("return_token_ids") and r.rest_ids else None,
                **extra,
            )
        return r

    results: list[ChoiceResult] = []
    if engine.batch is not None and n > 1:
        # decoded together, their prompt evaluated once (the batch engine shares it); a
        # stream interleaves their chunks, each with its index, as OpenAI's does
        if run.echo_tokens:
            run.echo_entries()  # once, before the choices read it
        for i in range(n):  # the stream starts as with one slot: index 0 with the extras
            announce(i)
        with ThreadPoolExecutor(n, thread_name_prefix="tmlab-choice") as pool:
            done = list(pool.map(choice, range(n)))  # a choice's error is raised here
        if any(r is None for r in done):
            return None
        results = [r for r in done if r is not None]
    else:
        for i in range(n):
            announce(i)
            r = choice(i)
            if r is None:
                return None
            results.append(r)
    total = usage(plan, results, cancel)  # cancel is the prompt-cache scope (app.py)
    timing.tokens = int(total.get("completion_tokens") or 0)
    perf = perf_metrics(plan, timing, results) if req.get("perf_metrics_in_response") else None
    if emit is not None:
        tail: dict[str, Any] = {}
        if (req.get("stream_options") or {}).get("include_usage"):
            tail["usage"] = total
        if perf is not None:
            tail["perf_metrics"] = perf
        if tail:
            emit(run.chunk([], **tail))
        return None

    body: dict[str, Any] = {
        "id": run.id,
        "object": "chat.completion",
        "created": run.created,
        "model": req.model,
        "choices": [choice_dict(req, plan, r) for r in results],
        "usage": total,
        **mode,
    }
    if perf is not None:
        body["perf_metrics"] = perf
    if req.get("return_token_ids"):
        body["prompt_token_ids"] = plan.prompt_tokens
    return body
