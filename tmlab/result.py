"""ChatResult: one chat-completions response, with typed accessors over the raw JSON.

A streamed response is reassembled (by the client) into the same JSON a non-streaming call
returns, so everything here reads one shape. Logprobs are read in the OpenAI shape and in the
legacy ``{tokens, token_logprobs, top_logprobs}`` shape; reasoning from ``message.reasoning``,
``message.reasoning_content`` or ``<think>…</think>`` inside the content.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from tmlab.client import Client
    from tmlab.repetition import Loop

__all__ = [
    "BranchOrigin",
    "ChatResult",
    "Choice",
    "SessionLimit",
    "Timing",
    "TokenLogprob",
    "TopLogprob",
    "Usage",
    "split_think",
]

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def split_think(content: str) -> tuple[str, str | None]:
    """Split ``<think>…</think>`` out of ``content``: returns ``(answer, reasoning)``.

    Handles an unclosed ``<think>`` (the answer was cut off while reasoning) and a closing tag
    without an opening one (some parsers drop the opening tag). ``reasoning`` is ``None`` when
    there is no tag at all.
    """
    start = content.find(THINK_OPEN)
    end = content.find(THINK_CLOSE)
    if start == -1 and end == -1:
        return content, None
    if start != -1 and (end == -1 or end < start):
        before = content[:start]
        rest = content[start + len(THINK_OPEN) :]
        end2 = rest.find(THINK_CLOSE)
        if end2 == -1:
            return before, rest
        return (before + rest[end2 + len(THINK_CLOSE) :]).lstrip("\n"), rest[:end2]
    if start == -1:
        return content[end + len(THINK_CLOSE) :].lstrip("\n"), content[:end]
    reasoning = content[start + len(THINK_OPEN) : end]
    answer = content[:start] + content[end + len(THINK_CLOSE) :]
    return answer.lstrip("\n"), reasoning


@dataclass(frozen=True)
class TopLogprob:
    """One alternative at a position: its token and log-probability."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    token_id: int | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """The generated token at one position, its log-probability and the alternatives."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    token_id: int | None = None
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class Usage:
    """Token counts of one response; ``None`` where the server did not say."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None

    @classmethod
    def from_raw(cls, usage: dict[str, Any] | None) -> Usage:
        """Read an OpenAI-style ``usage`` object."""
        if not isinstance(usage, dict):
            return cls()
        ptd = usage.get("prompt_tokens_details") or {}
        ctd = usage.get("completion_tokens_details") or {}
        return cls(
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            total_tokens=usage.get("total_tokens"),
            cached_tokens=ptd.get("cached_tokens") if isinstance(ptd, dict) else None,
            reasoning_tokens=ctd.get("reasoning_tokens") if isinstance(ctd, dict) else None,
        )


@dataclass(frozen=True)
class Timing:
    """Wall-clock timing measured by the client.

    ``latency_s``: request sent → last byte. ``ttft_s``: request sent → first content or
    reasoning token (streams; for a non-streaming call it equals the latency).
    ``tokens_per_s``: for streams, the tokens after the first over the time after the first,
    (completion tokens − 1) / (latency − ttft); otherwise completion tokens / latency
    (prompt processing included). ``None`` when the token count is unknown.
    """

    latency_s: float | None = None
    ttft_s: float | None = None
    tokens_per_s: float | None = None


@dataclass(frozen=True)
class SessionLimit:
    """The session's default ``max_tokens`` that a front end sent because none was given.

    ``tokens``: the default (for a branch: of the whole answer, prefix included);
    ``change``: how to change it where the request was made (``--max-tokens N`` in the
    magic …). The finish line names it when the answer stopped there.
    """

    tokens: int
    change: str


def _parse_legacy(lp: dict[str, Any]) -> list[TokenLogprob]:
    tokens = lp.get("tokens") or []
    values = lp.get("token_logprobs") or []
    tops = lp.get("top_logprobs") or []
    out = []
    for i, tok in enumerate(tokens):
        top_i = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        alts = tuple(TopLogprob(str(t), float(v)) for t, v in top_i.items() if v is not None)
        alts = tuple(sorted(alts, key=lambda a: -a.logprob))
        value = values[i] if i < len(values) else None
        out.append(
            TokenLogprob(str(tok), float(value) if value is not None else float("nan"), top=alts)
        )
    return out


def _token_id(item: dict[str, Any]) -> int | None:
    """The token id: ``token_id`` (vLLM, Fireworks, the embedded server) or ``id`` (llama.cpp's
    server)."""
    value = item.get("token_id")
    if value is None:
        value = item.get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_new = object.__new__
_set = object.__setattr__
_NAN = float("nan")


def _parse_openai(content: list[dict[str, Any]]) -> list[TokenLogprob]:
    # A long answer has hundreds of thousands of alternatives: the objects are made without
    # the frozen dataclasses' per-field ``__init__`` (same fields, same values), and the
    # common case (a float logprob, an int token_id or none) takes no function call.
    out: list[TokenLogprob] = []
    append = out.append
    for item in content:
        top: list[TopLogprob] = []
        add = top.append
        for t in item.get("top_logprobs") or ():
            lp = t.get("logprob")
            if type(lp) is not float:
                if lp is None:
                    continue
                lp = float(lp)
            tid = t.get("token_id")
            if type(tid) is not int:
                tid = _token_id(t)
            alt = _new(TopLogprob)
            _set(
                alt,
                "__dict__",
                {
                    "token": t.get("token", ""),
                    "logprob": lp,
                    "bytes": t.get("bytes"),
                    "token_id": tid,
                },
            )
            add(alt)
        value = item.get("logprob")
        if type(value) is not float:
            value = _NAN if value is None else float(value)
        tid = item.get("token_id")
        if type(tid) is not int:
            tid = _token_id(item)
        tok = _new(TokenLogprob)
        _set(
            tok,
            "__dict__",
            {
                "token": item.get("token", ""),
                "logprob": value,
                "bytes": item.get("bytes"),
                "token_id": tid,
                "top": tuple(top),
            },
        )
        append(tok)
    return out


def _has_logprobs(lp: Any) -> bool:
    """Whether :func:`parse_logprobs` of ``lp`` is a list (not ``None``), without parsing."""
    return isinstance(lp, dict) and (
        isinstance(lp.get("content"), list) or isinstance(lp.get("tokens"), list)
    )


def parse_logprobs(lp: Any) -> list[TokenLogprob] | None:
    """Read a choice's ``logprobs`` in either shape; ``None`` when there are none."""
    if not _has_logprobs(lp):
        return None
    # Making ~10⁵ objects triggers the cyclic garbage collector many times, and each pass
    # walks every object alive, the raw response's millions included: it is paused for the
    # parse (nothing made here is cyclic) and restored as it was.
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        if isinstance(lp.get("content"), list):
            return _parse_openai(lp["content"])
        return _parse_legacy(lp)
    finally:
        if paused:
            gc.enable()


