"""ChatResult accessors, reasoning extraction and display."""

from __future__ import annotations

import pytest

from tmlab import ChatResult, Timing
from tmlab.display import chat_result_html, chat_result_markdown, style_logprobs, usage_line
from tmlab.result import split_think


@pytest.mark.parametrize(
    ("content", "answer", "reasoning"),
    [
        ("plain answer", "plain answer", None),
        ("<think>weigh it</think>\n\nYes.", "Yes.", "weigh it"),
        ("<think>cut off while thin", "", "cut off while thin"),
        ("no opening tag</think>Answer", "Answer", "no opening tag"),
        ("Pre <think>r</think>post", "Pre post", "r"),
        ("<think></think>Just this", "Just this", ""),
    ],
)
def test_split_think(content: str, answer: str, reasoning: str | None) -> None:
    assert split_think(content) == (answer, reasoning)


def _raw(message: dict, **extra: object) -> dict:
    return {
        "id": "r1",
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop", **extra}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_reasoning_fields(field: str) -> None:
    res = ChatResult(_raw({"role": "assistant", "content": "42", field: "6 times 7"}))
    assert (res.text, res.reasoning) == ("42", "6 times 7")


def test_inline_think_tags_become_reasoning() -> None:
    res = ChatResult(_raw({"role": "assistant", "content": "<think>hmm</think>\n42"}))
    assert (res.text, res.reasoning) == ("42", "hmm")
    # raw keeps what the server sent
    assert res.raw["choices"][0]["message"]["content"] == "<think>hmm</think>\n42"


def test_accessors_and_choices_sorted_by_index() -> None:
    raw = {
        "model": "m",
        "choices": [
            {"index": 1, "message": {"content": "second"}, "finish_reason": "length"},
            {
                "index": 0,
                "message": {
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"x": 1}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
                "token_ids": [1, 2],
            },
        ],
        "prompt_token_ids": [9, 8],
        "perf_metrics": {"ttft": 0.1},
    }
    res = ChatResult(raw, request={"model": "m", "messages": []})
    assert [c.index for c in res.choices] == [0, 1]
    assert res.text == ""
    assert res.finish_reason == "tool_calls"
    assert res.tool_calls[0]["function"]["name"] == "f"
    assert res.choices[0].token_ids == [1, 2]
    assert res.prompt_token_ids == [9, 8]
    assert res.perf_metrics == {"ttft": 0.1}
    assert res.usage.prompt_tokens is None


def test_usage_details() -> None:
    raw = _raw({"content": "x"})
    raw["usage"]["prompt_tokens_details"] = {"cached_tokens": 3}
    raw["usage"]["completion_tokens_details"] = {"reasoning_tokens": 4}
    u = ChatResult(raw).usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (5, 7, 12)
    assert (u.cached_tokens, u.reasoning_tokens) == (3, 4)


def test_html_escapes_and_shows_reasoning_and_usage() -> None:
    res = ChatResult(
        _raw({"content": "<b>bold</b> & co", "reasoning": "because <x>"}),
        timing=Timing(latency_s=1.5, ttft_s=0.25, tokens_per_s=5.6),
    )
    html = chat_result_html(res)
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in html
    assert "<details" in html and "because &lt;x&gt;" in html
    assert "5 prompt + 7 completion tokens" in html
    assert "TTFT 0.25 s" in html and "5.6 tok/s" in html
    assert res._repr_html_() == html
    md = chat_result_markdown(res)
    assert "> because <x>" in md and "<b>bold</b> & co" in md


def test_incomplete_result_says_so() -> None:
    res = ChatResult(_raw({"content": "half"}), complete=False)
    assert "INCOMPLETE" in usage_line(res)


def test_repr_is_short() -> None:
    res = ChatResult(_raw({"content": "y" * 500}))
    assert len(repr(res)) < 200
    assert str(res) == "y" * 500


def test_style_logprobs_renders_with_notes() -> None:
    content = [
        {"token": " a", "logprob": -0.1, "top_logprobs": [{"token": " a", "logprob": -0.1}]},
        {"token": "\n", "logprob": -0.2, "top_logprobs": []},
    ]
    res = ChatResult(_raw({"content": " a\n"}, logprobs={"content": content}))
    html = style_logprobs(res.logprobs_frame()).to_html()
    assert "0.9048" in html  # exp(-0.1)
    assert '>" a"<' in html  # the leading space stays visible
    assert '>"\\n"<' in html  # so does a newline
    assert "lower bound" in html
    long = style_logprobs(res.logprobs_frame(long=True)).to_html()
    assert "0.9048" in long


def test_style_logprobs_shows_alternatives_in_one_compact_column() -> None:
    """``%%tmchat --logprobs 5`` and the Explorer's Logprobs tab: one column of
    ``"A" 0.77 · "In" 0.16 · …`` that wraps, not two Python-list columns."""
    alts = [("In", -1.8326), ("A", -0.2614), ("<b>", -4.6052), ("The", -3.2189)]
    content = [
        {
            "token": "A",
            "logprob": -0.2614,
            "top_logprobs": [{"token": t, "logprob": lp} for t, lp in alts],
        }
    ]
    res = ChatResult(_raw({"content": "A"}, logprobs={"content": content}))
    frame = res.logprobs_frame()
    html = style_logprobs(frame).to_html()
    # the plain frame keeps its columns; the display shows one column instead of two
    assert {"top_tokens", "top_logprobs"} <= set(frame.columns)
    assert ">top_tokens<" not in html and ">top_logprobs<" not in html
    assert ">alternatives (p)<" in html
    # most likely first, probabilities (not logprobs) to 2 significant digits, the generated
    # token in bold, a token that looks like a tag escaped, items separated by a middle dot
    item = '<span style="white-space: nowrap">{}</span>'
    expected = " \u00b7 ".join(
        [
            item.format('<b>"A" 0.77</b>'),
            item.format('"In" 0.16'),
            item.format('"The" 0.04'),
            item.format('"&lt;b&gt;" 0.01'),
        ]
    )
    assert expected in html
    assert "white-space: normal" in html  # the cell wraps instead of running off the edge
    assert "2 significant digits" in html  # the caption says what the numbers are


def test_to_dict_returns_copies_that_leave_the_result_unchanged() -> None:
    raw = _raw({"role": "assistant", "content": "42"})
    res = ChatResult(
        raw,
        request={"model": "m", "messages": [{"role": "user", "content": "q"}]},
        timing=Timing(latency_s=1.5, ttft_s=0.5, tokens_per_s=4.0),
    )
    d = res.to_dict()
    assert d["timing"] == {"latency_s": 1.5, "ttft_s": 0.5, "tokens_per_s": 4.0}
    d["timing"]["latency_s"] = 99.0
    d["request"]["messages"][0]["content"] = "changed"
    d["response"]["choices"][0]["message"]["content"] = "changed"
    assert res.timing.latency_s == 1.5  # the (frozen) Timing itself was not touched
    assert res.request["messages"][0]["content"] == "q"
    assert res.raw["choices"][0]["message"]["content"] == "42"
    assert res.to_dict()["timing"]["latency_s"] == 1.5


def test_llamacpp_token_ids_are_read_from_id() -> None:
    # llama.cpp's server names the token id "id" (vLLM and the embedded server "token_id")
    item = {"id": 19556, "token": "Hello", "bytes": [72], "logprob": -0.5}
    alt = {"id": 26843, "token": "Hi", "bytes": [72, 105], "logprob": -2.4}
    raw = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "length",
                "message": {"role": "assistant", "content": "Hello"},
                "logprobs": {"content": [{**item, "top_logprobs": [item, alt]}]},
            }
        ]
    }
    (tok,) = ChatResult(raw).choices[0].logprobs or []
    assert tok.token_id == 19556 and [a.token_id for a in tok.top] == [19556, 26843]
    assert list(ChatResult(raw).logprobs_frame()["token_id"]) == [19556]
