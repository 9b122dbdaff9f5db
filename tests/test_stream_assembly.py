"""Stream reassembly: chunks merge into exactly the non-streaming JSON, deltas route live."""

from __future__ import annotations

import pytest
from _fake_server import USAGE, chunk, sse
from hypothesis import given, settings
from hypothesis import strategies as st

from tmlab.client.reader import StreamReader
from tmlab.client.stream import Delta, StreamAccumulator
from tmlab.errors import StreamError
from tmlab.result import ChatResult, split_think


def assemble(*chunks: dict, on_delta=None) -> dict:  # type: ignore[no-untyped-def]
    acc = StreamAccumulator(on_delta)
    for c in chunks:
        acc.add(c)
    acc.flush()
    return acc.build()


def test_rebuilds_the_non_streaming_json_exactly() -> None:
    raw = assemble(
        chunk("", role="assistant"),
        chunk("Hello"),
        chunk(", world"),
        chunk(finish="stop", stop_reason="<|im_end|>"),
        chunk(choices=[], usage=USAGE),
    )
    assert raw == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "test-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello, world"},
                "finish_reason": "stop",
                "logprobs": None,
                "stop_reason": "<|im_end|>",
            }
        ],
        "usage": USAGE,
    }


@pytest.mark.parametrize("where", ["final empty chunk", "finish chunk"])
def test_usage_from_whichever_chunk_carries_it(where: str) -> None:
    chunks = [chunk("Hi", role="assistant")]
    if where == "finish chunk":  # Fireworks style
        chunks.append(chunk(finish="stop", usage=USAGE))
    else:  # OpenAI include_usage style; other chunks say "usage": null
        chunks.append(chunk(finish="stop", usage=None))
        chunks.append(chunk(choices=[], usage=USAGE))
    res = ChatResult(assemble(*chunks))
    assert res.usage.completion_tokens == 3
    assert res.usage.total_tokens == 8


def test_tool_call_fragments_merge_by_index() -> None:
    def call(index: int, **fn: str) -> list[dict]:
        frag: dict = {"index": index, "function": fn}
        if "name" in fn:
            frag.update(id=f"call_{index}", type="function")
        return [frag]

    raw = assemble(
        chunk(role="assistant", tool_calls=call(0, name="get_weather", arguments="")),
        chunk(tool_calls=call(1, name="get_time", arguments='{"tz"')),
        chunk(tool_calls=call(0, arguments='{"city": ')),
        chunk(tool_calls=call(0, arguments='"Paris"}')),
        chunk(tool_calls=call(1, arguments=': "CET"}')),
        chunk(finish="tool_calls"),
    )
    res = ChatResult(raw)
    assert res.finish_reason == "tool_calls"
    assert res.tool_calls == [
        {
            "id": "call_0",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_time", "arguments": '{"tz": "CET"}'},
        },
    ]
    assert raw["choices"][0]["message"]["content"] is None


def _lp(token: str, logprob: float) -> dict:
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
        "top_logprobs": [{"token": token, "logprob": logprob, "bytes": list(token.encode())}],
    }


def test_openai_logprobs_concatenate_across_chunks() -> None:
    raw = assemble(
        chunk("Hel", role="assistant", logprobs={"content": [_lp("Hel", -0.1)]}),
        chunk("lo", logprobs={"content": [_lp("lo", -0.2)]}),
        chunk(" you", logprobs={"content": [_lp(" you", -1.5)], "refusal": None}),
        chunk(finish="stop", logprobs=None),
    )
    tokens = ChatResult(raw).choices[0].logprobs
    assert tokens is not None
    assert [t.token for t in tokens] == ["Hel", "lo", " you"]
    assert [t.logprob for t in tokens] == [-0.1, -0.2, -1.5]
    assert tokens[2].top[0].token == " you"