@dataclass(frozen=True)
class Choice:
    """One choice of a response.

    ``logprobs`` is read from ``raw`` the first time it is used (a long answer with many
    alternatives has ~10⁵ of them; a result that never looks at them never pays for them);
    the objects are then kept, so every later access returns the same list.
    """

    index: int
    text: str
    reasoning: str | None
    tool_calls: list[dict[str, Any]]
    finish_reason: str | None
    logprobs: list[TokenLogprob] | None
    token_ids: list[int] | None
    raw: dict[str, Any] = field(repr=False)

    def __getattr__(self, name: str) -> Any:
        # Only reached for an attribute not set: ``logprobs`` of a choice read by from_raw,
        # parsed now from the raw choice and kept.
        if name == "logprobs" and "raw" in self.__dict__:
            value = parse_logprobs(self.__dict__["raw"].get("logprobs"))
            _set(self, "logprobs", value)
            return value
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def has_logprobs(self) -> bool:
        """Whether :attr:`logprobs` is a list (possibly empty) rather than ``None``, known
        without reading them."""
        if "logprobs" in self.__dict__:
            return self.__dict__["logprobs"] is not None
        return _has_logprobs(self.raw.get("logprobs"))

    @classmethod
    def from_raw(cls, choice: dict[str, Any]) -> Choice:
        """Read one element of ``choices`` (its ``logprobs`` when first used)."""
        msg = choice.get("message") or {}
        content = msg.get("content")
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        content = content or ""
        reasoning = msg.get("reasoning")
        if reasoning is None:
            reasoning = msg.get("reasoning_content")
        answer, inline = split_think(content)
        if inline is not None:
            reasoning = inline if reasoning is None else reasoning + inline
            content = answer
        self = _new(cls)
        for name, value in (
            ("index", int(choice.get("index", 0) or 0)),
            ("text", content),
            ("reasoning", reasoning),
            ("tool_calls", list(msg.get("tool_calls") or [])),
            ("finish_reason", choice.get("finish_reason")),
            ("token_ids", choice.get("token_ids")),
            ("raw", choice),
        ):
            _set(self, name, value)
        return self


