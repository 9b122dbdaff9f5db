"""The token heatmap: what a reader sees, hovers and can trust, read back from the HTML."""

from __future__ import annotations

import math
from html.parser import HTMLParser
from typing import Any

import pytest

from tmlab import ChatResult
from tmlab.display import PROB_BINS, tokens_html

LN = math.log


def _tok(
    token: str,
    p: float,
    alts: list[tuple[str, float]] | None = None,
    raw: bytes | None = None,
) -> dict[str, Any]:
    data = token.encode() if raw is None else raw
    top = [{"token": t, "logprob": LN(q), "bytes": list(t.encode())} for t, q in alts or []]
    return {"token": token, "logprob": LN(p), "bytes": list(data), "top_logprobs": top}


def _res(*tokens: dict[str, Any]) -> ChatResult:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": "x"},
        "finish_reason": "stop",
        "logprobs": {"content": list(tokens)},
    }
    return ChatResult({"model": "m", "choices": [choice]})


class _Reader(HTMLParser):
    """Visible text (``<br>`` as a newline), and each token span's title, style and text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text = ""
        self.spans: list[dict[str, Any]] = []
        self._depth = 0  # >0 while inside a token span
        self._in_style = False
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "style":
            self._in_style = True
        if tag == "br":
            self.text += "\n"
            if self._depth:
                self.spans[-1]["text"] += "\n"
        if tag == "span":
            if self._depth:
                self._depth += 1
            elif "tmlab-tok" in (a.get("class") or ""):
                self._depth = 1
                self.spans.append({"title": a.get("title"), "style": a.get("style"), "text": ""})

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False
        if tag == "span" and self._depth:
            self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._in_style:
            return
        self.text += data
        if self._depth:
            self.spans[-1]["text"] += data


def _read(html: str) -> _Reader:
    reader = _Reader()
    reader.feed(html)
    reader.close()
    return reader


def _tokens_text(html: str) -> str:
    return "".join(s["text"] for s in _read(html).spans)


def test_whitespace_and_newlines_are_visible_and_a_newline_breaks_the_line() -> None:
    res = _res(_tok("Hello", 0.9), _tok(" world", 0.5), _tok("\n", 0.7), _tok("\tx", 0.2))
    html = tokens_html(res)
    assert _tokens_text(html) == "Hello\u2423world\u21b5\n\u21e5x"
    assert html.count("<br>") >= 1


def test_token_text_and_tooltips_are_escaped() -> None:
    res = _res(_tok('<b>&"', 0.6, [('<b>&"', 0.6), ("<script>alert(1)</script>", 0.3)]))
    html = tokens_html(res)
    assert "<b>" not in html and "<script" not in html
    spans = _read(html).spans
    assert spans[0]["text"] == '<b>&"'  # what the reader sees, unescaped by the browser
    assert "<script>alert(1)</script>" in spans[0]["title"]


def test_tooltips_carry_the_alternatives_with_their_probabilities() -> None:
    res = _res(_tok("B", 0.3, [("A", 0.5), ("B", 0.3), (" C", 0.1)]))
    title = _read(tokens_html(res)).spans[0]["title"]
    lines = title.splitlines()
    assert "p = 0.3000" in lines[0]
    assert any("\u201cA\u201d  0.5000" in line for line in lines)
    assert any("\u201cB\u201d  0.3000" in line and "generated" in line for line in lines)
    assert any("\u201c\u2423C\u201d  0.1000" in line for line in lines)
    assert "other (not returned): 0.1000" in title


def test_colour_follows_the_probability_bins_and_legend_names_them() -> None:
    res = _res(_tok("a", 0.1), _tok("b", 0.3), _tok("c", 0.95), _tok("d", 1.0))
    html = tokens_html(res)
    styles = [s["style"] for s in _read(html).spans]
    assert PROB_BINS[0][2] in styles[0]
    assert PROB_BINS[1][2] in styles[1]
    assert PROB_BINS[-1][2] in styles[2] and PROB_BINS[-1][2] in styles[3]
    legend = html[html.index("tmlab-legend") :]
    for _, _, colour in PROB_BINS:
        assert colour in legend
    assert "probability" in legend and "as returned" in legend


def test_unknown_logprob_is_grey_not_a_number() -> None:
    token = _tok("a", 0.5)
    token["logprob"] = None
    span = _read(tokens_html(_res(token))).spans[0]
    assert "#dddddd" in span["style"]
    assert "unknown" in span["title"]


def test_a_character_split_across_tokens_shows_whole_once() -> None:
    e = "é".encode()  # c3 a9
    res = _res(
        _tok("caf", 0.9),
        _tok("bytes:\\xc3", 0.9, raw=e[:1]),
        _tok("bytes:\\xa9", 0.5, raw=e[1:]),
        _tok("!", 0.8),
    )
    html = tokens_html(res)
    spans = _read(html).spans
    assert [s["text"] for s in spans] == ["caf", "é", "!"]
    assert "\ufffd" not in html and "\\xc3" not in _tokens_text(html)
    title = spans[1]["title"]
    assert "2 tokens make up" in title and "position 1" in title and "position 2" in title
    assert "joint p = 0.4500" in title
    assert PROB_BINS[2][2] in spans[1]["style"]  # coloured by the joint 0.45


def test_an_emoji_split_over_three_tokens() -> None:
    b = "😀".encode()  # f0 9f 98 80
    res = _res(_tok("x", 0.9, raw=b[:1]), _tok("y", 0.9, raw=b[1:3]), _tok("z", 0.9, raw=b[3:]))
    assert _tokens_text(tokens_html(res)) == "😀"


def test_bytes_that_never_complete_show_as_escapes() -> None:
    res = _res(_tok("x", 0.5, raw=b"\xc3"), _tok("a", 0.5), _tok("y", 0.5, raw=b"\xe2\x82"))
    spans = _read(tokens_html(res)).spans
    assert [s["text"] for s in spans] == ["\\xc3", "a", "\\xe2\\x82"]
    assert "italic" in spans[0]["style"] and "italic" not in spans[1]["style"]


def test_self_contained_and_displays_in_jupyter() -> None:
    res = _res(_tok("Hi", 0.9, [("Hi", 0.9)]))
    html = res.tokens_html()
    assert html == tokens_html(res)
    assert html._repr_html_() == str(html)  # type: ignore[attr-defined]
    assert "<script" not in html and "src=" not in html and "<link" not in html
    # Everything a static view needs is inline: a style= on each token, the tooltip in title=.
    span = _read(html).spans[0]
    assert span["style"] and "background" in span["style"] and span["title"]


def test_other_choice_and_a_response_without_logprobs() -> None:
    res = _res(_tok("Hi", 0.9))
    with_two = ChatResult(
        {
            "choices": [
                res.raw["choices"][0],
                {**res.raw["choices"][0], "index": 1, "logprobs": {"content": [_tok("Yo", 0.2)]}},
            ]
        }
    )
    assert _tokens_text(tokens_html(with_two, choice=1)) == "Yo"
    bare = ChatResult({"choices": [{"index": 0, "message": {"content": "plain <b>"}}]})
    html = tokens_html(bare)
    assert "plain &lt;b&gt;" in html and "logprobs=True" in html


@pytest.mark.parametrize("n", [1, 300])
def test_every_token_gets_one_span(n: int) -> None:
    res = _res(*[_tok(f"t{i}", 0.5) for i in range(n)])
    assert len(_read(tokens_html(res)).spans) == n


@pytest.mark.slow
def test_the_heatmap_of_a_real_answer_shows_exactly_its_text(local_server: Any) -> None:
    from _e2e import MODEL

    import tmlab

    with tmlab.Client(base_url=local_server.base_url, model=MODEL, timeout=300.0) as client:
        res = client.chat(
            "Write the French word for coffee, with its accent, then a smiley emoji.",
            temperature=0.8,
            seed=5,
            max_tokens=40,
            logprobs=True,
            top_logprobs=5,
        )
    html = res.tokens_html()
    reader = _read(html)
    shown = "".join(s["text"] for s in reader.spans)
    for mark, ch in (("\u2423", " "), ("\u21b5\n", "\n"), ("\u21e5", "\t")):
        shown = shown.replace(mark, ch)
    # every token the server scored, the end-of-turn token included when it was generated
    assert shown.removesuffix("<|im_end|>") == res.text
    assert 0 < len(reader.spans) <= len(res.choices[0].logprobs or [])
    assert all("alternatives (probabilities as returned)" in s["title"] for s in reader.spans)
