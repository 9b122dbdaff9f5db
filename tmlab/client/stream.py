"""Stream reassembly: chat-completion chunks in, the non-streaming response JSON out.

:class:`StreamAccumulator` merges parsed ``chat.completion.chunk`` dicts into exactly the
JSON a non-streaming call returns, so :class:`~tmlab.ChatResult` reads one shape. Per choice
(keyed by ``index``): ``content``, ``reasoning``, ``reasoning_content`` and ``refusal`` are
concatenated (content sent as a list of parts contributes its text parts, as in
``Choice.from_raw``); tool calls are merged by their ``index`` (``id``, ``type`` and the
function ``name`` set once, ``arguments`` concatenated; fragments without an ``index`` start a
new call on a new ``id`` and otherwise continue the last call; ``arguments`` sent as a JSON
object in one fragment stay an object, as a non-streaming answer has them, and are turned into
JSON text when more fragments follow); every list in ``logprobs`` is concatenated
(``content`` in the OpenAI shape; ``tokens``, ``token_logprobs``, ``top_logprobs``,
``text_offset`` in the legacy shape); ``token_ids`` are concatenated; ``finish_reason``,
``stop_reason``, ``raw_output`` and unknown keys keep the last value sent. ``usage``,
``perf_metrics``, ``prompt_token_ids``, ``id``, ``model``, ``created`` come from whichever
chunk carries them (usage on a final ``choices: []`` chunk or on the finish chunk).

While accumulating, each choice's piece is handed to ``on_delta`` as a :class:`Delta`, with
``<think>…</think>`` inside ``content`` routed to ``Delta.reasoning`` live by
:class:`~tmlab.client.think.ThinkRouter`, even when a tag is split across chunks. The raw content
keeps the tags as sent; ``ChatResult`` splits them.

:class:`~tmlab.client.reader.StreamReader` feeds this accumulator from the raw bytes of a stream.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tmlab.client.think import ThinkRouter
from tmlab.result import TokenLogprob, parse_logprobs

__all__ = ["Delta", "StreamAccumulator"]

# Concatenated string fields of a message delta.
_TEXT_FIELDS = ("content", "reasoning", "reasoning_content", "refusal")
# The keys of a choice that StreamAccumulator.add merges on its fast path.
_PLAIN_CHOICE_KEYS = frozenset(("index", "delta", "logprobs", "finish_reason"))


def _text_of_parts(parts: list[Any]) -> str:
    """The text of content sent as a list of parts (``[{"type": "text", "text": ...}]``)."""
    return "".join(
        p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)
    )


def _add_arguments(fn: dict[str, Any], value: Any) -> None:
    """Merge one ``arguments`` fragment into a function (tool) call being assembled."""
    if value is None or value == "":
        return
    have = fn.get("arguments")
    if have is None or have == "":
        fn["arguments"] = value  # a string, or an object sent whole: kept as sent
        return
    if not isinstance(have, str):
        have = json.dumps(have, ensure_ascii=False)
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False)
    fn["arguments"] = have + value


@dataclass(slots=True)
class Delta:
    """One streamed piece of one choice, as passed to ``on_delta``.

    ``text`` is answer text and ``reasoning`` reasoning text (from ``reasoning`` /
    ``reasoning_content`` fields, or from ``<think>…</think>`` inside the content, routed
    live); concatenating them over a stream gives ``res.text`` and ``res.reasoning``.
    ``tool_calls`` are the raw fragments of this chunk, ``logprobs`` the tokens of this
    piece, ``chunk`` the raw chunk it came from.
    """

    choice: int
    text: str = ""
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    chunk: dict[str, Any] = field(default_factory=dict, repr=False)


class _Choice:
    """Accumulated state of one choice."""

    __slots__ = (
        "extra",
        "last_tool",
        "logprobs",
        "msg_extra",
        "parts",
        "role",
        "router",
        "token_ids",
        "tools",
    )

    def __init__(self) -> None:
        self.parts: dict[str, list[str]] = {}
        self.role: str | None = None
        self.msg_extra: dict[str, Any] = {}
        self.tools: dict[int, dict[str, Any]] = {}
        self.last_tool: int | None = None  # key of the call the last fragment went to
        self.logprobs: dict[str, Any] | None = None
        self.token_ids: list[int] | None = None
        self.extra: dict[str, Any] = {"finish_reason": None, "logprobs": None}
        self.router: ThinkRouter | None = None

    def _tool_key(self, frag: dict[str, Any]) -> int:
        """Which call a fragment without an ``index`` belongs to."""
        tools = self.tools
        call_id = frag.get("id")
        if call_id is not None:
            for key, call in tools.items():
                if call.get("id") == call_id:
                    return key
            last = self.last_tool
            if last is not None and tools[last].get("id") is not None:
                return max(tools) + 1  # a new id: a new call
        if self.last_tool is not None:
            return self.last_tool  # no id (or the first id of an id-less call): continue
        return max(tools, default=-1) + 1

    def add_tool_fragment(self, frag: dict[str, Any]) -> None:
        index = frag.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            index = self._tool_key(frag)
        self.last_tool = index
        call = self.tools.get(index)
        if call is None:
            call = self.tools[index] = {
                "id": None,
                "type": "function",
                "function": {"name": None, "arguments": ""},
            }
        for key, value in frag.items():
            if key == "function" and isinstance(value, dict):
                fn = call["function"]
                for fkey, fvalue in value.items():
                    if fkey == "arguments":
                        _add_arguments(fn, fvalue)
                    elif fvalue is not None and fn.get(fkey) is None:
                        fn[fkey] = fvalue
            elif key != "index" and value is not None and call.get(key) is None:
                call[key] = value
            elif key == "type" and value:
                call["type"] = value

    def add_logprobs(self, lp: dict[str, Any]) -> None:
        acc = self.logprobs
        if acc is None:
            acc = self.logprobs = {}
        for key, value in lp.items():
            if isinstance(value, list):
                have = acc.get(key)
                if isinstance(have, list):
                    have.extend(value)
                else:
                    acc[key] = list(value)
            elif value is not None or key not in acc:
                acc[key] = value

    def build(self, index: int) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role or "assistant"}
        content = self.parts.get("content")
        message["content"] = "".join(content) if content is not None else None
        for key in _TEXT_FIELDS[1:]:
            if key in self.parts:
                message[key] = "".join(self.parts[key])
        if self.tools:
            message["tool_calls"] = [self.tools[k] for k in sorted(self.tools)]
        for key, value in self.msg_extra.items():
            message.setdefault(key, value)
        out: dict[str, Any] = {"index": index, "message": message}
        out.update(self.extra)
        if self.logprobs is not None:
            out["logprobs"] = self.logprobs
        if self.token_ids is not None:
            out["token_ids"] = self.token_ids
        return out


class StreamAccumulator:
    """Merge parsed stream chunks into the non-streaming response JSON.

    ``on_delta`` (optional) is called with a :class:`Delta` for each choice of each chunk
    that carries something. ``first_token_at`` is the ``clock()`` time of the first content,
    reasoning or tool-call fragment (for time to first token).
    """

    def __init__(
        self,
        on_delta: Callable[[Delta], Any] | None = None,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.on_delta = on_delta
        self.clock = clock
        self.first_token_at: float | None = None
        self.chunks = 0
        self._top: dict[str, Any] = {}
        self._choices: dict[int, _Choice] = {}

    @property
    def finished(self) -> bool:
        """True when at least one choice arrived and every choice has a finish_reason."""
        return bool(self._choices) and all(
            c.extra.get("finish_reason") is not None for c in self._choices.values()
        )

    def add(self, chunk: dict[str, Any]) -> None:
        """Merge one parsed chunk (``{"choices": [{"delta": ...}], ...}``)."""
        self.chunks += 1
        top = self._top
        if None in chunk.values():
            for key, value in chunk.items():
                if key == "choices" or key == "object":
                    continue
                if value is not None or key not in top:
                    top[key] = value
        else:
            # No null that must not hide an earlier value: one update in C. "choices" and
            # "object" ride along unused (build() writes its own).
            top.update(chunk)
        choices = chunk.get("choices")
        if type(choices) is list and len(choices) == 1 and self.on_delta is None:
            # Fast path for the bulk of a stream, text only: one choice already under way,
            # a delta of nothing but a "content" string, no logprobs, no finish_reason.
            # It does what _add_choice does for such a chunk, without its general loops.
            choice = choices[0]
            if (
                type(choice) is dict
                and choice.keys() <= _PLAIN_CHOICE_KEYS
                and choice.get("logprobs") is None
                and choice.get("finish_reason") is None
            ):
                delta = choice.get("delta")
                state = self._choices.get(choice.get("index") or 0)
                if type(delta) is dict and len(delta) == 1 and state is not None:
                    text = delta.get("content")
                    parts = state.parts.get("content")
                    if type(text) is str and parts is not None:
                        parts.append(text)
                        if text and self.first_token_at is None:
                            self.first_token_at = self.clock()
                        return
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict):
                    self._add_choice(choice, chunk)

    def _add_choice(self, choice: dict[str, Any], chunk: dict[str, Any]) -> None:
        index = choice.get("index") or 0
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = _Choice()
        on_delta = self.on_delta
        text = reasoning = ""
        got_token = False
        delta = choice.get("delta") or choice.get("message")
        if not isinstance(delta, dict):
            delta = {}
        for key, value in delta.items():
            if key in _TEXT_FIELDS:
                if not isinstance(value, str):
                    if not isinstance(value, list):
                        continue
                    value = _text_of_parts(value)
                parts = state.parts.get(key)
                if parts is None:
                    parts = state.parts[key] = []
                parts.append(value)
                if not value:
                    continue
                got_token = True
                if on_delta is None:
                    continue
                if key == "content":
                    router = state.router
                    if router is None:
                        router = state.router = ThinkRouter()
                    t, r = router.feed(value)
                    text += t
                    reasoning += r
                elif key != "refusal":
                    reasoning += value
            elif key == "tool_calls":
                for frag in value or ():
                    if isinstance(frag, dict):
                        state.add_tool_fragment(frag)
                        got_token = True
            elif key == "role":
                if value and state.role is None:
                    state.role = value
            elif key == "function_call" and isinstance(value, dict):  # deprecated shape
                fc = state.msg_extra.setdefault("function_call", {"name": None, "arguments": ""})
                if value.get("name") and fc["name"] is None:
                    fc["name"] = value["name"]
                _add_arguments(fc, value.get("arguments"))
            elif value is not None:
                state.msg_extra[key] = value
        for key, value in choice.items():
            if key in ("index", "delta", "message"):
                continue
            if key == "logprobs":
                if isinstance(value, dict):
                    state.add_logprobs(value)
            elif key == "token_ids":
                if isinstance(value, list):
                    if state.token_ids is None:
                        state.token_ids = []
                    state.token_ids.extend(value)
            elif value is not None or key not in state.extra:
                state.extra[key] = value
        if got_token and self.first_token_at is None:
            self.first_token_at = self.clock()
        if on_delta is None:
            return
        finish = choice.get("finish_reason")
        if finish is not None and state.router is not None:
            t, r = state.router.flush()
            text += t
            reasoning += r
        tools = delta.get("tool_calls") or []
        lp = choice.get("logprobs")
        logprobs = parse_logprobs(lp) if lp else None
        if text or reasoning or tools or logprobs or finish is not None:
            on_delta(Delta(index, text, reasoning, list(tools), logprobs, finish, chunk))

    def flush(self) -> None:
        """End of stream: hand out text held back as a possible partial think tag."""
        if self.on_delta is None:
            return
        for index, state in self._choices.items():
            if state.router is not None and state.router.hold:
                t, r = state.router.flush()
                self.on_delta(Delta(index, t, r))

    def build(self) -> dict[str, Any]:
        """The response JSON assembled so far, in the non-streaming shape."""
        top = self._top
        out: dict[str, Any] = {
            "id": top.get("id"),
            "object": "chat.completion",
            "created": top.get("created"),
            "model": top.get("model"),
            "choices": [self._choices[i].build(i) for i in sorted(self._choices)],
        }
        for key, value in top.items():
            if key not in out:
                out[key] = value
        return out