@dataclass(frozen=True)
class BranchOrigin:
    """Where a branch came from: its parent answer, the position and the token chosen there.

    ``prefix_text`` is the answer before the branch's new text (the parent's own prefix, its
    tokens before ``position``, then ``token``); ``prefix_token_ids`` the same as token ids
    when known. ``prefix_logprob`` is the log-probability of that prefix by the parent's
    numbers (``None`` when unknown, e.g. after a text prefill); ``prefix_logprob +
    sequence_logprob`` is then the whole answer's. ``exact``: the server was sent the token
    ids (the embedded server), not just the text. ``parent_result``: the parent answer.
    """

    parent_id: int | None
    position: int
    token: str
    token_id: int | None
    token_logprob: float | None
    prefix_text: str
    prefix_bytes: bytes
    prefix_token_ids: tuple[int, ...] | None
    prefix_logprob: float | None
    exact: bool
    parent_result: ChatResult | None = field(default=None, repr=False, compare=False)
    """The parent answer itself (its tokens and alternatives), when it is in memory."""


NO_LOGPROBS_NOTE = (
    "logprobs were asked for but the server returned none (it lacks them, or ignored the "
    "field): the logprob columns are empty and sequence_logprob is None; tmlab.probe() says "
    "what this server returns, tmlab.needs('logprobs') switches to the embedded model."
)


_sends_branches: Callable[..., ChatResult] | None = None


def provide_branching(branch: Callable[..., ChatResult]) -> None:
    """Give :meth:`ChatResult.branch` the function that sends a branch. The package
    (``tmlab/__init__``, above every layer) calls it on import, so that this module, at the
    bottom, does not import the analyses that use it."""
    global _sends_branches
    _sends_branches = branch


