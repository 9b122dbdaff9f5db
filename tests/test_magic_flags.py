"""%%tmchat flags: generated from the parameter table, checked by it, one-line errors."""

from __future__ import annotations

import pytest

from tmlab.errors import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    ParameterError,
)
from tmlab.explain import error_line
from tmlab.jupyter.flags import (
    _OWN,
    DEFAULT_SHOW,
    OWN_FLAGS,
    FlagError,
    flag_name,
    help_text,
    parse_flags,
)
from tmlab.params import PARAMS


def test_every_table_parameter_has_a_flag_in_the_help() -> None:
    text = help_text()
    for p in PARAMS.values():
        assert flag_name(p.name) in text, p.name
        if p.name not in _OWN:  # --logprobs [N] has its own help
            assert p.help in text, p.name
            assert p.allowed in text, p.name
    for own in OWN_FLAGS:
        assert own.names[0] in text
    assert "default: not sent (server default)" in text
    # --n: the Tensormesh page's default, from the table; --top-k: the embedded server's own
    assert "default: not sent (server default: 1 (Tensormesh page))" in text
    assert "server default: 0 = off (embedded server)" in text


def test_scalar_flags_parse_to_request_parameters() -> None:
    flags = parse_flags(
        "--temperature 0.7 --top-k 40 --min-p 0.05 --reasoning-effort low --max-tokens 256 "
        "--seed -7 --stop '###' --ignore-eos --no-parallel-tool-calls --user 'a b'"
    )
    assert flags.params == {
        "temperature": 0.7,
        "top_k": 40,
        "min_p": 0.05,
        "reasoning_effort": "low",
        "max_tokens": 256,
        "seed": -7,
        "stop": "###",
        "ignore_eos": True,
        "parallel_tool_calls": False,
        "user": "a b",
    }
    assert flags.stream and not flags.is_sweep and flags.show == DEFAULT_SHOW


def test_json_parameters_take_json_strings() -> None:
    flags = parse_flags("""--stop '["a", "b"]' --logit-bias '{"15": -100}' --tool-choice auto""")
    assert flags.params == {"stop": ["a", "b"], "logit_bias": {"15": -100}, "tool_choice": "auto"}


def test_magic_flags() -> None:
    flags = parse_flags(
        "-m my-model --system 'Be brief.' --logprobs 5 --json --no-stream "
        "--show answer,usage --out res --continue --debug"
    )
    assert flags.model == "my-model"
    assert flags.system == "Be brief."
    assert flags.params == {
        "logprobs": True,
        "top_logprobs": 5,
        "response_format": {"type": "json_object"},
    }
    assert not flags.stream
    assert flags.show == {"answer", "usage"}
    assert (flags.out, flags.continue_, flags.debug) == ("res", True, True)


def test_logprobs_without_n_and_the_logprobs_table_is_shown() -> None:
    flags = parse_flags("--logprobs --temperature 0")
    assert flags.params == {"logprobs": True, "temperature": 0.0}
    assert "logprobs" in flags.show


def test_comma_lists_and_repeat_ask_for_a_sweep() -> None:
    flags = parse_flags("--temperature 0,0.7,1.4 --reasoning-effort low,high --repeat 5 --seed 1")
    assert flags.grid == {"temperature": [0.0, 0.7, 1.4], "reasoning_effort": ["low", "high"]}
    assert flags.params == {"seed": 1}
    assert flags.repeat == 5 and flags.is_sweep
    flags = parse_flags("-m a,b")
    assert flags.models == ["a", "b"] and flags.is_sweep
    assert parse_flags("-m a").models is None and not parse_flags("-m a").is_sweep


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        (
            "--temperature 3",
            "--temperature: temperature=3.0 is out of range (allowed: float in 0..2)",
        ),
        ("--temperature hot", "--temperature: 'hot' is not a number (float in 0..2)"),
        ("--top-k 1.5", "--top-k: '1.5' is not an int"),
        (
            "--reasoning-effort extreme",
            "'extreme' is not one of 'none' | 'low' | 'medium' | 'high'",
        ),
        ("--temperature", "--temperature needs a value (float in 0..2)"),
        ("--temprature 0.5", "unknown flag --temprature; did you mean --temperature"),
        ("--top-logprobs 5", "--top-logprobs: top_logprobs=5 needs logprobs=True"),
        ("--logprobs 30", "--logprobs: 30 is out of range (N in 0..20)"),
        (
            "--show answer,colours",
            "--show: colours is not in answer,reasoning,logprobs,trace,usage,raw",
        ),
        ("--out 1x", "--out: '1x' is not a Python identifier"),
        ("--continue --new", "--continue and --new exclude each other"),
        ("--stop 'unclosed", "cannot split the flags"),
        ("--temperature 0,9", "--temperature: temperature=9.0 is out of range"),
        ("--n 2 --temperature 0", "--n: n=2 with temperature=0"),
        ("--ignore-eos=yes", "--ignore-eos is a switch and takes no value"),
        ("hello", "unexpected value 'hello'"),
    ],
)
def test_a_bad_flag_is_one_line_naming_the_flag_and_what_is_allowed(
    line: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(FlagError) as info:
        parse_flags(line)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message
    # argparse neither printed usage nor exited
    assert capsys.readouterr() == ("", "")


# -- one error line (tmlab.explain, shared with the Explorer) ------------------------------

KEY = "sk-explain-test-0123456789"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            AuthenticationError("Missing or incorrect API key", status_code=401),
            "AuthenticationError 401: Missing or incorrect API key — the API key was refused: "
            "set TENSORMESH_INFERENCE_API_KEY or run %tmconfig key=env:VAR",
        ),
        (
            NotFoundError("The model 'x' does not exist", status_code=404, param="model"),
            "NotFoundError 404: The model 'x' does not exist (param='model') — unknown model or "
            "URL: list the served models with %tmmodels, check base_url with %tmconfig",
        ),
        (
            BadRequestError("bad\nvalue", status_code=400, param="top_k", code="invalid"),
            "BadRequestError 400: bad value (param='top_k', code='invalid') — the server "
            "rejected the request: check the parameter 'top_k' (%%tmchat? lists)",
        ),
        (
            ParameterError("top_k", "top_k=-5 is out of range", "int ≥ -1"),
            "ParameterError: top_k=-5 is out of range (allowed: int ≥ -1)",
        ),
        (
            APIConnectionError(f"could not talk to http://h: refused {KEY}"),
            "APIConnectionError: could not talk to http://h: refused *** — is the server "
            "running? check base_url with %tmconfig",
        ),
        (RuntimeError("boom\nline two"), "RuntimeError: boom line two"),
    ],
)
def test_error_line_names_class_status_message_and_fix(
    exc: BaseException, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENSORMESH_INFERENCE_API_KEY", KEY)
    assert error_line(exc) == expected
