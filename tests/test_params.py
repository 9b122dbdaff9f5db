"""The parameter table and the validation generated from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import tmlab
from tmlab.params import NOT_GIVEN, PARAMS, validate_params


def _seed_params() -> list[str]:
    """Parameter names of the seed API page's request body (between Body and Response)."""
    # A copy of the Tensormesh "Create Chat Completion" reference page.
    text = (Path(__file__).parent / "data" / "tensormesh-chat-completions.txt").read_text()
    body = text[text.index("\nBody\n") : text.index("\nResponse\n")]
    names = re.findall(
        r"^([a-z_]+)\n(?:[A-Z]\w* · )?(?:string|number|integer|boolean|enum|"
        r"object|Logit|Metadata|ChatCompletion|StreamOptions|ResponseFormat|"
        r"ThinkingConfig|\n)",
        body,
        flags=re.M,
    )
    # "required" is the marker line under model/messages, not a parameter.
    return sorted(set(names) - {"model", "messages", "stream", "required"})


def test_every_seed_parameter_is_in_the_table() -> None:
    names = _seed_params()
    assert len(names) > 30, names
    missing = [n for n in names if n not in PARAMS]
    assert missing == []


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
        ({"max_tokens": 5, "max_completion_tokens": 5}, "max_completion_tokens", "both"),
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
