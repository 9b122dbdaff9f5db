"""The one continuation check: does a server go on from a final assistant message?

Branching, ``%%tmchat --prefill``, :func:`tmlab.continuations`, :func:`tmlab.score`'s
continuation method, :func:`tmlab.classify` and :func:`tmlab.probe` all ask it here, once per
(base URL, model); the answer is kept in :mod:`tmlab.capabilities`.

The check asks the server, greedily and for 3 tokens, to go on from ``1, 2, 3, 4,`` after
"Count from 1 to 10":

1. with ``continue_final_message=True, add_generation_prompt=False`` (vLLM's names): a server
   that continues says ``5``. A 400 (the fields refused) or another answer (a new turn) means
   it does not continue.
2. if it does, once more without those fields: a server that still says ``5`` continues a
   final assistant message whatever the flags ("always prefills", as llama.cpp's server does).

Either answer's ``message.content`` may repeat the prefix before the new text (llama.cpp's
server does in non-streamed responses; its streamed deltas and logprobs hold only the new
tokens): the check recognises it and says so (``echoes_prefix``), and :func:`strip_prefix`
removes the prefix from such answers, noting it in the result's ``notes``.

A request that fails for a reason unrelated to the capability (a timeout, a connection error,
a 5xx, a 429, …) gives the verdict *unknown* with the error; it is not stored, so the next use
asks again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from tmlab import capabilities
from tmlab.capabilities import Continuation
from tmlab.client.history import request_source
from tmlab.errors import APIError, BadRequestError, TmlabError

if TYPE_CHECKING:
    from tmlab.client import AsyncClient, Client
    from tmlab.result import ChatResult

__all__ = [
    "CONTINUE",
    "PROBE_MESSAGES",
    "Continuation",
    "acheck",
    "check",
    "strip_prefix",
]

CONTINUE: dict[str, Any] = {"continue_final_message": True, "add_generation_prompt": False}
"""The request fields (vLLM's names) that make a server continue the final assistant turn."""

PROBE_MESSAGES: tuple[dict[str, str], ...] = (
    {"role": "user", "content": "Count from 1 to 10, separated by commas."},
    {"role": "assistant", "content": "1, 2, 3, 4,"},
)
"""The check's conversation: a server that continues the final message goes on with ``5``."""

PREFIX = PROBE_MESSAGES[1]["content"]
ASK: dict[str, Any] = {"temperature": 0, "max_tokens": 3}
"""The check's sampling: greedy, three tokens."""

PREFIX_NOTE = (
    "The server returned the prefix in message.content (prefix + new text, as llama.cpp's "
    "server does when not streaming); tmlab removed it: text is the new text, full_text the "
    "whole answer."
)

_LACKS = (
    "; branching and prefill need a server that continues a final assistant message: "
    "vLLM (continue_final_message), llama.cpp's server (assistant prefill) or tmlab's "
    "embedded server. Nothing was sent as a branch."
)


def _goes_on(text: str) -> tuple[bool, bool]:
    """(the answer continues the count, its content repeats the prefix first)."""
    if text.startswith(PREFIX) and text[len(PREFIX) :].lstrip().startswith("5"):
        return True, True
    return text.lstrip().startswith("5"), False


def _where(base_url: str | None, model: str | None) -> str:
    return f"the server at {base_url} (model {model!r})"


def _unknown(base_url: str | None, model: str | None, exc: APIError, sent: int) -> Continuation:
    said = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
    return Continuation(
        None,
        came_back=said,
        reason=f"{_where(base_url, model)} could not be checked ({said})",
        requests=sent,
        error=exc,
    )


def _refused(base_url: str | None, model: str | None, exc: BadRequestError) -> Continuation:
    said = " ".join(str(exc).split())[:200]
    return Continuation(
        False,
        came_back=f"refused: {said}",
        reason=f"{_where(base_url, model)} refused continue_final_message ({exc}){_LACKS}",
        requests=1,
    )


def _new_turn(base_url: str | None, model: str | None, said: str) -> Continuation:
    return Continuation(
        False,
        came_back=f"{said[:60]!r} (a new turn)",
        reason=f"{_where(base_url, model)} does not continue a final assistant message: asked "
        f"to go on from {PREFIX!r} (greedy) it answered {said[:60]!r}, which reads as a new "
        f"turn{_LACKS}",
        requests=1,
    )


def _decide(
    with_flags: ChatResult, plain: ChatResult | None, plain_error: APIError | None
) -> tuple[bool | None, bool, str]:
    """(always prefills, content repeats the prefix, what came back) of a server that continues."""
    said = with_flags.text
    _, echoes = _goes_on(said)
    parts = [f"with the fields: {said!r}"]
    always: bool | None = None
    if plain is not None:
        again, echoes_again = _goes_on(plain.text)
        echoes = echoes or (again and echoes_again)
        always = again
        parts.append(f"without: {plain.text!r}")
    elif plain_error is not None:
        parts.append(f"without: {type(plain_error).__name__}")
    if echoes:
        parts.append("content repeats the prefix (tmlab removes it)")
    return always, echoes, "; ".join(parts)


def _tmlab_server(models: list[dict[str, Any]], model: str | None) -> bool:
    return any(m.get("id") == model and m.get("owned_by") == "tmlab" for m in models)


def _keep(base_url: str | None, model: str | None, verdict: Continuation) -> Continuation:
    if verdict.error is None:  # only answers are kept: an error asks again next time
        capabilities.of(base_url, model).continuation = verdict
    return verdict


def _known(base_url: str | None, model: str | None, refresh: bool) -> Continuation | None:
    caps = None if refresh else capabilities.find(base_url, model)
    return caps.continuation if caps is not None else None


@dataclasses.dataclass(frozen=True)
class _Ask:
    """One request of the check: a chat with ``params``, or ``GET /models`` (no messages)."""

    messages: list[dict[str, str]] | None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)