def test_legacy_logprobs_lists_concatenate_across_chunks() -> None:
    def legacy(tok: str, lp: float, offset: int) -> dict:
        return {
            "tokens": [tok],
            "token_logprobs": [lp],
            "top_logprobs": [{tok: lp, "x": lp - 1}],
            "text_offset": [offset],
        }

    raw = assemble(
        chunk("A", role="assistant", logprobs=legacy("A", -0.5, 0)),
        chunk("B", logprobs=legacy("B", -0.25, 1)),
        chunk(finish="length"),
    )
    lp = raw["choices"][0]["logprobs"]
    assert lp["tokens"] == ["A", "B"]
    assert lp["token_logprobs"] == [-0.5, -0.25]
    assert lp["text_offset"] == [0, 1]
    tokens = ChatResult(raw).choices[0].logprobs
    assert tokens is not None
    assert [(t.token, t.logprob) for t in tokens] == [("A", -0.5), ("B", -0.25)]
    assert [a.token for a in tokens[1].top] == ["B", "x"]


def test_token_ids_raw_output_and_top_level_fields() -> None:
    first = chunk("a", role="assistant", token_ids=[10])
    first["prompt_token_ids"] = [1, 2, 3]
    last = chunk(finish="stop", token_ids=[11, 12], raw_output={"completion": "ab"})
    last["perf_metrics"] = {"ttft_ms": 12}
    raw = assemble(first, chunk("b", token_ids=[]), last)
    res = ChatResult(raw)
    assert res.choices[0].token_ids == [10, 11, 12]
    assert raw["choices"][0]["raw_output"] == {"completion": "ab"}
    assert res.prompt_token_ids == [1, 2, 3]
    assert res.perf_metrics == {"ttft_ms": 12}
    assert raw["object"] == "chat.completion"


def test_choices_of_n_are_kept_apart() -> None:
    raw = assemble(
        chunk("A", index=0, role="assistant"),
        chunk("X", index=1, role="assistant"),
        chunk("B", index=0),
        chunk("Y", index=1, finish="length"),
        chunk(index=0, finish="stop"),
    )
    res = ChatResult(raw)
    assert [(c.index, c.text, c.finish_reason) for c in res.choices] == [
        (0, "AB", "stop"),
        (1, "XY", "length"),
    ]


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_reasoning_fields_concatenate(field: str) -> None:
    deltas: list[Delta] = []
    raw = assemble(
        chunk(role="assistant", **{field: "Let me "}),
        chunk(**{field: "think."}),
        chunk("42"),
        chunk(finish="stop"),
        on_delta=deltas.append,
    )
    assert raw["choices"][0]["message"][field] == "Let me think."
    res = ChatResult(raw)
    assert (res.reasoning, res.text) == ("Let me think.", "42")
    assert "".join(d.reasoning for d in deltas) == "Let me think."


def test_split_think_tags_route_live_to_reasoning() -> None:
    deltas: list[Delta] = []
    pieces = ["<thi", "nk>The user ", "greets.</th", "ink>", "\n\nHel", "lo <", "b>!"]
    raw = assemble(
        *[chunk(p, role="assistant" if i == 0 else None) for i, p in enumerate(pieces)],
        chunk(finish="stop"),
        on_delta=deltas.append,
    )
    # raw keeps what the server sent; the result splits it
    assert raw["choices"][0]["message"]["content"] == "".join(pieces)
    res = ChatResult(raw)
    assert (res.reasoning, res.text) == ("The user greets.", "Hello <b>!")
    assert "".join(d.text for d in deltas) == "Hello <b>!"
    assert "".join(d.reasoning for d in deltas) == "The user greets."
    # no tag fragment ever reaches the live text
    assert all("<th" not in d.text and "nk>" not in d.text for d in deltas)
    assert deltas[-1].finish_reason == "stop"


def test_held_back_partial_tag_is_released_at_the_end() -> None:
    deltas: list[Delta] = []
    assemble(chunk("a <", role="assistant"), on_delta=deltas.append)
    assert "".join(d.text for d in deltas) == "a <"


