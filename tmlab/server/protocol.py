"""Request parsing for the local server: a JSON body in, a :class:`ChatRequest` or an error.

Every problem becomes a :class:`RequestError`, which the app answers with the OpenAI error
envelope ``{"error": {"message", "type", "param", "code"}}`` and the right status. Parameter
checks reuse the one table, :data:`tmlab.params.PARAMS` / :func:`validate_params`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from typing import Any, Final

from tmlab.errors import ParameterError
from tmlab.params import PARAMS, validate_params
from tmlab.server.sampler import Sampling

__all__ = ["ChatRequest", "RequestError", "error_body", "parse_chat_request", "parse_json"]

MIN_REPETITION_PENALTY = 0.01
"""The smallest repetition_penalty this server accepts (it divides logits by it)."""

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class RequestError(Exception):
    """A request the server refuses: status, message, type, param, code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}
        super().__init__(message)

    def body(self) -> dict[str, Any]:
        """The error envelope."""
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> RequestError:
    """A 400 invalid_request_error."""
    return RequestError(400, message, param=param, code=code)


_FLOATS: Final = (
    "temperature",
    "top_p",
    "min_p",
    "typical_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "mirostat_target",
    "mirostat_lr",
)
"""The sampler's settings that are numbers as sent (``top_k``, ``seed`` and ``logit_bias``
are converted too; see :attr:`ChatRequest.sampling`)."""


@dataclass
class ChatRequest:
    """A validated chat-completions request: messages, model and the known parameters."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool = False
    params: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        """A parameter's value, ``default`` when absent or null."""
        value = self.params.get(name)
        return default if value is None else value

    @functools.cached_property
    def sampling(self) -> Sampling:
        """The sampler's settings, read from the parameters once, here; what the request does
        not set keeps :class:`~tmlab.server.sampler.Sampling`'s defaults (the one place they
        are). ``seed`` is the request's: each choice draws with its own (``choice_seed``)."""
        given: dict[str, Any] = {
            k: float(self.params[k]) for k in _FLOATS if self.params.get(k) is not None
        }
        if self.params.get("top_k") is not None:
            given["top_k"] = max(0, int(self.params["top_k"]))
        if self.params.get("seed") is not None:
            given["seed"] = int(self.params["seed"])
        bias = self.params.get("logit_bias") or {}
        return Sampling(**given, logit_bias={int(k): float(v) for k, v in bias.items()})


def parse_json(raw: bytes) -> Any:
    """Decode a request body; malformed JSON is a 400."""
    if not raw:
        raise bad("the request body is empty; send a JSON object")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise bad(f"the request body is not valid JSON: {exc}") from None


def _check_content(content: Any, where: str, *, nullable: bool) -> None:
    if content is None:
        if nullable:
            return
        raise bad(f"{where}.content must not be null", where + ".content")
    if isinstance(content, str):
        return
    if isinstance(content, list):
        for j, part in enumerate(content):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise bad(
                    f"{where}.content[{j}] must be {{'type': 'text', 'text': str}} "
                    "(this model reads text only)",
                    f"{where}.content",
                )
        return
    raise bad(f"{where}.content must be a string or a list of text parts", where + ".content")


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if messages is None:
        raise bad("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty list of {'role', 'content'} objects", "messages")
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad(f"{where} must be an object with 'role' and 'content'", where)
        role = msg.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role={role!r} is not one of {sorted(ROLES)}", where + ".role")
        has_calls = role == "assistant" and msg.get("tool_calls")
        # an assistant turn may have no content (it called a tool)
        _check_content(msg.get("content"), where, nullable=role == "assistant")
        if has_calls:
            calls = msg["tool_calls"]
            if not isinstance(calls, list) or not all(
                isinstance(c, dict)
                and isinstance(c.get("function"), dict)
                and isinstance(c["function"].get("name"), str)
                for c in calls
            ):
                raise bad(
                    f"{where}.tool_calls must be a list of {{'function': {{'name', 'arguments'}}}}",
                    where + ".tool_calls",
                )
        if "name" in msg and msg["name"] is not None and not isinstance(msg["name"], str):
            raise bad(f"{where}.name must be a string", where + ".name")
    return messages


