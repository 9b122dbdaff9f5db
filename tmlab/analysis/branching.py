"""Branching: "what if the model had said X here?" — continue an answer from any token.

:func:`branch` takes an answer (a :class:`~tmlab.ChatResult` with logprobs), keeps its tokens
before ``position``, puts ``token`` (an alternative the server returned there) at
``position`` and lets the model go on, in one request: the original messages, then an
assistant message holding that prefix, sent with ``continue_final_message=true`` and
``add_generation_prompt=false`` (vLLM's names and meaning), so that the server continues the
message instead of starting a new turn. The new result's :attr:`~tmlab.ChatResult.parent`
says where it came from; its :attr:`~tmlab.ChatResult.text`, logprobs and usage cover only
the new tokens, :attr:`~tmlab.ChatResult.full_text` is prefix + new text.

**Exact tokens.** A text can tokenise differently from the tokens it came from (``"Hel"`` +
``"lo"`` re-tokenises as ``"Hello"``), so the embedded server is also sent the prefix's
token ids (``continue_token_ids``), which it appends verbatim after the open assistant header:
the branch continues from exactly the answer's tokens and the chosen one. Other servers get
the text (``parent.exact`` is then ``False``).

**Other servers.** A server that does not know ``continue_final_message`` would silently
answer a new turn, which must never pass for a branch. So before the first branch (or
prefill) to a server other than the embedded one, :func:`ensure_continues` consults the one
continuation check (:mod:`tmlab.analysis.continuation_check`, asked once per (base URL, model)):
unless the server goes on from ``1, 2, 3, 4,`` with ``5`` it raises :class:`ContinuationError` and
nothing is sent as a branch. A server that always prefills (llama.cpp's) continues too; one
that repeats the prefix in a non-streamed answer's ``content`` has it removed (the result's
``notes`` say so).

The history records a branch's row with ``parent_id``, ``branch_position`` and
``branch_token``; :func:`tmlab.tree` shows the tree.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tmlab.analysis import continuation_check as continuation
from tmlab.analysis.continuation_check import CONTINUE, PROBE_MESSAGES, strip_prefix
from tmlab.capabilities import Continuation
from tmlab.client.history import recalled, remember, stored_answer
from tmlab.client.settings import LENGTH_LIMITS
from tmlab.errors import ContinuationError, ParameterError
from tmlab.params import PARAMS
from tmlab.result import BranchOrigin

if TYPE_CHECKING:
    from tmlab.client import Client
    from tmlab.result import ChatResult, SessionLimit, TokenLogprob, TopLogprob

__all__ = [
    "CHANGE_LIMIT",
    "PROBE_MESSAGES",
    "BranchOrigin",
    "ContinuationError",
    "branch",
    "continue_final",
    "ensure_continues",
    "remember",
    "result_of",
]

# Parameters of the parent request that a branch does not take over: who/how (set anew),
# the continuation's own fields, and what cannot apply to a continuation (several choices,
# echo of the prompt, a reasoning phase, which would come after the prefix).
_NOT_INHERITED = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "continue_final_message",
        "add_generation_prompt",
        "continue_token_ids",
        "echo",
        "echo_last",
        "n",
        "reasoning_effort",
        "thinking",
    }
)


# -- results by history id (for `%%tmchat --branch ID:POS`) --------------------------------


def result_of(id: int) -> ChatResult:
    """The result of history row ``id``: this session's, while it is in memory (a variable,
    ``Out[n]``, the Explorer), else rebuilt from the response the history stored with it.

    A branch needs the answer's tokens and alternatives; the history stores them for answers
    asked with logprobs (since schema version 3), not for others.
    """
    res = recalled(int(id))
    if res is None:
        res = _stored(int(id))
    if res is None:
        raise ParameterError(
            "id",
            f"history row {id} has no stored tokens and alternatives, which a branch needs: "
            "it is not in the history, or was asked without logprobs (or recorded before "
            "tmlab kept them)",
            "the id of an answer asked with logprobs=True, top_logprobs=N",
        )
    return res


def _stored(id: int) -> ChatResult | None:
    """History row ``id`` as a result, when the history stored its response."""
    from tmlab.result import ChatResult

    row = stored_answer(id)
    if row is None:
        return None
    messages = row["messages"] or []
    request = {**(row["params"] or {}), "model": row["model"], "messages": messages}
    res = ChatResult(row["raw"], request=request, complete=bool(row["complete"]))
    res.base_url = row["base_url"]
    if row["parent_id"] is not None and request.get("continue_final_message") and messages:
        # a branch: its prefix is the assistant message it continued (its ids, when sent)
        prefix = _content(messages[-1])
        ids = request.get("continue_token_ids")
        ids = tuple(int(t) for t in ids) if isinstance(ids, list) else None
        res.parent = BranchOrigin(
            parent_id=int(row["parent_id"]),
            position=int(row["branch_position"] or 0),
            token=row["branch_token"] or "",
            token_id=ids[-1] if ids else None,
            token_logprob=None,
            prefix_text=prefix,
            prefix_bytes=prefix.encode("utf-8"),
            prefix_token_ids=ids,
            prefix_logprob=row["prefix_logprob"],
            exact=ids is not None,
        )
    if request.get("continue_final_message") and messages:
        strip_prefix(res, _content(messages[-1]), echoes=False)  # only where logprobs show it
    res.history_id = id
    remember(res)
    return res


# -- servers -----------------------------------------------------------------------------


EMBEDDED = Continuation(True, always_prefills=False, token_ids=True, came_back="tmlab's server")
"""The embedded server continues, and takes the prefix's token ids."""


