"""The server's text assembly: stop strings and held-back text, without the model."""

from __future__ import annotations

from tmlab.server.text import TextStream


def test_the_earliest_stop_wins_whatever_the_list_order() -> None:
    ts = TextStream(["world", "hello"], None)
    out = ts.feed(b"say hello world")
    assert (ts.text, ts.stopped, out) == ("say ", "hello", "say ")


def test_a_possible_stop_prefix_is_held_back_until_certain() -> None:
    ts = TextStream(["STOP"], None)
    assert ts.feed(b"abc ST") == "abc "
    assert ts.feed(b"ART") == "START"
    assert ts.feed(b" xx STO") == " xx "
    assert ts.feed(b"P more") == ""
    assert (ts.text, ts.stopped) == ("abc START xx ", "STOP")


def test_split_utf8_is_decoded_once_complete() -> None:
    ts = TextStream([], None)
    snow = "☃".encode()
    assert ts.feed(snow[:2]) == ""
    assert ts.feed(snow[2:]) == "☃"


def test_tool_call_marker_moves_text_to_the_call() -> None:
    ts = TextStream([], "<tool_call>")
    assert ts.feed(b"ok <tool_") == "ok "
    ts.feed(b'call>{"name": "f"}')
    assert ts.in_call and ts.text == "ok " and ts.call_text == '<tool_call>{"name": "f"}'
