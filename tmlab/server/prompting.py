"""From a chat request to prompt text and grammars: templating, tools, truncation, limits.

Everything here runs before any token is generated, so every problem is still a clean 400.
It runs in the model's worker thread, never on the event loop. A prompt is rendered, then
tokenised only when its byte length leaves it a chance to fit the context
(:class:`tmlab.server.limits.PromptBound`): a pasted book is refused after a rendering, not
after seconds of tokenising.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from tmlab.server.engine import Engine
from tmlab.server.limits import prompt_bound
from tmlab.server.protocol import ChatRequest, RequestError, bad
from tmlab.server.sampler import GrammarError
from tmlab.server.trace import TraceError, TraceSpec, trace_spec

__all__ = ["REASONING_BUDGETS", "TOOL_CALL_CLOSE", "TOOL_CALL_OPEN", "Plan", "plan_request"]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"

# reasoning_effort -> (minimum, maximum) reasoning tokens: end-of-generation is banned until
# the minimum, so more effort always means more thinking.
REASONING_BUDGETS: dict[str, tuple[int, int]] = {
    "low": (16, 64),
    "medium": (64, 192),
    "high": (192, 384),
}
REASONING_PREFIX = "Let me think step by step.\n"
ANSWER_PREFIX = "\n\nFinal answer:\n"

# JSON grammar with bounded whitespace, so that a small model cannot drift into endless
# blank lines inside an object.
JSON_GBNF = r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9]{1,3})? ws
ws     ::= " "?
"""


@dataclass
class Plan:
    """What to generate: prompt text and tokens, limits, grammar and how to read the output."""

    messages: list[dict[str, Any]]
    prompt_text: str
    prompt_tokens: list[int]
    max_tokens: int
    grammar: str | None = None
    tool_mode: str | None = None  # None | "forced" (whole output is a call) | "auto"
    reasoning: tuple[int, int] | None = None  # (min, max) reasoning tokens
    stop: list[str] = field(default_factory=list)
    echo_text: str = ""
    trace: TraceSpec | None = None  # sampler_trace / logprobs_for (tmlab.server.trace)


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content)


