"""From a chat request to prompt text and grammars: templating, tools, truncation, limits.

Everything here runs before any token is generated, so every problem is still a clean 400.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from tmlab.server.engine import Engine, GrammarError
from tmlab.server.protocol import ChatRequest, RequestError, bad

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


def _schema_grammar(engine: Engine, schema: dict[str, Any], param: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema))
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


def _prompt(
    engine: Engine, messages: list[dict[str, Any]], req: ChatRequest
) -> tuple[str, list[int]]:
    """The prompt's text and tokens.

    With ``continue_final_message`` the final (assistant) message is left open. Its text is
    tokenised with the rest of the prompt (as vLLM does), unless ``continue_token_ids``
    gives its tokens: those follow the tokens of the open assistant header verbatim, since
    re-tokenising a text can merge its tokens differently from the tokens it came from.
    """
    if not req.get("continue_final_message"):
        text = engine.render(messages, add_generation_prompt=req.get("add_generation_prompt", True))
        return text, engine.tokenize(text)
    ids = req.get("continue_token_ids")
    if ids is None:
        text = engine.render(messages, continue_final_message=True)
        return text, engine.tokenize(text)
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
    return header + spelled, engine.tokenize(header) + list(ids)


def _truncate(
    engine: Engine,
    messages: list[dict[str, Any]],
    limit: int,
    req: ChatRequest,
) -> tuple[list[dict[str, Any]], str, list[int]]:
    """Drop the oldest non-system messages until the prompt fits ``limit`` tokens.

    System messages and the last message are never dropped; when what remains is still
    longer than ``limit``, that is a 400 naming the shortest length possible.
    """
    msgs = list(messages)
    while True:
        text, tokens = _prompt(engine, msgs, req)
        if len(tokens) <= limit:
            return msgs, text, tokens
        droppable = [i for i, m in enumerate(msgs[:-1]) if m["role"] != "system"]
        if not droppable:
            raise bad(
                f"prompt_truncate_len={limit} is too small: the system messages and the last "
                f"message alone take {len(tokens)} tokens, which is the minimum",
                "prompt_truncate_len",
            )
        del msgs[droppable[0]]


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


def plan_request(engine: Engine, req: ChatRequest) -> Plan:
    """Turn a validated request into a :class:`Plan`; raises :class:`RequestError`."""
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
    try:
        if limit is not None:
            messages, text, tokens = _truncate(engine, messages, limit, req)
        else:
            text, tokens = _prompt(engine, messages, req)
    except RequestError:
        raise
    except Exception as exc:  # a template that raises on these messages
        raise bad(f"the chat template cannot render these messages: {exc}", "messages") from None

    n_ctx = engine.n_ctx
    if len(tokens) >= n_ctx:
        raise RequestError(
            400,
            f"the prompt is {len(tokens)} tokens long; this model's "
            f"context is {n_ctx} tokens (use prompt_truncate_len to drop "
            "older messages)",
            param="messages",
            code="context_length_exceeded",
        )
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
    )