def _plan(url: str | None, model: str | None) -> Generator[_Ask, Any, Continuation]:
    """The check without I/O: yields the requests to send, receives their results (or their
    errors, thrown in), returns the verdict. :func:`check` and :func:`acheck` drive it."""
    messages = list(PROBE_MESSAGES)
    try:
        first = yield _Ask(messages, {**ASK, **CONTINUE})
    except BadRequestError as exc:
        return _keep(url, model, _refused(url, model, exc))
    except APIError as exc:
        return _unknown(url, model, exc, 1)
    if not _goes_on(first.text)[0]:
        return _keep(url, model, _new_turn(url, model, first.text))
    plain: ChatResult | None = None
    plain_error: APIError | None = None
    try:
        plain = yield _Ask(messages, dict(ASK))
    except APIError as exc:
        plain_error = exc
    try:
        models = yield _Ask(None)
    except TmlabError:
        models = []
    return _finish(url, model, first, plain, plain_error, models)


def _step(
    plan: Generator[_Ask, Any, Continuation], got: Any = None, exc: TmlabError | None = None
) -> tuple[_Ask | None, Continuation | None]:
    """Give ``plan`` the last request's result (or error): (the next request, None) or
    (None, the verdict)."""
    try:
        return (plan.throw(exc) if exc is not None else plan.send(got)), None
    except StopIteration as stop:
        return None, stop.value


def check(client: Client, model: str | None, *, refresh: bool = False) -> Continuation:
    """The continuation check on ``client``'s server (1–2 tiny chat requests and a
    ``/models``, or none when known; ``refresh=True`` asks again). Its requests are in the
    history with ``source='probe'``."""
    known = _known(client.base_url, model, refresh)
    if known is not None:
        return known
    plan = _plan(client.base_url, model)
    ask, verdict = _step(plan)
    with request_source("probe"):
        while ask is not None:
            try:
                got = (
                    client.models()
                    if ask.messages is None
                    else client.chat(ask.messages, model=model, **ask.params)
                )
            except TmlabError as exc:
                ask, verdict = _step(plan, exc=exc)
            else:
                ask, verdict = _step(plan, got)
    assert verdict is not None
    return verdict


async def acheck(ac: AsyncClient, model: str | None, *, refresh: bool = False) -> Continuation:
    """:func:`check` on an :class:`~tmlab.AsyncClient`."""
    known = _known(ac.base_url, model, refresh)
    if known is not None:
        return known
    plan = _plan(ac.base_url, model)
    ask, verdict = _step(plan)
    with request_source("probe"):
        while ask is not None:
            try:
                got = await (
                    ac.models()
                    if ask.messages is None
                    else ac.chat(ask.messages, model=model, **ask.params)
                )
            except TmlabError as exc:
                ask, verdict = _step(plan, exc=exc)
            else:
                ask, verdict = _step(plan, got)
    assert verdict is not None
    return verdict


def _finish(
    url: str | None,
    model: str | None,
    first: ChatResult,
    plain: ChatResult | None,
    plain_error: APIError | None,
    models: list[dict[str, Any]],
) -> Continuation:
    always, echoes, came_back = _decide(first, plain, plain_error)
    verdict = Continuation(
        True,
        always_prefills=always,
        echoes_prefix=echoes,
        token_ids=_tmlab_server(models, model),
        came_back=came_back,
        requests=2,
    )
    if plain_error is not None and not isinstance(plain_error, BadRequestError):
        # it continues; whether it always prefills is not known: ask again next time
        return dataclasses.replace(verdict, error=plain_error)
    return _keep(url, model, verdict)


def strip_prefix(res: ChatResult, prefix: str, *, echoes: bool) -> ChatResult:
    """Remove ``prefix`` from the start of ``res``'s answer where the response shows it is the
    prefix repeated, not new text; say so in ``res.notes``.

    Shown by the logprobs (the answer's tokens spell exactly the text after the prefix) or,
    without logprobs, by the continuation check (``echoes``: this server repeats the prefix
    in a non-streamed answer). A streamed answer is never touched: its deltas hold only the
    new text.
    """
    if not prefix or res.request.get("stream") or not res.choices:
        return res
    first = res.choices[0]
    if not first.text.startswith(prefix):
        return res
    rest = first.text[len(prefix) :]
    if first.logprobs:
        spelled = b"".join(
            bytes(t.bytes) if t.bytes is not None else t.token.encode("utf-8")
            for t in first.logprobs
        )
        shown = spelled.decode("utf-8", errors="replace") == rest
    else:
        shown = echoes
    if not shown:
        return res
    res.choices[0] = dataclasses.replace(first, text=rest)
    if PREFIX_NOTE not in res.notes:
        res.notes.append(PREFIX_NOTE)
    return res