THINK_TEXTS = [
    "<think>reason</think>\n\nanswer",
    "intro <think>r</think> tail",
    "<think>unclosed reasoning",
    "no tags at all <b>bold</b> < <",
    "<think>a</think>b<think>c</think>",
    "<think></think>\n\n\nx",
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(THINK_TEXTS), st.lists(st.integers(0, 40), max_size=8))
def test_live_routing_agrees_with_split_think_for_any_chunking(text: str, cuts: list[int]) -> None:
    points = sorted({c for c in cuts if c <= len(text)})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    deltas: list[Delta] = []
    assemble(*[chunk(p) for p in pieces if p], chunk(finish="stop"), on_delta=deltas.append)
    answer, reasoning = split_think(text)
    assert "".join(d.text for d in deltas) == answer
    assert "".join(d.reasoning for d in deltas) == (reasoning or "")


def test_on_delta_once_per_choice_per_chunk_with_the_raw_chunk() -> None:
    deltas: list[Delta] = []
    chunks = [chunk("a", role="assistant"), chunk("b"), chunk(finish="stop")]
    assemble(*chunks, chunk(choices=[], usage=USAGE), on_delta=deltas.append)
    assert [(d.choice, d.text, d.finish_reason) for d in deltas] == [
        (0, "a", None),
        (0, "b", None),
        (0, "", "stop"),
    ]
    assert deltas[1].chunk is chunks[1]


def test_delta_carries_this_pieces_logprobs_and_tool_fragments() -> None:
    deltas: list[Delta] = []
    frag = [{"index": 0, "id": "c", "type": "function", "function": {"name": "f"}}]
    assemble(
        chunk("x", logprobs={"content": [_lp("x", -0.7)]}),
        chunk(tool_calls=frag),
        on_delta=deltas.append,
    )
    assert deltas[0].logprobs is not None and deltas[0].logprobs[0].logprob == -0.7
    assert deltas[1].tool_calls == frag


# -- the byte-level reader -------------------------------------------------------------------


def read(body: bytes, request: dict | None = None) -> ChatResult:
    reader = StreamReader(request or {"model": "m"})
    for i in range(0, len(body), 50):  # network-like pieces that split lines
        reader.feed(body[i : i + 50])
    return reader.result()


def test_reader_returns_a_complete_result_with_timing() -> None:
    res = read(sse(chunk("Hi", role="assistant"), chunk(" there", finish="stop", usage=USAGE)))
    assert res.complete and res.text == "Hi there"
    assert res.request == {"model": "m"}
    assert res.timing.ttft_s is not None and res.timing.latency_s is not None
    assert 0 <= res.timing.ttft_s <= res.timing.latency_s


def test_reader_without_done_but_finished_is_complete() -> None:
    res = read(sse(chunk("Hi", role="assistant"), chunk(finish="stop"), done=False))
    assert res.complete and res.finish_reason == "stop"


def test_reader_without_done_or_finish_reason_is_broken() -> None:
    with pytest.raises(StreamError, match="before \\[DONE\\]") as info:
        read(sse(chunk("Hi", role="assistant"), chunk(" the"), done=False))
    partial = info.value.partial
    assert partial is not None and not partial.complete
    assert partial.text == "Hi the"


def test_reader_malformed_line_keeps_partial() -> None:
    with pytest.raises(StreamError, match="malformed") as info:
        read(sse(chunk("Hi", role="assistant"), '{"choices": [', chunk("x")))
    assert info.value.partial is not None and info.value.partial.text == "Hi"


def test_reader_in_band_error() -> None:
    err = {"error": {"message": "model overloaded", "type": "server_error", "code": 503}}
    with pytest.raises(StreamError, match="model overloaded") as info:
        read(sse(chunk("Par", role="assistant"), err))
    assert (info.value.type, info.value.code) == ("server_error", 503)
    assert info.value.partial is not None and info.value.partial.text == "Par"


def test_reader_ignores_bytes_after_done() -> None:
    res = read(sse(chunk("ok", role="assistant", finish="stop")) + b"data: garbage\n\n")
    assert res.text == "ok"