def ensure_continues(client: Client, model: str) -> Continuation:
    """The continuation check's answer for (base URL, model); raises unless it continues.

    Asked once per (base URL, model) (:func:`tmlab.analysis.continuation_check.check`: two tiny
    greedy requests, recorded in the history like any other), none for the embedded server. Raises
    :class:`ContinuationError` naming what the server lacks (remembered: a refusal costs no
    second request), or the request's own error when the check could not be made (a
    timeout, a 5xx: not remembered, the next use asks again).
    """
    if client.embedded:
        return EMBEDDED
    known = continuation.check(client, model)
    if known.continues is None and known.error is not None:
        raise known.error
    if not known.continues:
        raise ContinuationError(known.reason)
    return known


def _client_for(res: ChatResult) -> Client:
    """A client for the server that gave ``res`` (the embedded one: as configured)."""
    from tmlab.client import Client, local

    url = res.base_url
    if url is None or url.rstrip("/") == local.shared_url():
        return Client()
    return Client(base_url=url)


# -- choosing the token ------------------------------------------------------------------


def _bytes(t: TokenLogprob | TopLogprob) -> bytes:
    return bytes(t.bytes) if t.bytes is not None else t.token.encode("utf-8")


def _same(a: TokenLogprob | TopLogprob, b: TokenLogprob | TopLogprob) -> bool:
    if a.token_id is not None and b.token_id is not None:
        return a.token_id == b.token_id
    return _bytes(a) == _bytes(b)


def _pick(at: TokenLogprob, token: str | int | None, position: int) -> TokenLogprob | TopLogprob:
    """The token to put at ``position``: one of the alternatives returned there."""
    shown = ", ".join(repr(t.token) for t in at.top) or "none"
    if token is None:
        for alt in at.top:
            if not _same(alt, at):
                return alt
        raise ParameterError(
            "token",
            f"no alternative to {at.token!r} was returned at position {position} "
            f"(alternatives: {shown})",
            "ask the answer with logprobs=True and top_logprobs ≥ 2, or name the token",
        )
    if isinstance(token, bool) or not isinstance(token, str | int):
        raise ParameterError("token", f"token={token!r}", "an alternative's text or token id")
    candidates: Sequence[TokenLogprob | TopLogprob] = [*at.top, at]
    for cand in candidates:
        if (isinstance(token, int) and cand.token_id == token) or (
            isinstance(token, str) and cand.token == token
        ):
            return cand
    raise ParameterError(
        "token",
        f"token={token!r} is not among the alternatives returned at position {position}",
        f"one of {shown} (or their token ids)",
    )


# -- the branch --------------------------------------------------------------------------


def _token_ids(choice: Any) -> list[int] | None:
    entries = choice.logprobs or []
    if entries and all(e.token_id is not None for e in entries):
        return [int(e.token_id) for e in entries]
    ids = choice.token_ids
    if isinstance(ids, list) and len(ids) >= len(entries):
        return [int(t) for t in ids]
    return None


