"""The parameter table and the validation generated from it."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import tmlab
from tmlab.params import NOT_GIVEN, PARAMS, ParameterWarning, validate_params


@dataclass
class SeedParam:
    """One request parameter as the seed API page documents it."""

    name: str
    type: str  # the type line ("number | null", "enum<string> | null", …), "" if none
    default: Any  # parsed from "default:…", None if the page gives none
    options: list[str]  # the "Available options:" list, [] if none


def _seed_params() -> dict[str, SeedParam]:
    """The request parameters of the seed API page's body (between Body and Response)."""
    # A copy of the Tensormesh "Create Chat Completion" reference page.
    text = (Path(__file__).parent / "data" / "tensormesh-chat-completions.txt").read_text()
    body = text[text.index("\nBody\n") : text.index("\nResponse\n")]
    # A parameter is a lower-case name on its own line, followed by its type line, its
    # "default:" line, or (for untyped ones) a blank line before its description.
    starts = list(
        re.finditer(
            r"^([a-z_]+)\n(?=(?:[A-Z][\w ]* · )?(?:string|number|integer|boolean|enum|object|"
            r"Logit|Metadata|ChatCompletion|StreamOptions|ResponseFormat|ThinkingConfig|"
            r"default:|\n))",
            body,
            flags=re.M,
        )
    )
    out = {}
    for m, nxt in zip(starts, [*starts[1:], None], strict=True):
        name = m.group(1)
        if name in ("required", "model", "messages", "stream"):
            continue  # "required" marks model/messages; those three are chat()'s own
        section = body[m.end() : nxt.start() if nxt else len(body)]
        first = section.split("\n", 1)[0]
        type_line = "" if first.startswith("default:") or not first else first
        default_m = re.search(r"^default:(.*)$", section, flags=re.M)
        options_m = re.search(r"Available options:\n((?:.+\n?)+)", section)
        options = (
            [o.strip().rstrip(",") for o in options_m.group(1).split("\n") if o.strip()]
            if options_m
            else []
        )
        default = _value(default_m.group(1)) if default_m else None
        out[name] = SeedParam(name, type_line, default, options)
    return out


def _value(text: str) -> Any:
    text = text.strip()
    if text in ("true", "false"):
        return text == "true"
    return int(text) if text.isdigit() else text


def _kind(seed_type: str) -> set[str]:
    """The table kinds that fit a type line of the seed page."""
    if not seed_type:  # untyped: free-form JSON, or a set of options
        return {"json", "enum"}
    base = seed_type.split(" | ")[0]
    return {
        "number": {"float"},
        "integer": {"int"},
        "boolean": {"bool"},
        "string": {"str"},
        "enum<string>": {"enum"},
    }.get(base, {"json"})  # objects and arrays


def test_every_seed_parameter_is_in_the_table() -> None:
    names = sorted(_seed_params())
    assert len(names) > 30, names
    assert "tool_choice" in names and "stop" in names and "reasoning_effort" in names
    missing = [n for n in names if n not in PARAMS]
    assert missing == []


def test_table_kinds_choices_and_defaults_follow_the_seed_page() -> None:
    for name, seed in _seed_params().items():
        p = PARAMS[name]
        assert p.kind in _kind(seed.type), (name, seed.type, p.kind)
        if p.kind == "enum":
            assert set(p.choices) == set(seed.options), name
        for option in seed.options:  # every documented option is accepted as it is
            assert validate_params({name: option}) == {name: option}, name
        assert p.default == seed.default, name
        assert type(p.default) is type(seed.default), name
    # the table's defaults come from the page, and only from it
    seeded = {n: s.default for n, s in _seed_params().items() if s.default is not None}
    assert seeded == {n: p.default for n, p in PARAMS.items() if p.default is not None}
    assert seeded["tool_choice"] == "auto" and seeded["n"] == 1


def test_table_rows_are_complete() -> None:
    for p in PARAMS.values():
        assert p.help and p.control and p.kind, p.name
        if p.kind == "enum":
            assert p.choices, p.name
        if p.control in ("slider", "int_slider"):
            assert p.ui_min is not None and p.ui_max is not None and p.step, p.name


@pytest.mark.parametrize(
    ("params", "param", "fragment"),
    [
        ({"temperature": 2.5}, "temperature", "0..2"),
        ({"temperature": "hot"}, "temperature", "not a number"),
        ({"temperature": float("nan")}, "temperature", "not finite"),
        ({"top_p": -0.1}, "top_p", "0..1"),
        ({"top_k": 2.5}, "top_k", "not an int"),
        ({"top_k": True}, "top_k", "not an int"),
        ({"reasoning_effort": "max"}, "reasoning_effort", "'low'"),
        ({"logprobs": 1}, "logprobs", "not a bool"),
        ({"top_logprobs": 5}, "top_logprobs", "needs logprobs=True"),
        ({"top_logprobs": 30, "logprobs": True}, "top_logprobs", "0..20"),
        ({"n": 2, "temperature": 0}, "n", "temperature"),
        ({"max_tokens": 0}, "max_tokens", "≥ 1"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"stop": 3}, "stop", "a string"),
        ({"logit_bias": {"abc": 1}}, "logit_bias", "not a token id"),
        ({"logit_bias": {"12": 101}}, "logit_bias", "-100..100"),
        ({"response_format": {"type": "yaml"}}, "response_format", "json_object"),
        ({"tool_choice": "sometimes"}, "tool_choice", "'required'"),
        ({"tools": [{"type": "function"}]}, "tools", "tools[0]"),
        (
            {"context_length_exceeded_behavior": "drop"},
            "context_length_exceeded_behavior",
            "'truncate'",
        ),
        ({"temprature": 0.5}, "temprature", "extra_body"),
        ({"model": "x"}, "model", "chat()"),
        ({"typical_p": 0}, "typical_p", "> 0"),
    ],
)
def test_bad_values_name_the_parameter_and_what_is_allowed(
    params: dict, param: str, fragment: str
) -> None:
    with pytest.raises(tmlab.ParameterError) as info:
        validate_params(params)
    assert info.value.param == param
    assert param in str(info.value)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_valid_values_pass_through_and_not_given_is_dropped() -> None:
    sent = validate_params(
        {
            "temperature": 0.7,
            "top_k": 40,
            "top_p": None,
            "logprobs": True,
            "top_logprobs": 5,
            "seed": NOT_GIVEN,
            "stop": ["\n\n"],
            "reasoning_effort": "low",
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "logit_bias": {"42": -100},
            "max_tokens": 16.0,
        }
    )
    assert sent == {
        "temperature": 0.7,
        "top_k": 40,
        "top_p": None,
        "logprobs": True,
        "top_logprobs": 5,
        "stop": ["\n\n"],
        "reasoning_effort": "low",
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "logit_bias": {"42": -100},
        "max_tokens": 16,
    }
    assert isinstance(sent["max_tokens"], int)


