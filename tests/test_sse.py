"""The SSE decoder: every way a server may frame events, and any way the network splits them.

Decoding goes through the path the clients use: :class:`SSEDecoder` fed raw chunks, then
flushed, and :class:`StreamReader` for the JSON in the events.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tmlab
from tmlab.client.reader import StreamReader
from tmlab.client.sse import DONE, SSEDecodeError, SSEDecoder


def decode(*chunks: bytes) -> list[tuple[str | None, str]]:
    decoder = SSEDecoder()
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return events + decoder.flush()


def chunk(content: str) -> str:
    return json.dumps({"choices": [{"index": 0, "delta": {"content": content}}]})


@pytest.mark.parametrize(
    ("body", "events"),
    [
        (b'data: {"a": 1}\n\n', [(None, '{"a": 1}')]),
        (b"data:no-space\n\n", [(None, "no-space")]),
        (b"data:  two spaces\n\n", [(None, " two spaces")]),
        (b"data: line1\ndata: line2\n\n", [(None, "line1\nline2")]),
        (b"data: a\r\n\r\ndata: b\r\n\r\n", [(None, "a"), (None, "b")]),
        (b"data: a\r\rdata: b\r\r", [(None, "a"), (None, "b")]),
        (b": keep-alive\n\ndata: x\n\n", [(None, "x")]),
        (b"event: error\ndata: {}\n\ndata: next\n\n", [("error", "{}"), (None, "next")]),
        (b"id: 7\nretry: 100\ndata: x\n\n", [(None, "x")]),
        (b"event: ping\n\ndata: x\n\n", [(None, "x")]),  # no data: not dispatched
        (b"data:\n\n", []),  # empty data (a keep-alive): not dispatched, as the spec says
        (b"data: \n\ndata: x\n\n", [(None, "x")]),
        (b"data:\n\ndata:\ndata:\n\n", [(None, "\n")]),
        (b"\n\n\ndata: x\n\n", [(None, "x")]),
        (b"data: [DONE]", [(None, DONE)]),  # no final blank line: still seen at the end
        (b"data: caf\xc3\xa9\n\n", [(None, "café")]),
    ],
)
def test_framings(body: bytes, events: list[tuple[str | None, str]]) -> None:
    assert decode(body) == events


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    # "\r" ends chunk 1 and "\n" starts chunk 2: one line end, not an extra blank line that
    # would dispatch the event too early and split "a" from "b".
    assert decode(b"data: a\r", b"\ndata: b\r", b"\n\r\n") == [(None, "a\nb")]


def test_utf8_character_split_between_chunks() -> None:
    body = "data: naïve — 日本\n\n".encode()
    for cut in range(1, len(body)):
        assert decode(body[:cut], body[cut:]) == [(None, "naïve — 日本")]


def test_a_line_over_many_small_chunks() -> None:
    data = json.dumps({"text": "x" * 5000})
    body = f"data: {data}\n\n".encode()
    assert decode(*[body[i : i + 7] for i in range(0, len(body), 7)]) == [(None, data)]


def test_feed_returns_events_as_they_complete() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: one\n") == []
    assert dec.feed(b"\ndata: tw") == [(None, "one")]
    assert dec.feed(b"o\n\n") == [(None, "two")]
    assert dec.flush() == []


def test_events_are_parsed_up_to_done_and_nothing_after() -> None:
    reader = StreamReader({})
    body = f"data: {chunk('one ')}\n\ndata: {chunk('two')}\n\ndata: [DONE]\n\n"
    reader.feed(body.encode() + f"data: {chunk(' three')}\n\n".encode())
    assert reader.done
    assert reader.result().text == "one two"


def test_malformed_json_is_a_stream_error_naming_the_line() -> None:
    reader = StreamReader({})
    with pytest.raises(tmlab.StreamError, match="not json") as info:
        reader.feed(f"data: {chunk('one')}\n\ndata: not json\n\n".encode())
    assert not isinstance(info.value, json.JSONDecodeError)
    assert info.value.partial is not None and info.value.partial.text == "one"


def test_invalid_utf8_is_a_decode_error() -> None:
    with pytest.raises(SSEDecodeError, match="UTF-8"):
        decode(b"data: \xff\xfe\n\n")


STREAM = (
    b": comment\r\n"
    b'data: {"a": "\xc3\xa9"}\r\n\r\n'
    b"event: error\ndata: multi\ndata: line\n\n"
    b"data: x\r\rdata: [DONE]\n\n"
)


def test_every_two_way_split_gives_the_same_events() -> None:
    whole = decode(STREAM)
    assert whole == [(None, '{"a": "é"}'), ("error", "multi\nline"), (None, "x"), (None, DONE)]
    for cut in range(len(STREAM) + 1):
        assert decode(STREAM[:cut], STREAM[cut:]) == whole, cut


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    pieces = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    assert decode(*pieces) == decode(STREAM)