def _origin(res: ChatResult, position: int, token: str | int | None) -> BranchOrigin:
    """Where a branch of ``res`` at ``position`` starts (``exact`` is decided on sending)."""
    if not res.choices:
        raise ParameterError("position", "this result has no answer to branch", "a result")
    choice = res.choices[0]
    entries = choice.logprobs
    if not entries:
        raise ParameterError(
            "position",
            "branching needs the answer's tokens and their alternatives, and this answer "
            "has no logprobs",
            "an answer asked with logprobs=True, top_logprobs=N",
        )
    if res.reasoning:
        raise ParameterError(
            "position",
            "this answer reasoned before answering; its reasoning is part of the context "
            "its tokens came from, which a continuation cannot reproduce",
            "an answer without reasoning (reasoning_effort='none')",
        )
    if res.tool_calls:
        raise ParameterError("position", "this answer is a tool call", "a text answer")
    if isinstance(position, bool) or not isinstance(position, int):
        raise ParameterError("position", f"position={position!r}", "an int")
    if not 0 <= position < len(entries):
        raise ParameterError(
            "position",
            f"position={position} is outside the answer's {len(entries)} tokens",
            f"0..{len(entries) - 1}",
        )
    chosen = _pick(entries[position], token, position)
    before = entries[:position]
    base_bytes, base_lp = b"", 0.0
    base_ids: tuple[int, ...] = ()
    base: tuple[int, ...] | None = ()
    if res.request.get("continue_final_message"):  # the parent continued a prefix itself
        if res.parent is not None:
            base_bytes = res.parent.prefix_bytes
            base = res.parent.prefix_token_ids
            lp = res.parent.prefix_logprob
        else:  # a prefill: its text, and its ids when they were sent
            last = (res.request.get("messages") or [{}])[-1]
            base_bytes = _content(last).encode("utf-8")
            ids = res.request.get("continue_token_ids")
            base = tuple(ids) if isinstance(ids, list) else None
            lp = None
        base_ids = base or ()
        base_lp = lp if lp is not None else math.nan
    ids = _token_ids(choice)
    prefix_ids = (
        (*base_ids, *ids[:position], int(chosen.token_id))
        if base is not None and ids is not None and chosen.token_id is not None
        else None
    )
    prefix_bytes = base_bytes + b"".join(_bytes(e) for e in before) + _bytes(chosen)
    lp_sum = base_lp + math.fsum(e.logprob for e in before) + chosen.logprob
    return BranchOrigin(
        parent_id=res.history_id,
        position=position,
        token=chosen.token,
        token_id=chosen.token_id,
        token_logprob=chosen.logprob if math.isfinite(chosen.logprob) else None,
        prefix_text=prefix_bytes.decode("utf-8", errors="replace"),
        prefix_bytes=prefix_bytes,
        prefix_token_ids=prefix_ids,
        prefix_logprob=lp_sum if math.isfinite(lp_sum) else None,
        exact=False,
    )


