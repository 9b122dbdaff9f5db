"""``%%tmchat --prefill TEXT`` and ``--branch ID:POS[:TOKEN]``: the magic's continuations.

:func:`send` makes the one request of a ``%%tmchat`` cell: a plain chat, a prefill (the
answer starts with TEXT and the model continues it, :func:`tmlab.analysis.branching.continue_final`)
or a branch of an answer of this session (:meth:`tmlab.ChatResult.branch`). :func:`note`
says what a continued answer continues, for the footer of its view.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tmlab.client import Client
    from tmlab.client.stream import Delta
    from tmlab.jupyter.flags import Flags
    from tmlab.result import ChatResult

__all__ = ["CHANGE_LIMIT", "continued_note", "send"]


CHANGE_LIMIT = "`--max-tokens N` or `%tmconfig max_tokens=N|off` to change"
"""How to change the session's default length limit from a ``%%tmchat`` cell."""


def send(
    client: Client,
    flags: Flags,
    messages: list[dict[str, str]],
    on_delta: Callable[[Delta], Any] | None,
) -> ChatResult:
    """The cell's request: chat, prefill or branch, streamed to ``on_delta`` when given.

    Without ``--max-tokens`` (or ``--max-completion-tokens``) the session's default
    ``max_tokens`` is sent (:func:`tmlab.client.settings.session_limit`); a branch keeps its
    parent's budget, or gets the default when the parent had none.
    """
    from tmlab.analysis.branching import continue_final, result_of
    from tmlab.client.settings import session_limit
    from tmlab.result import SessionLimit

    stream: dict[str, Any] = {"stream": flags.stream, "on_delta": on_delta}
    params = dict(flags.params)
    limit = None if flags.branch is not None else session_limit(params)
    if limit is not None:
        params["max_tokens"] = limit

    def mark(res: ChatResult) -> ChatResult:
        known = res.session_limit
        if limit is not None:
            res.session_limit = SessionLimit(limit, CHANGE_LIMIT)
        elif known is not None:  # set by the branch: say how to change it here
            res.session_limit = dataclasses.replace(known, change=CHANGE_LIMIT)
        return res

    try:
        if flags.branch is not None:
            row, position, token = flags.branch
            parent = result_of(row)
            return mark(parent.branch(position, token, client=client, **stream, **params))
        if flags.prefill is not None:
            return mark(
                continue_final(
                    client,
                    messages,
                    flags.prefill,
                    model=flags.model,
                    system=flags.system,
                    **stream,
                    **params,
                )
            )
        res = client.chat(messages, model=flags.model, system=flags.system, **stream, **params)
        return mark(res)
    except BaseException as exc:  # an interrupted or broken answer keeps the mark too
        partial = getattr(exc, "partial", None)
        if partial is not None and hasattr(partial, "session_limit"):
            mark(partial)
        raise


def continued_note(res: ChatResult) -> str | None:
    """ "continues …" for a prefilled answer or a branch (the view shows the new text)."""
    origin = res.parent
    if origin is not None:
        where = f"history row {origin.parent_id}" if origin.parent_id else "its parent"
        return (
            f"branch of {where} at position {origin.position} with {origin.token!r}; "
            f"continues …{origin.prefix_text[-60:]!r} (res.full_text has the whole answer)"
        )
    if res.request.get("continue_final_message"):
        last = (res.request.get("messages") or [{}])[-1]
        prefix = str(last.get("content") or "")
        return f"continues the prefill …{prefix[-60:]!r} (res.full_text has the whole answer)"
    return None