class ChatResult:
    """One chat-completions response.

    ``text``, ``reasoning``, ``tool_calls``, ``finish_reason`` are those of the first choice;
    ``choices`` holds all. ``request`` is what was sent (never the API key), ``raw`` the JSON
    received (for streams: reassembled into the non-streaming shape).
    """

    def __init__(
        self,
        raw: dict[str, Any],
        *,
        request: dict[str, Any] | None = None,
        timing: Timing | None = None,
        complete: bool = True,
    ) -> None:
        self.raw = raw
        self.request = request or {}
        self.timing = timing or Timing()
        self.complete = complete
        self.history_id: int | None = None
        """The row in :func:`tmlab.client.history`, once recorded (``None``: history off)."""
        self.base_url: str | None = None  # the server that answered, set by the client
        self.parent: BranchOrigin | None = None  # set on the result of a branch
        self.session_limit: SessionLimit | None = None
        """Set by a front end that sent the session's default ``max_tokens``."""
        self.notes: list[str] = []
        """What tmlab changed in the answer as received, and why (e.g. a repeated prefix
        removed from a continuation's content); frames carry these in their notes."""
        choices = raw.get("choices") or []
        self.choices = sorted((Choice.from_raw(c) for c in choices), key=lambda c: c.index)
        self.usage = Usage.from_raw(raw.get("usage"))
        if self.logprobs_missing:
            self.notes.append(NO_LOGPROBS_NOTE)

    @property
    def logprobs_missing(self) -> bool:
        """Logprobs were asked for and the server returned none (it lacks them, or ignored
        the field): every logprob number of this answer is unknown, not zero."""
        return (
            bool(self.request.get("logprobs"))
            and self.complete
            and bool(self.choices)
            and not any(c.has_logprobs for c in self.choices)
        )

    @property
    def _first(self) -> Choice | None:
        return self.choices[0] if self.choices else None

    @property
    def text(self) -> str:
        """The answer text of the first choice ('' if none)."""
        return self._first.text if self._first else ""

    @property
    def reasoning(self) -> str | None:
        """The reasoning of the first choice, if the model gave any."""
        return self._first.reasoning if self._first else None

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """The tool calls of the first choice."""
        return self._first.tool_calls if self._first else []

    @property
    def finish_reason(self) -> str | None:
        """Why the first choice stopped: 'stop', 'length', 'tool_calls' …"""
        return self._first.finish_reason if self._first else None

    @property
    def model(self) -> str | None:
        """The model that answered, as the server names it."""
        return self.raw.get("model") or self.request.get("model")

    @property
    def id(self) -> str | None:
        """The response id."""
        return self.raw.get("id")

    @property
    def prompt_token_ids(self) -> list[int] | None:
        """Token ids of the prompt, when the server returned them (return_token_ids)."""
        return self.raw.get("prompt_token_ids")

    @property
    def perf_metrics(self) -> dict[str, Any] | None:
        """Server-side performance metrics (perf_metrics_in_response)."""
        return self.raw.get("perf_metrics")

    @property
    def full_text(self) -> str:
        """The whole answer: the prefix it continued (branch, prefill), then :attr:`text`."""
        if self.parent is not None:
            return self.parent.prefix_text + self.text
        if self.request.get("continue_final_message"):
            last = (self.request.get("messages") or [{}])[-1]
            content = last.get("content") if isinstance(last, dict) else None
            return (content if isinstance(content, str) else "") + self.text
        return self.text

    @property
    def sequence_logprob(self) -> float | None:
        """Sum of the generated tokens' logprobs (first choice); see :mod:`tmlab.likelihood`."""
        from tmlab.likelihood import sequence_logprob

        return sequence_logprob(self)

    @property
    def mean_logprob(self) -> float | None:
        """Mean logprob per generated token (first choice); see :mod:`tmlab.likelihood`."""
        from tmlab.likelihood import mean_logprob

        return mean_logprob(self)

    @property
    def perplexity(self) -> float | None:
        """``exp(-mean_logprob)`` (first choice); see :mod:`tmlab.likelihood`."""
        from tmlab.likelihood import perplexity

        return perplexity(self)

    @property
    def loop(self) -> Loop | None:
        """The repetition loop the answer ends in, if any (see :mod:`tmlab.repetition`)."""
        from tmlab.repetition import answer_loop

        return answer_loop(self)

    @property
    def stopped_at_session_limit(self) -> bool:
        """True when the answer stopped at the session's default ``max_tokens`` (sent by a
        front end because none was given), not at a limit the user set."""
        limit = self.session_limit
        if limit is None or self.finish_reason != "length":
            return False
        sent = self.request.get("max_tokens")
        used = self.usage.completion_tokens
        # "length" also means the context was full; then fewer tokens came than were allowed
        return not (isinstance(sent, int) and used is not None and used < sent)

    def branch(
        self,
        position: int,
        token: str | int | None = None,
        *,
        client: Client | None = None,
        **overrides: Any,
    ) -> ChatResult:
        """Continue this answer from ``position`` with ``token`` instead of what was said.

        Same as :func:`tmlab.analysis.branching.branch`: the answer up to ``position``, then
        ``token`` (an alternative's text or id; default: the most likely alternative not generated),
        then the model goes on. (A result is data; sending a branch belongs to the analyses
        above it, which the package hands in: :func:`provide_branching`.) ``overrides``
        change parameters (``stream=True`` and ``on_delta`` stream the new text).
        """
        if _sends_branches is None:  # pragma: no cover - tmlab/__init__ sets it on import
            raise RuntimeError("import tmlab first: it provides the branch function")
        return _sends_branches(self, position, token, client=client, **overrides)

    def logprobs_frame(self, long: bool = False) -> pd.DataFrame:
        """Same as :func:`tmlab.logprobs_frame`."""
        from tmlab.frames import logprobs_frame

        return logprobs_frame(self, long=long)

    def usage_frame(self, prices: dict[str, Any] | None = None) -> pd.DataFrame:
        """Same as :func:`tmlab.usage_frame`."""
        from tmlab.frames import usage_frame

        return usage_frame(self, prices=prices)

    def trace_frame(self, choice: int | None = None) -> pd.DataFrame:
        """Same as :func:`tmlab.trace_frame`: the sampler's stages, one row per (position,
        stage, candidate)."""
        from tmlab.frames import trace_frame

        return trace_frame(self, choice)

    def logprobs_for_frame(self) -> pd.DataFrame:
        """Same as :func:`tmlab.logprobs_for_frame`: given tokens at every position."""
        from tmlab.frames import logprobs_for_frame

        return logprobs_for_frame(self)

    def tokens_html(self, choice: int = 0) -> str:
        """The token heatmap: same as :func:`tmlab.display.tokens_html` (displays in Jupyter)."""
        from tmlab.display import tokens_html

        return tokens_html(self, choice=choice)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary: request, raw response, timing.

        Everything in it is a copy: changing it changes nothing in this result.
        """
        import copy
        from dataclasses import asdict

        return {
            "request": copy.deepcopy(self.request),
            "response": copy.deepcopy(self.raw),
            "timing": asdict(self.timing),
            "complete": self.complete,
        }

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        text = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        return (
            f"ChatResult(model={self.model!r}, text={text!r}, "
            f"finish_reason={self.finish_reason!r}, usage={self.usage.completion_tokens}"
            f" completion tokens)"
        )

    def _repr_html_(self) -> str:
        from tmlab.display import chat_result_html

        return chat_result_html(self)

    def _repr_markdown_(self) -> str:
        from tmlab.display import chat_result_markdown

        return chat_result_markdown(self)