def _content(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def _inherited(res: ChatResult, used: int, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The parent's parameters for a branch: the same settings, the same length budget."""
    params = {k: v for k, v in res.request.items() if k not in _NOT_INHERITED}
    for name in LENGTH_LIMITS:
        limit = params.get(name)
        if isinstance(limit, int) and not isinstance(limit, bool):
            params[name] = max(1, limit - used)  # the whole answer keeps the parent's limit
    params.update(overrides)
    return params


def continue_final(
    client: Client,
    messages: Sequence[Mapping[str, Any]],
    prefix: str,
    *,
    model: str | None = None,
    token_ids: Sequence[int] | None = None,
    **params: Any,
) -> ChatResult:
    """Send ``messages`` with an assistant message ``prefix`` for the model to continue.

    The prefill behind ``%%tmchat --prefill`` and :func:`branch`. The server is checked
    first (:func:`ensure_continues`) unless it is the embedded one; ``token_ids`` (the
    prefix's exact tokens) are sent only to a server that honours them. ``params`` are
    :meth:`Client.chat`'s (``stream``, ``on_delta``, ``extra_body`` included).
    """
    if not isinstance(prefix, str):
        raise ParameterError("prefix", f"prefix={prefix!r}", "a string")
    name = model or client.model
    if name is None:  # a loopback server without a configured model: ask it
        client._learn_models(client.models())
        name = client.model
    if name is None:
        raise ParameterError("model", "no model to continue with", "a model name")
    capability = ensure_continues(client, name)
    cont: dict[str, Any] = dict(CONTINUE)
    if token_ids is not None and capability.token_ids:
        cont["continue_token_ids"] = [int(t) for t in token_ids]
    extra = dict(params.pop("extra_body", None) or {})
    for key in [k for k in params if k not in PARAMS and k not in _CHAT_KWARGS]:
        extra[key] = params.pop(key)  # parameters this table does not know, sent as given
    sent = [dict(m) for m in messages] + [{"role": "assistant", "content": prefix}]
    res = client.chat(sent, model=name, extra_body=extra or None, **params, **cont)
    return strip_prefix(res, prefix, echoes=capability.echoes_prefix)


_CHAT_KWARGS = frozenset({"stream", "on_delta", "system"})


def branch(
    res: ChatResult,
    position: int,
    token: str | int | None = None,
    *,
    client: Client | None = None,
    **overrides: Any,
) -> ChatResult:
    """Continue ``res`` from ``position`` with ``token`` instead of what the model said.

    ``token``: an alternative's text or token id as returned at ``position`` (default: the
    most likely one that was not generated). The branch keeps the parent's messages and
    parameters (``overrides`` change them; ``stream=True`` with ``on_delta`` streams the new
    text only) and the parent's length budget: ``max_tokens`` counts the prefix too (a parent
    sent without a length limit: the branch gets the session's default, ``%tmconfig
    max_tokens``, for its new tokens). It is
    sent to ``client``, else to the server that answered ``res`` (its key from the
    environment). Returns the new :class:`~tmlab.ChatResult`, whose ``parent`` is a
    :class:`BranchOrigin`; its history row names the parent, position and token.
    """
    from tmlab.client import AsyncClient
    from tmlab.client.history import branch_origin

    if isinstance(client, AsyncClient):
        raise ParameterError("client", "branch() is synchronous", "a tmlab.Client")
    origin = _origin(res, position, token)
    messages = list(res.request.get("messages") or [])
    if res.request.get("continue_final_message") and messages:
        messages.pop()  # the parent's own prefix is in origin.prefix_text
    if not messages:
        raise ParameterError("position", "this result does not say what was asked", "a result")
    params = _inherited(res, position + 1, overrides)
    mark = _session_mark(res, params, overrides)
    own = client is None
    target = _client_for(res) if client is None else client
    known = dataclasses.replace(origin, parent_result=res)
    try:
        model = str(res.request.get("model") or res.model or "") or None
        capability = ensure_continues(target, model) if model else None
        exact = (
            origin.prefix_token_ids is not None and capability is not None and capability.token_ids
        )
        known = dataclasses.replace(known, exact=exact)
        with branch_origin(origin.parent_id, origin.position, origin.token, origin.prefix_logprob):
            new = continue_final(
                target,
                messages,
                origin.prefix_text,
                model=model,
                token_ids=origin.prefix_token_ids if exact else None,
                **params,
            )
    except BaseException as exc:  # a stopped or broken stream: its partial is a branch too
        from tmlab.result import ChatResult

        partial = getattr(exc, "partial", None)
        if isinstance(partial, ChatResult):
            partial.parent = known
            partial.session_limit = mark
        raise
    finally:
        if own:
            target.close()
    new.parent = known
    new.session_limit = mark
    return new


CHANGE_LIMIT = "pass max_tokens=N, or `%tmconfig max_tokens=N|off`, to change"
"""How to change the session's default length limit from code."""


def _session_mark(
    res: ChatResult, params: dict[str, Any], overrides: Mapping[str, Any]
) -> SessionLimit | None:
    """The session's default length limit of a branch, added to ``params`` when needed.

    A parent sent with a length limit passes its budget on (:func:`_inherited`); when that
    limit was the session's default, the branch's is too. A parent sent without one (plain
    ``client.chat``) gets the session's default for the branch's new tokens.
    """
    from tmlab.client.settings import session_limit
    from tmlab.result import SessionLimit

    limit = session_limit(params)
    if limit is not None:
        params["max_tokens"] = limit
        return SessionLimit(limit, CHANGE_LIMIT)
    known = res.session_limit
    if known is not None and not any(n in overrides for n in LENGTH_LIMITS):
        return SessionLimit(known.tokens, CHANGE_LIMIT)
    return None