def test_numpy_numbers_are_accepted_and_become_python_numbers() -> None:
    np = pytest.importorskip("numpy")
    sent = validate_params(
        {
            "top_k": np.int64(5),
            "temperature": np.float32(0.5),
            "top_p": np.float64(0.9),
            "max_tokens": np.float32(16.0),
            "presence_penalty": np.int8(1),
        }
    )
    assert sent == {
        "top_k": 5,
        "temperature": 0.5,
        "top_p": 0.9,
        "max_tokens": 16,
        "presence_penalty": 1,
    }
    assert [type(v) for v in sent.values()] == [int, float, float, int, int]
    for bad in ({"top_k": np.float64(2.5)}, {"temperature": np.float32("nan")}):
        with pytest.raises(tmlab.ParameterError):
            validate_params(bad)
    with pytest.raises(tmlab.ParameterError, match="not a number"):
        validate_params({"temperature": np.bool_(True)})
    with pytest.raises(tmlab.ParameterError, match="not an int"):
        validate_params({"top_k": True})


def test_n_above_one_is_fine_with_sampling() -> None:
    assert validate_params({"n": 3, "temperature": 0.8}) == {"n": 3, "temperature": 0.8}


def test_params_table_frame_lists_every_parameter() -> None:
    df = tmlab.params_table()
    assert list(df["name"]) == list(PARAMS)
    assert df.loc[df["name"] == "reasoning_effort", "allowed"].item() == (
        "'none' | 'low' | 'medium' | 'high'"
    )


def test_params_table_shows_the_seed_pages_defaults() -> None:
    df = tmlab.params_table().set_index("name")
    assert df.loc["n", "default"] == 1
    assert df.loc["tool_choice", "default"] == "auto"
    assert df.loc["context_length_exceeded_behavior", "default"] == "truncate"
    assert df.loc["echo", "default"] is False
    assert df.loc["temperature", "default"] is None  # the page gives none


def test_both_max_tokens_names_are_sent_with_a_warning_naming_the_ambiguity() -> None:
    with pytest.warns(ParameterWarning, match="max_tokens=5 and max_completion_tokens=7") as rec:
        sent = validate_params({"max_tokens": 5, "max_completion_tokens": 7})
    assert sent == {"max_tokens": 5, "max_completion_tokens": 7}
    assert "depends on the server" in str(rec[0].message)
    assert issubclass(ParameterWarning, UserWarning)
    assert rec[0].filename == __file__  # points at the caller, not at tmlab
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert validate_params({"max_tokens": 5, "max_completion_tokens": 7}, warn=False)
        assert validate_params({"max_tokens": 5}) == {"max_tokens": 5}


def test_rows_not_on_the_seed_page_are_extensions_at_the_end_saying_who_honours_them() -> None:
    seeded = set(_seed_params())
    names = list(PARAMS)
    extra = [n for n in names if n not in seeded]
    assert {"continue_final_message", "add_generation_prompt", "continue_token_ids"} <= set(extra)
    assert names[-len(extra) :] == extra  # one group, appended at the end of the table
    for name in extra:
        p = PARAMS[name]
        assert p.group == "extensions", name
        assert "tensormesh page" in p.help.lower(), name  # says it is not on the page
        assert "vllm" in p.help.lower() or "embedded server" in p.help.lower(), name


@pytest.mark.parametrize(
    ("params", "param", "fragment"),
    [
        (
            {"continue_final_message": True, "add_generation_prompt": True},
            "continue_final_message",
            "add_generation_prompt",
        ),
        ({"continue_token_ids": [1, 2]}, "continue_token_ids", "needs continue_final_message"),
        (
            {"continue_final_message": True, "continue_token_ids": [1, -2]},
            "continue_token_ids",
            "token ids",
        ),
        (
            {"continue_final_message": True, "continue_token_ids": "1 2"},
            "continue_token_ids",
            "token ids",
        ),
    ],
)
def test_continuation_combinations_are_caught_before_sending(
    params: dict[str, Any], param: str, fragment: str
) -> None:
    with pytest.raises(tmlab.ParameterError) as info:
        validate_params(params)
    assert info.value.param == param and fragment in str(info.value)
    ok = {"continue_final_message": True, "add_generation_prompt": False, "continue_token_ids": [3]}
    assert validate_params(ok) == ok
