"""End to end: every sampling and output parameter has a visible effect on the real model."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from _e2e import MODEL, STORY, WEATHER

pytestmark = pytest.mark.slow


def chat(http: Any, **body: Any) -> dict[str, Any]:
    body.setdefault("model", MODEL)
    body.setdefault("messages", STORY)
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def text(res: dict[str, Any], i: int = 0) -> str:
    return res["choices"][i]["message"]["content"]


def test_greedy_is_deterministic_and_top_k_1_equals_greedy(http: Any) -> None:
    greedy = chat(http, temperature=0, max_tokens=16)
    assert text(greedy) == text(chat(http, temperature=0, max_tokens=16))
    assert text(chat(http, temperature=1.0, top_k=1, seed=5, max_tokens=16)) == text(greedy)


def test_same_seed_same_text_other_seed_other_text(http: Any) -> None:
    a = chat(http, temperature=1.2, seed=42, max_tokens=20)
    b = chat(http, temperature=1.2, seed=42, max_tokens=20)
    c = chat(http, temperature=1.2, seed=43, max_tokens=20)
    assert text(a) == text(b)
    assert text(a) != text(c)


@pytest.mark.parametrize("name,value", [("top_p", 0.0001), ("min_p", 1.0)])
def test_truncation_to_one_token_equals_greedy(http: Any, name: str, value: float) -> None:
    greedy = text(chat(http, temperature=0, max_tokens=12))
    assert text(chat(http, temperature=1.5, seed=3, max_tokens=12, **{name: value})) == greedy


def test_typical_p_keeps_one_typical_token(http: Any) -> None:
    # typical_p≈0 keeps only the token whose surprise is nearest the entropy: the seed no
    # longer matters, and it is not the greedy choice
    a = text(chat(http, temperature=1.5, seed=3, max_tokens=12, typical_p=0.0001))
    b = text(chat(http, temperature=1.5, seed=4, max_tokens=12, typical_p=0.0001))
    free = {text(chat(http, temperature=1.5, seed=s, max_tokens=12)) for s in (3, 4)}
    assert a == b
    assert len(free) == 2
    assert a != text(chat(http, temperature=0, max_tokens=12))


def test_penalties_change_greedy_output(http: Any) -> None:
    base = chat(http, temperature=0, max_tokens=30)
    for name, value in (
        ("repetition_penalty", 1.8),
        ("presence_penalty", 2.0),
        ("frequency_penalty", 2.0),
    ):
        other = chat(http, temperature=0, max_tokens=30, **{name: value})
        assert text(other) != text(base), name


def test_mirostat_samples_reproducibly_with_a_seed(http: Any) -> None:
    body = dict(temperature=1.0, mirostat_target=3.0, mirostat_lr=0.1, seed=7, max_tokens=16)
    a, b = (chat(http, return_token_ids=True, **body) for _ in range(2))
    assert a["choices"][0]["token_ids"] == b["choices"][0]["token_ids"]
    low = chat(http, temperature=1.0, mirostat_target=0.01, mirostat_lr=0.1, seed=7, max_tokens=12)
    # a target surprise near 0 leaves only the most likely token: greedy
    assert text(low) == text(chat(http, temperature=0, max_tokens=12))


def test_n_gives_several_different_choices(http: Any) -> None:
    res = chat(http, n=3, temperature=1.5, seed=1, max_tokens=10)
    assert [c["index"] for c in res["choices"]] == [0, 1, 2]
    assert len({text(res, i) for i in range(3)}) > 1
    assert res["usage"]["completion_tokens"] == sum(
        len(c["token_ids"])
        for c in chat(http, n=3, temperature=1.5, seed=1, max_tokens=10, return_token_ids=True)[
            "choices"
        ]
    )


def test_choices_of_different_seeds_never_share_a_sample(http: Any) -> None:
    # With seed + i, choice 1 of seed=1 was choice 0 of seed=2: a sweep over seeds repeated
    # itself. Each choice's generator now comes from (seed, i).
    body = dict(temperature=1.5, max_tokens=24, return_token_ids=True)
    two = chat(http, seed=1, n=2, **body)
    one = chat(http, seed=2, n=1, **body)
    assert two["choices"][1]["token_ids"] != one["choices"][0]["token_ids"]
    # and n choices stay reproducible, each its own sample
    again = chat(http, seed=1, n=2, **body)
    assert [c["token_ids"] for c in again["choices"]] == [c["token_ids"] for c in two["choices"]]
    assert two["choices"][0]["token_ids"] != two["choices"][1]["token_ids"]


def test_max_tokens_and_max_completion_tokens_give_length(http: Any) -> None:
    for name in ("max_tokens", "max_completion_tokens"):
        res = chat(http, temperature=0, **{name: 3})
        assert res["choices"][0]["finish_reason"] == "length"
        assert res["usage"]["completion_tokens"] == 3


def test_both_max_tokens_names_are_accepted_and_the_smaller_applies(http: Any) -> None:
    for small, large in (
        ("max_tokens", "max_completion_tokens"),
        ("max_completion_tokens", "max_tokens"),
    ):
        res = chat(http, temperature=0, **{small: 3, large: 7})
        assert res["choices"][0]["finish_reason"] == "length"
        assert res["usage"]["completion_tokens"] == 3


def test_stop_stops_before_the_stop_sequence(http: Any) -> None:
    full = text(chat(http, temperature=0, max_tokens=30))
    word = full.split()[3]
    res = chat(http, temperature=0, max_tokens=30, stop=[word])
    assert res["choices"][0]["finish_reason"] == "stop"
    assert res["choices"][0]["stop_reason"] == word
    assert text(res) == full[: full.index(word)]


def test_logit_bias_minus_100_bans_a_token(http: Any) -> None:
    res = chat(http, temperature=0, max_tokens=8, return_token_ids=True)
    first = res["choices"][0]["token_ids"][0]
    banned = chat(
        http, temperature=0, max_tokens=8, return_token_ids=True, logit_bias={str(first): -100}
    )
    assert first not in banned["choices"][0]["token_ids"]
    forced = chat(http, temperature=0, max_tokens=3, return_token_ids=True, logit_bias={"34": 100})
    assert forced["choices"][0]["token_ids"] == [34, 34, 34]


def test_a_token_longer_than_32_bytes_keeps_its_text(http: Any) -> None:
    # SmolLM2 has 47 tokens of 33-81 bytes (runs of spaces, dashes); llama-cpp-python's
    # detokenize returned them empty, so such a token vanished from the answer.
    long = "\n" + " " * 32
    (token,) = http.post("/tokenize", json={"prompt": long}).json()["tokens"]
    res = chat(
        http,
        temperature=0,
        max_tokens=1,
        logprobs=True,
        return_token_ids=True,
        logit_bias={str(token): 100},
    )
    assert res["choices"][0]["token_ids"] == [token]
    assert text(res) == long
    item = res["choices"][0]["logprobs"]["content"][0]
    assert item["token"] == long and bytes(item["bytes"]) == long.encode()
    assert http.post("/detokenize", json={"tokens": [token]}).json()["prompt"] == long


def test_logprobs_are_raw_and_top_logprobs_exact(http: Any) -> None:
    res = chat(
        http,
        temperature=1.0,
        seed=11,
        max_tokens=8,
        logprobs=True,
        top_logprobs=5,
        return_token_ids=True,
    )
    content = res["choices"][0]["logprobs"]["content"]
    ids = res["choices"][0]["token_ids"]
    assert [e["token_id"] for e in content] == ids[: len(content)]
    for e in content:
        tops = e["top_logprobs"]
        assert len(tops) == 5
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
        assert sum(math.exp(t["logprob"]) for t in tops) <= 1.0 + 1e-9
        assert e["logprob"] <= 0
        assert bytes(e["bytes"]).decode("utf-8", "replace") == e["token"]
        if e["token_id"] in [t["token_id"] for t in tops]:
            match = next(t for t in tops if t["token_id"] == e["token_id"])
            assert match["logprob"] == e["logprob"]
    assert "".join(e["token"] for e in content) == text(res)
    # the raw distribution does not depend on temperature (vLLM's default)
    cold = chat(http, temperature=0.1, seed=11, max_tokens=1, logprobs=True, top_logprobs=5)
    hot = chat(http, temperature=1.9, seed=11, max_tokens=1, logprobs=True, top_logprobs=5)
    assert (
        cold["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        == hot["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    )


def test_logprobs_without_top_logprobs(http: Any) -> None:
    res = chat(http, temperature=0, max_tokens=4, logprobs=True)
    content = res["choices"][0]["logprobs"]["content"]
    assert len(content) == 4 and all(e["top_logprobs"] == [] for e in content)
    assert chat(http, temperature=0, max_tokens=2)["choices"][0]["logprobs"] is None


def test_echo_and_echo_last(http: Any) -> None:
    res = chat(http, temperature=0, max_tokens=4, echo=True, raw_output=True)
    prompt = res["choices"][0]["raw_output"]["prompt_fragments"][0]
    plain = text(chat(http, temperature=0, max_tokens=4))
    assert text(res) == prompt + plain
    last = chat(http, temperature=0, max_tokens=4, echo_last=3)
    assert text(last).endswith(plain) and len(text(last)) > len(plain)


def test_ignore_eos_generates_to_max_tokens(http: Any) -> None:
    msgs = [{"role": "user", "content": "Say OK."}]
    short = chat(http, messages=msgs, temperature=0, max_tokens=40)
    assert short["choices"][0]["finish_reason"] == "stop"
    n = short["usage"]["completion_tokens"]
    res = chat(http, messages=msgs, temperature=0, max_tokens=n + 5, ignore_eos=True)
    assert res["choices"][0]["finish_reason"] == "length"
    assert res["usage"]["completion_tokens"] == n + 5


def test_json_object_output_parses(http: Any) -> None:
    msgs = [{"role": "user", "content": "Give me a JSON object with a name and an age."}]
    res = chat(
        http,
        messages=msgs,
        temperature=0.7,
        seed=1,
        max_tokens=80,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(text(res)), dict)


def test_json_schema_output_validates(http: Any) -> None:
    import jsonschema

    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "population": {"type": "integer"},
        },
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    msgs = [{"role": "user", "content": "Name a big city and its population."}]
    res = chat(
        http,
        messages=msgs,
        temperature=0,
        max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    jsonschema.validate(json.loads(text(res)), schema)


TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "maxLength": 30}},
            "required": ["timezone"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_time"}}]
)
def test_forced_tool_call_arguments_validate(http: Any, choice: Any) -> None:
    import jsonschema

    res = chat(
        http, messages=ASK, tools=[WEATHER, TIME], tool_choice=choice, temperature=0, max_tokens=60
    )
    c = res["choices"][0]
    assert c["finish_reason"] == "tool_calls"
    assert c["message"]["content"] is None
    (call,) = c["message"]["tool_calls"]
    tool = {"get_weather": WEATHER, "get_time": TIME}[call["function"]["name"]]
    if isinstance(choice, dict):
        assert call["function"]["name"] == "get_time"
    jsonschema.validate(json.loads(call["function"]["arguments"]), tool["function"]["parameters"])
    assert call["id"].startswith("call_") and call["type"] == "function"


def test_tool_choice_none_and_auto_answer(http: Any) -> None:
    none = chat(
        http,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="none",
        temperature=0,
        max_tokens=10,
        raw_output=True,
    )
    c = none["choices"][0]
    assert "tool_calls" not in c["message"]
    assert c["finish_reason"] in ("stop", "length")
    assert c["message"]["content"].strip()
    assert "<tool_call>" not in c["message"]["content"]
    # none: the tools are not even described to the model
    assert "get_weather" not in c["raw_output"]["prompt_fragments"][0]
    # auto without an example: this model answers in words; the tools are in the prompt
    auto = chat(http, messages=ASK, tools=[WEATHER], temperature=0, max_tokens=60, raw_output=True)
    c = auto["choices"][0]
    assert "get_weather" in c["raw_output"]["prompt_fragments"][0]
    if c["finish_reason"] == "tool_calls":
        (call,) = c["message"]["tool_calls"]
        assert call["function"]["name"] == "get_weather"
        assert set(json.loads(call["function"]["arguments"])) == {"city", "unit"}
    else:
        assert c["finish_reason"] in ("stop", "length")
        assert "tool_calls" not in c["message"] and c["message"]["content"].strip()


def test_auto_tool_call_is_parsed_when_the_model_calls(http: Any) -> None:
    # an earlier call in the conversation shows the model how; it calls again on its own
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "London", "unit": "celsius"}'},
    }
    msgs = [
        {"role": "user", "content": "What is the weather in London?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        *ASK,
    ]
    res = chat(http, messages=msgs, tools=[WEATHER], temperature=0, max_tokens=60)
    c = res["choices"][0]
    assert c["finish_reason"] == "tool_calls", c
    args = json.loads(c["message"]["tool_calls"][0]["function"]["arguments"])
    assert c["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert set(args) == {"city", "unit"}


def test_return_token_ids(http: Any) -> None:
    res = chat(http, temperature=0, max_tokens=5, return_token_ids=True)
    ids = res["choices"][0]["token_ids"]
    assert len(ids) == res["usage"]["completion_tokens"]
    assert len(res["prompt_token_ids"]) == res["usage"]["prompt_tokens"]
    detok = http.post("/detokenize", json={"tokens": ids}).json()["prompt"]
    assert detok.startswith(text(res))


def test_perf_metrics_and_raw_output(http: Any) -> None:
    res = chat(http, temperature=0, max_tokens=5, perf_metrics_in_response=True, raw_output=True)
    perf = res["perf_metrics"]
    assert perf["prompt_tokens"] == res["usage"]["prompt_tokens"]
    assert 0 < perf["time_to_first_token"] <= perf["total_time"]
    assert perf["processing_time"] > 0
    raw = res["choices"][0]["raw_output"]
    assert raw["prompt_fragments"][0].endswith("<|im_start|>assistant\n")
    assert "Tell me a short story about a dragon." in raw["prompt_fragments"][0]
    assert raw["completion"].startswith(text(res))
    assert "raw_output" not in chat(http, temperature=0, max_tokens=2)["choices"][0]


def test_prompt_truncate_len_drops_oldest_messages_first(http: Any) -> None:
    msgs = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "First question about apples " * 20},
        {"role": "assistant", "content": "An answer about apples " * 20},
        {"role": "user", "content": "Name a color."},
    ]
    full = chat(http, messages=msgs, temperature=0, max_tokens=2, raw_output=True)
    cut = chat(
        http, messages=msgs, temperature=0, max_tokens=2, raw_output=True, prompt_truncate_len=60
    )
    assert cut["usage"]["prompt_tokens"] <= 60 < full["usage"]["prompt_tokens"]
    prompt = cut["choices"][0]["raw_output"]["prompt_fragments"][0]
    assert "You are terse." in prompt and "Name a color." in prompt and "apples" not in prompt


def test_context_length_exceeded_behavior(http: Any) -> None:
    max_len = http.get("/v1/models").json()["data"][0]["max_model_len"]
    body = {"model": MODEL, "messages": STORY, "max_tokens": max_len}
    r = http.post(
        "/v1/chat/completions", json={**body, "context_length_exceeded_behavior": "error"}
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    # truncate (the default) clamps max_tokens to what fits; stop after 3 tokens via logit
    ok = chat(
        http,
        temperature=0,
        max_tokens=max_len,
        stop=[" "],
        context_length_exceeded_behavior="truncate",
    )
    assert ok["choices"][0]["finish_reason"] == "stop"


def test_reasoning_effort_high_thinks_more_than_low(http: Any) -> None:
    msgs = [{"role": "user", "content": "Is 17 a prime number?"}]
    low = chat(http, messages=msgs, reasoning_effort="low", temperature=0, max_tokens=16)
    high = chat(http, messages=msgs, reasoning_effort="high", temperature=0, max_tokens=16)
    lo = low["usage"]["completion_tokens_details"]["reasoning_tokens"]
    hi = high["usage"]["completion_tokens_details"]["reasoning_tokens"]
    assert 0 < lo < hi
    assert low["choices"][0]["message"]["reasoning"]
    assert high["usage"]["completion_tokens"] > hi  # reasoning + answer
    none = chat(http, messages=msgs, reasoning_effort="none", temperature=0, max_tokens=8)
    assert "reasoning" not in none["choices"][0]["message"]
    assert none["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0


def test_unsupported_parameters_are_accepted_and_ignored(http: Any) -> None:
    base = text(chat(http, temperature=0, max_tokens=6))
    res = chat(
        http,
        temperature=0,
        max_tokens=6,
        speculation="abc",
        prediction={"x": 1},
        prompt_cache_isolation_key="k",
        metadata={"a": "b"},
        user="u",
        parallel_tool_calls=False,
        reasoning_history="disabled",
        something_else=1,
    )
    assert text(res) == base


@pytest.mark.parametrize(
    "sampling", [{"temperature": 0}, {"temperature": 0.9, "seed": 7}], ids=["greedy", "seeded"]
)
def test_same_request_same_numbers_whatever_came_before(
    http: Any, sampling: dict[str, Any]
) -> None:
    a = {
        "messages": [{"role": "user", "content": "Write a haiku about the sea"}],
        "max_tokens": 20,
        "logprobs": True,
        "top_logprobs": 3,
        "return_token_ids": True,
        **sampling,
    }
    # B shares the chat template's prefix with A, so a KV cache could reuse part of it
    b = {"messages": [{"role": "user", "content": "Tell me about cats"}], "max_tokens": 2}
    first = chat(http, **a)
    chat(http, **b)
    again = chat(http, **a)
    assert again["choices"][0]["token_ids"] == first["choices"][0]["token_ids"]
    assert text(again) == text(first)
    assert again["choices"][0]["logprobs"] == first["choices"][0]["logprobs"]
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


@pytest.mark.parametrize("tiny", [1e-45, 5e-324, 9e-6])
def test_a_tiny_temperature_is_greedy(http: Any, tiny: float) -> None:
    greedy = chat(http, temperature=0, max_tokens=12, return_token_ids=True)
    for seed in (1, 2):
        res = chat(http, temperature=tiny, seed=seed, max_tokens=12, return_token_ids=True)
        assert res["choices"][0]["token_ids"] == greedy["choices"][0]["token_ids"]


def test_a_json_schema_answer_never_holds_a_raw_control_character(http: Any) -> None:
    """A string in a schema-constrained answer may not contain a raw newline (not JSON):
    pushed hard toward the newline token, the answer still parses as strict JSON."""
    newline = http.post("/tokenize", json={"prompt": "\n"}).json()["tokens"][-1]
    schema = {
        "type": "object",
        "properties": {"note": {"type": "string"}},
        "required": ["note"],
    }
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a two-line poem as JSON."}],
        "response_format": {"type": "json_schema", "json_schema": {"schema": schema}},
        "logit_bias": {str(newline): 30},
        "temperature": 0,
        "max_tokens": 40,
    }
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    text = choice["message"]["content"]
    # the string's characters so far (the answer may stop at max_tokens inside it)
    value = re.search(r'"note"\s*:\s*"((?:[^"\\]|\\.)*)', text)
    assert value is not None, text
    assert not [ch for ch in value.group(1) if ord(ch) < 0x20], text
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(text)["note"], str)  # strict JSON
