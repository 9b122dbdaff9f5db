"""The Explorer's request as code: the ``client.chat(...)`` call and the ``%%tmchat`` line.

What was learnt in the widget can be pasted into a notebook: :func:`chat_call` writes the
client call, :func:`tmchat_line` the magic's flags (the inverse of
:func:`tmlab.jupyter.flags.parse_flags`, which a test checks).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from typing import Any

from tmlab.jupyter.flags import flag_name
from tmlab.params import PARAMS

__all__ = ["chat_call", "tmchat_line"]


def chat_call(
    params: Mapping[str, Any],
    prompt: str = "",
    system: str = "",
    model: str | None = None,
) -> str:
    """The ``client.chat(...)`` call that sends the same request."""
    args = [repr(prompt)]
    if model:
        args.append(f"model={model!r}")
    if system:
        args.append(f"system={system!r}")
    args.extend(f"{name}={value!r}" for name, value in params.items())
    args.append("stream=True")
    return f"client.chat({', '.join(args)})"


def tmchat_line(params: Mapping[str, Any], system: str = "", model: str | None = None) -> str:
    """The ``%%tmchat`` line with the same settings: one kebab-case flag per parameter set.

    ``logprobs=True`` (with ``top_logprobs=N``) is ``--logprobs [N]``; other booleans are
    ``--name`` / ``--no-name``; JSON values are quoted for the shell. ``logprobs=False`` is
    the default and has no flag: it is left out.
    """
    parts = ["%%tmchat"]
    if model:
        parts += ["--model", shlex.quote(model)]
    if system:
        parts += ["--system", shlex.quote(system)]
    logprobs = params.get("logprobs")
    top = params.get("top_logprobs")
    for name, value in params.items():
        flag = flag_name(name)
        if name == "logprobs":
            if value is True:
                parts.append(flag if top is None else f"{flag} {top}")
        elif name == "top_logprobs" and logprobs is True:
            continue  # folded into --logprobs N
        elif isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, int | float):
            parts.append(f"{flag} {value!r}")
        elif isinstance(value, str) and PARAMS[name].kind != "json":
            parts.append(f"{flag} {shlex.quote(value)}")
        else:
            parts.append(f"{flag} {shlex.quote(json.dumps(value, ensure_ascii=False))}")
    return " ".join(parts)