def _template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages to the plain {role, content} pairs a chat template understands."""
    out = []
    for msg in messages:
        role = msg["role"]
        content = _text(msg.get("content"))
        if role == "developer":
            role = "system"
        elif role == "function":
            role = "tool"
        if role == "assistant":
            for call in msg.get("tool_calls") or []:
                fn = call["function"]
                args = fn.get("arguments")
                with contextlib.suppress(ValueError):
                    args = json.loads(args) if isinstance(args, str) else args
                payload = json.dumps({"name": fn["name"], "arguments": args})
                content += f"{TOOL_CALL_OPEN}{payload}{TOOL_CALL_CLOSE}"
        out.append({"role": role, "content": content})
    return out


def _tools_instruction(tools: list[dict[str, Any]], forced: str | None) -> str:
    specs = [
        {
            "name": t["function"]["name"],
            "description": t["function"].get("description", ""),
            "parameters": t["function"].get("parameters") or {"type": "object"},
        }
        for t in tools
    ]
    text = (
        "You can call these functions:\n" + json.dumps(specs) + "\nTo call a function, "
        f'reply with {TOOL_CALL_OPEN}{{"name": <function name>, "arguments": '
        f"<arguments object>}}{TOOL_CALL_CLOSE}."
    )
    if forced:
        text += f" You must call {forced} now."
    return text


def _call_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    alternatives = []
    for tool in tools:
        fn = tool["function"]
        params = fn.get("parameters") or {"type": "object"}
        alternatives.append(
            {
                "type": "object",
                "properties": {"name": {"const": fn["name"]}, "arguments": params},
                "required": ["name", "arguments"],
            }
        )
    return alternatives[0] if len(alternatives) == 1 else {"oneOf": alternatives}


_LOOSE_CHAR: Final = r'char ::= [^"\\]'
_JSON_CHAR: Final = r'char ::= [^"\\\x7F\x00-\x1F]'


def _schema_grammar(engine: Engine, schema: dict[str, Any], param: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema))
        # llama-cpp-python's converter lets a string hold raw control characters (a newline),
        # which is not JSON; llama.cpp's own converter excludes them, as JSON_GBNF does
        gbnf = gbnf.replace(_LOOSE_CHAR, _JSON_CHAR)
        return engine.grammar_from_gbnf(gbnf)
    except (
        GrammarError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        IndexError,
        RecursionError,
        NotImplementedError,
        AssertionError,
    ) as exc:
        raise bad(
            f"{param}: the JSON schema cannot be turned into a grammar ({exc})", param
        ) from None


def _with_system(messages: list[dict[str, Any]], note: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] == "system":
        first = dict(messages[0])
        first["content"] = (first["content"] + "\n\n" + note).strip()
        return [first, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


@dataclass
class _Count:
    """A text's tokens when they fit a limit (else None), and how many there are.

    ``exact`` is False when the text was not tokenised because its length alone proves it
    longer than the limit; ``count`` is then that lower bound.
    """

    tokens: list[int] | None
    count: int
    exact: bool

    def said(self) -> str:
        """The count as a message says it."""
        return str(self.count) if self.exact else f"at least {self.count}"


def _tokens_within(
    engine: Engine, text: str, limit: int, tokenize: Callable[[], list[int]]
) -> _Count:
    """``tokenize()`` (the tokens of ``text``) unless the byte length of ``text`` alone proves
    it longer than ``limit`` tokens (every token covers at least one byte and at most the
    vocabulary's longest, whatever tokens spell the text)."""
    least = prompt_bound(engine).at_least(text)
    if least > limit:
        return _Count(None, least, exact=False)
    tokens = tokenize()
    return _Count(tokens if len(tokens) <= limit else None, len(tokens), exact=True)


def _prompt(
    engine: Engine, messages: list[dict[str, Any]], req: ChatRequest
) -> tuple[str, Callable[[], list[int]]]:
    """The prompt's text, and how to get its tokens (tokenising is left to the caller, who
    may find the text too long without it).

    With ``continue_final_message`` the final (assistant) message is left open. Its text is
    tokenised with the rest of the prompt (as vLLM does), unless ``continue_token_ids``
    gives its tokens: those follow the tokens of the open assistant header verbatim, since
    re-tokenising a text can merge its tokens differently from the tokens it came from.
    """
    if not req.get("continue_final_message"):
        text = engine.render(messages, add_generation_prompt=req.get("add_generation_prompt", True))
        return text, lambda: engine.tokenize(text)
    ids = req.get("continue_token_ids")
    if ids is None:
        cont = engine.render(messages, continue_final_message=True)
        return cont, lambda: engine.tokenize(cont)
    content = messages[-1]["content"]
    spelled = engine.detokenize(ids)
    if spelled != content:
        raise bad(
            f"continue_token_ids spell {spelled[:80]!r}, but the final assistant message's "
            f"content is {content[:80]!r}: send that message's exact text with its token ids",
            "continue_token_ids",
        )
    header = engine.render(
        [*messages[:-1], {**messages[-1], "content": ""}], continue_final_message=True
    )
    return header + spelled, lambda: engine.tokenize(header) + list(ids)


def _truncate(
    engine: Engine,
    messages: list[dict[str, Any]],
    limit: int,
    req: ChatRequest,
) -> tuple[list[dict[str, Any]], str, list[int]]:
    """Drop the oldest non-system messages until the prompt fits ``limit`` tokens.

    System messages and the last message are never dropped; when what remains is still
    longer than ``limit``, that is a 400 naming the shortest length possible. How many to
    drop is found by bisection (a prompt never grows when a message is dropped), so a long
    conversation costs a few renderings, not one per message.
    """
    droppable = [i for i, m in enumerate(messages[:-1]) if m["role"] != "system"]

    def attempt(k: int) -> tuple[list[dict[str, Any]], str, _Count]:
        gone = set(droppable[:k])
        kept = [m for i, m in enumerate(messages) if i not in gone]
        text, tokenize = _prompt(engine, kept, req)
        return kept, text, _tokens_within(engine, text, limit, tokenize)

    best = attempt(0)
    if best[2].tokens is None:
        fewest = attempt(len(droppable))
        if fewest[2].tokens is None:
            raise bad(
                f"prompt_truncate_len={limit} is too small: the system messages and the last "
                f"message alone take {fewest[2].said()} tokens, which is the minimum",
                "prompt_truncate_len",
            )
        lo, hi, best = 0, len(droppable), fewest  # attempt(lo) is too long, attempt(hi) fits
        while hi - lo > 1:
            mid = (lo + hi) // 2
            got = attempt(mid)
            if got[2].tokens is None:
                lo = mid
            else:
                hi, best = mid, got
    kept, text, count = best
    assert count.tokens is not None
    return kept, text, count.tokens


def _fit_reasoning(engine: Engine, text: str, budget: tuple[int, int]) -> tuple[int, int]:
    """Cap a reasoning budget to the context left for it and at least one answer token."""
    used = len(engine.tokenize(text + REASONING_PREFIX)) + len(engine.tokenize(ANSWER_PREFIX))
    room = engine.n_ctx - used - 1
    if room < 1:
        raise RequestError(
            400,
            f"the prompt is {len(engine.tokenize(text))} tokens long; with the reasoning and "
            f"answer prefixes ({used} tokens) it leaves no room for reasoning and an answer "
            f"in this model's context of {engine.n_ctx} tokens (use prompt_truncate_len, or "
            "reasoning_effort='none')",
            param="messages",
            code="context_length_exceeded",
        )
    return min(budget[0], room), min(budget[1], room)


def _within_request_budget(
    req: ChatRequest, max_tokens: int, requested: int | None, budget: int
) -> int:
    """``max_tokens`` per choice such that ``n × max_tokens <= budget``, or a 400.

    A request that set no limit gets ``budget // n`` per choice; one whose limit (as far as
    the context allows it) is over the budget is refused.
    """
    n = req.get("n", 1)
    if n * max_tokens <= budget:
        return max_tokens
    if requested is not None or budget < n:
        only_new = req.get("max_tokens") is None and req.get("max_completion_tokens") is not None
        name = "max_completion_tokens" if only_new else "max_tokens"
        param = name if requested is not None else "n"
        capped = ""
        if requested is None:
            capped = " (unset: what the context leaves)"
        elif requested != max_tokens:
            capped = " (capped to what the context leaves)"
        raise bad(
            f"n × {name} = {n} × {max_tokens}{capped} = {n * max_tokens} tokens is more than "
            f"this server generates for one request: at most {budget} "
            f"(tmlab serve --max-request-tokens); lower {name} or n",
            param,
        )
    return budget // n


def plan_request(
    engine: Engine, req: ChatRequest, *, max_request_tokens: int | None = None
) -> Plan:
    """Turn a validated request into a :class:`Plan`; raises :class:`RequestError`.

    ``max_request_tokens``: this server's bound on ``n × max_tokens`` (see
    :mod:`tmlab.server.limits`).
    """
    messages = _template_messages(req.messages)
    tools = req.get("tools") or []
    choice = req.get("tool_choice", "auto")
    if req.get("functions") and not tools:  # deprecated spelling
        tools = [
            {"type": "function", "function": f}
            for f in req.get("functions")
            if isinstance(f, dict) and isinstance(f.get("name"), str)
        ]
        fc = req.get("function_call", "auto")
        choice = {"function": fc} if isinstance(fc, dict) else fc
    grammar = None
    tool_mode = None
    if tools and choice != "none":
        forced = None
        if isinstance(choice, dict):
            forced = choice["function"]["name"]
            tools = [t for t in tools if t["function"]["name"] == forced]
        messages = _with_system(messages, _tools_instruction(tools, forced))
        call = _schema_grammar(engine, _call_schema(tools), "tools")
        if forced or choice == "required":
            tool_mode, grammar = "forced", call
        else:
            tool_mode = "auto"
            grammar = call.replace("root ::=", "call ::=", 1) + (
                f'\nroot ::= "{TOOL_CALL_OPEN}" call "{TOOL_CALL_CLOSE}"\n'
            )
            grammar = engine.grammar_from_gbnf(grammar)
    rf = req.get("response_format") or {}
    if tool_mode is None and rf.get("type") == "json_object":
        messages = _with_system(messages, "Reply with a JSON object.")
        grammar = engine.grammar_from_gbnf(JSON_GBNF)
    elif tool_mode is None and rf.get("type") == "json_schema":
        spec = rf.get("json_schema") or {}
        schema = spec.get("schema") or {"type": "object"}
        messages = _with_system(
            messages, "Reply with JSON matching this schema: " + json.dumps(schema)
        )
        grammar = _schema_grammar(engine, schema, "response_format")

    limit = req.get("prompt_truncate_len")
    n_ctx = engine.n_ctx
    try:
        if limit is not None:
            messages, text, tokens = _truncate(engine, messages, limit, req)
            count = _Count(tokens, len(tokens), exact=True)
        else:
            text, tokenize = _prompt(engine, messages, req)
            count = _tokens_within(engine, text, n_ctx - 1, tokenize)
    except RequestError:
        raise
    except Exception as exc:  # a template that raises on these messages
        raise bad(f"the chat template cannot render these messages: {exc}", "messages") from None

    if count.tokens is None or count.count >= n_ctx:
        raise RequestError(
            400,
            f"the prompt is {count.said()} tokens long; this model's "
            f"context is {n_ctx} tokens (use prompt_truncate_len to drop "
            "older messages)",
            param="messages",
            code="context_length_exceeded",
        )
    tokens = count.tokens
    # The API accepts both names; given both, this server honours the smaller limit.
    limits = [v for v in (req.get("max_tokens"), req.get("max_completion_tokens")) if v is not None]
    requested = min(limits) if limits else None
    room = n_ctx - len(tokens)
    if requested is None:
        max_tokens = room
    elif requested > room:
        if req.get("context_length_exceeded_behavior", "truncate") == "error":
            raise RequestError(
                400,
                f"prompt ({len(tokens)} tokens) + max_tokens ({requested})"
                f" exceeds the context of {n_ctx} tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        max_tokens = room
    else:
        max_tokens = requested
    if max_request_tokens is not None:
        max_tokens = _within_request_budget(req, max_tokens, requested, max_request_tokens)

    stop = req.get("stop") or []
    stop = [stop] if isinstance(stop, str) else [s for s in stop if s]
    echo_text = ""
    if req.get("echo"):
        echo_text = text
    elif req.get("echo_last"):
        echo_text = engine.detokenize(tokens[-req.get("echo_last") :])

    reasoning = None
    effort = req.get("reasoning_effort")
    thinking = req.get("thinking") or {}
    if effort in REASONING_BUDGETS:
        reasoning = REASONING_BUDGETS[effort]
    elif effort is None and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            budget = REASONING_BUDGETS["medium"][1]
        reasoning = (budget // 2, budget)
    if reasoning is not None:
        reasoning = _fit_reasoning(engine, text, reasoning)
    kind = (
        {"forced": "tool call", "auto": "tool call (after <tool_call>)"}.get(tool_mode or "")
        or rf.get("type")
        if grammar is not None
        else None
    )
    try:
        trace = trace_spec(
            req.get("sampler_trace"),
            req.get("logprobs_for"),
            n_vocab=engine.n_vocab,
            tokenize=lambda t: engine.tokenize(t, special=False),
            grammar=kind,
        )
    except TraceError as exc:
        raise bad(str(exc), exc.param) from None
    return Plan(
        messages=messages,
        prompt_text=text,
        prompt_tokens=tokens,
        max_tokens=max_tokens,
        grammar=grammar,
        tool_mode=tool_mode,
        reasoning=reasoning,
        stop=stop,
        echo_text=echo_text,
        trace=trace,
    )