def test_timing_formulas() -> None:
    from tmlab.client.reader import make_timing

    streamed = make_timing(10.0, 10.5, 12.5, 9)  # first token at +0.5 s, 8 more in 2 s
    assert (streamed.latency_s, streamed.ttft_s, streamed.tokens_per_s) == (2.5, 0.5, 4.0)
    whole = make_timing(10.0, None, 12.0, 9)  # non-streaming: all at once
    assert (whole.latency_s, whole.ttft_s, whole.tokens_per_s) == (2.0, 2.0, 4.5)
    assert make_timing(10.0, 10.5, 12.5, 1).tokens_per_s is None  # no interval to measure
    assert make_timing(10.0, None, 12.0, None).tokens_per_s is None


# -- odd but valid server output ---------------------------------------------------------------


def _call(args: object, **frag: object) -> list[dict]:
    return [{**frag, "function": {"arguments": args, **({"name": "f"} if "id" in frag else {})}}]


def test_tool_call_arguments_sent_as_an_object_match_the_non_streaming_json() -> None:
    # Whole call in one fragment: kept as the object, as a non-streaming answer would be.
    raw = assemble(
        chunk(role="assistant", tool_calls=_call({"x": 1}, index=0, id="a", type="function")),
        chunk(finish="tool_calls"),
    )
    call = raw["choices"][0]["message"]["tool_calls"][0]
    assert call == {"id": "a", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
    # Mixed with string fragments: everything becomes JSON text, concatenated in order.
    raw = assemble(
        chunk(role="assistant", tool_calls=_call({"x": 1}, index=0, id="a", type="function")),
        chunk(tool_calls=_call(" ", index=0)),
        chunk(finish="tool_calls"),
    )
    assert raw["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"x": 1} '


def test_tool_call_fragments_without_index_start_a_new_call_on_a_new_id() -> None:
    raw = assemble(
        chunk(role="assistant", tool_calls=_call('{"x"', id="a", type="function")),
        chunk(tool_calls=_call(": 1}")),  # no index, no id: continues call "a"
        chunk(tool_calls=_call('{"y": 2}', id="b", type="function")),
        chunk(tool_calls=_call("", id="b")),  # the same id again: still call "b"
        chunk(finish="tool_calls"),
    )
    calls = raw["choices"][0]["message"]["tool_calls"]
    assert [(c["id"], c["function"]["arguments"]) for c in calls] == [
        ("a", '{"x": 1}'),
        ("b", '{"y": 2}'),
    ]


def test_content_sent_as_a_list_of_parts_is_joined() -> None:
    deltas: list[Delta] = []
    parts = [{"type": "text", "text": "Hel"}, {"type": "image_url"}, {"type": "text", "text": "lo"}]
    raw = assemble(
        chunk(parts, role="assistant"),  # type: ignore[arg-type]
        chunk([{"type": "text", "text": "!"}], finish="stop"),  # type: ignore[arg-type]
        on_delta=deltas.append,
    )
    assert ChatResult(raw).text == "Hello!"
    assert "".join(d.text for d in deltas) == "Hello!"


def test_reader_ignores_empty_keep_alive_events() -> None:
    body = sse(chunk("Hi", role="assistant"), done=False)
    body += b"data:\n\ndata: \n\n" + sse(chunk(" there", finish="stop"))
    res = read(body)
    assert res.complete and res.text == "Hi there"


def test_reader_reports_a_non_json_error_event_as_the_servers_error() -> None:
    body = sse(chunk("Par", role="assistant"), done=False) + b"event: error\ndata: overloaded\n\n"
    with pytest.raises(StreamError) as info:
        read(body)
    assert "malformed" not in str(info.value)
    assert str(info.value) == "the server reported an error mid-stream: overloaded"
    assert info.value.partial is not None and info.value.partial.text == "Par"


def test_reader_stops_at_done_and_times_the_answer_there() -> None:
    reader = StreamReader({"model": "m"})
    reader.feed(sse(chunk("ok", role="assistant", finish="stop")))
    assert reader.done
    ended = reader.end
    assert ended is not None
    res = reader.result()
    assert res.timing.latency_s == pytest.approx(ended - reader.start)