def parse_chat_request(
    body: Any, served: list[str], n_vocab: int, *, max_n: int | None = None
) -> ChatRequest:
    """Validate a decoded chat-completions body against the parameter table.

    Unknown fields are ignored (as vLLM does); known ones are checked for type, range and the
    combinations the API rejects. An unknown model is a 404 listing the served models; ``n``
    above ``max_n`` (this server's limit) is a 400 naming ``n``.
    """
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    model = body.get("model")
    if model is None:
        raise bad("'model' is required", "model", "missing_required_parameter")
    if not isinstance(model, str):
        raise bad(f"'model' must be a string, got {model!r}", "model")
    if model not in served:
        raise RequestError(
            404,
            f"The model {model!r} does not exist; this server serves {', '.join(served)}",
            type="not_found_error",
            param="model",
            code="model_not_found",
        )
    messages = _check_messages(body.get("messages"))
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad(f"'stream' must be a bool, got {stream!r}", "stream")
    known = {k: v for k, v in body.items() if k in PARAMS}
    try:
        params = validate_params(known, warn=False)  # both max_tokens names: the smaller
    except ParameterError as exc:
        raise bad(str(exc), exc.param) from None
    n = params.get("n")
    if max_n is not None and n is not None and n > max_n:
        raise bad(
            f"n={n} is more choices than this server generates for one request: at most "
            f"{max_n} (tmlab serve --max-n); send several requests instead",
            "n",
        )
    if params.get("stream_options") is not None and not stream:
        raise bad("stream_options is only allowed when stream=true", "stream_options")
    for key in params.get("logit_bias") or {}:
        if not 0 <= int(key) < n_vocab:
            raise bad(
                f"logit_bias: token id {key} is outside the vocabulary 0..{n_vocab - 1}",
                "logit_bias",
            )
    rf = params.get("response_format")
    if isinstance(rf, dict):
        extra = set(rf) - {"type", "json_schema", "schema"}
        if extra:
            raise bad(f"response_format has unknown keys {sorted(extra)}", "response_format")
        if rf["type"] == "json_schema":
            spec = rf.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
                raise bad(
                    "response_format json_schema needs {'json_schema': {'schema': {...}}}",
                    "response_format",
                )
    penalty = params.get("repetition_penalty")
    if penalty is not None and penalty < MIN_REPETITION_PENALTY:
        # llama.cpp divides logits by it: 1e-45 overflows to inf and the output is garbage
        raise bad(
            f"repetition_penalty={penalty!r} is out of this server's range: it supports "
            f"repetition_penalty >= {MIN_REPETITION_PENALTY} (1 = off)",
            "repetition_penalty",
        )
    tools = params.get("tools") or []
    functions = params.get("functions") or []
    fc = params.get("function_call")
    if functions and not tools and isinstance(fc, dict):
        names = [
            f["name"] for f in functions if isinstance(f, dict) and isinstance(f.get("name"), str)
        ]
        if fc["name"] not in names:
            raise bad(
                f"function_call names {fc['name']!r}, which is not among the functions "
                f"({', '.join(map(repr, names)) or 'none'})",
                "function_call",
            )
    for i, tool in enumerate(tools):
        schema = tool["function"].get("parameters")
        if schema is not None and not isinstance(schema, dict):
            raise bad(f"tools[{i}].function.parameters must be a JSON schema object", "tools")
    choice = params.get("tool_choice")
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        if name not in {t["function"]["name"] for t in tools}:
            raise bad(f"tool_choice names {name!r}, which is not among the tools", "tool_choice")
    elif choice == "required" and not tools:
        raise bad("tool_choice='required' needs tools", "tool_choice")
    _check_continuation(params, messages, n_vocab)
    return ChatRequest(model=model, messages=messages, stream=bool(stream), params=params)


def _check_continuation(
    params: dict[str, Any], messages: list[dict[str, Any]], n_vocab: int
) -> None:
    """``continue_final_message``: a final assistant message to go on from, nothing that
    would start a new turn or constrain the whole answer (``add_generation_prompt=True``
    with it and ``continue_token_ids`` without it are rejected by the table's checks)."""
    ids = params.get("continue_token_ids")
    if ids is not None:
        outside = [t for t in ids if t >= n_vocab]
        if outside:
            raise bad(
                f"continue_token_ids: token id {outside[0]} is outside the vocabulary "
                f"0..{n_vocab - 1}",
                "continue_token_ids",
            )
    if not params.get("continue_final_message"):
        return
    last = messages[-1]
    if last.get("role") != "assistant":
        raise bad(
            "continue_final_message=true needs a final assistant message to continue; the "
            f"last message is {last.get('role')!r} (append {{'role': 'assistant', 'content': "
            "PREFIX}, or drop continue_final_message)",
            "continue_final_message",
        )
    if last.get("tool_calls"):
        raise bad(
            "continue_final_message=true cannot continue an assistant message with tool_calls",
            "continue_final_message",
        )
    thinking = params.get("thinking") or {}
    reasoning = params.get("reasoning_effort") not in (None, "none") or (
        params.get("reasoning_effort") is None and thinking.get("type") == "enabled"
    )
    rf = params.get("response_format") or {}
    choice = params.get("tool_choice")
    clash = (
        "reasoning_effort/thinking (the reasoning would come after the prefix)"
        if reasoning
        else "response_format (the format applies to the whole answer, not to what follows "
        "the prefix)"
        if rf.get("type") in ("json_object", "json_schema")
        else "a required tool call (a call is a whole answer)"
        if params.get("tools") and (choice == "required" or isinstance(choice, dict))
        else None
    )
    if clash is not None:
        raise bad(
            f"continue_final_message=true cannot be combined with {clash} on this server",
            "continue_final_message",
        )


OPTIONAL_OUTPUTS: Final = ("logprobs", "top_logprobs", "echo", "echo_last")
"""What a server without the optional capabilities (``--minimal``) ignores besides the
extensions group of the parameter table: logprobs and echo."""


def without_optional(req: ChatRequest) -> ChatRequest:
    """``req`` as a server without the optional capabilities serves it (``--minimal``).

    Like many OpenAI-compatible servers: logprobs, echo and every extension (continuing a
    final assistant message, token ids, logprobs modes) are ignored, not refused, so a final
    assistant message starts a new turn and the answer has no logprobs; ``n`` above 1 is a
    400.
    """
    if req.get("n", 1) > 1:
        raise bad(f"n={req.get('n')}: this server generates one choice per request", "n")
    dropped = set(OPTIONAL_OUTPUTS) | {p.name for p in PARAMS.values() if p.group == "extensions"}
    params = {k: v for k, v in req.params.items() if k not in dropped}
    return dataclasses.replace(req, params=params)
