"""Tables that fit a cell: at most MAX_ROWS rows with a line saying how many more and where,
text and dict cells on one line with the whole value in an escaped tooltip, and the magic's
sweep showing its summary with the rows in --out or folded."""

from __future__ import annotations

import html
import re

import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from tmlab import ChatResult
from tmlab.display import MAX_ROWS, collapsed_html, one_line_html, style_frame, style_logprobs


def _long_result(tokens: int) -> ChatResult:
    alts = [{"token": f"w{k}", "logprob": -0.1 * (k + 1)} for k in range(20)]
    content = [
        {"token": f"w{i % 20}", "logprob": -0.1, "top_logprobs": alts} for i in range(tokens)
    ]
    choice = {"index": 0, "message": {"content": "x"}, "logprobs": {"content": content}}
    return ChatResult({"choices": [choice]})


def _body_rows(page: str) -> int:
    return len(re.findall(r"<tr>\s*<td", page))


def test_logprobs_table_shows_at_most_max_rows_and_says_how_to_get_the_rest() -> None:
    frame = _long_result(1500).logprobs_frame()
    page = style_logprobs(frame).to_html()
    assert _body_rows(page) == MAX_ROWS == 60
    assert "showing the first 60 of 1,500 tokens (1,440 more:" in page
    assert "res.logprobs_frame()" in page
    assert _body_rows(style_logprobs(frame, max_rows=None).to_html()) == 1500
    short = style_logprobs(_long_result(5).logprobs_frame()).to_html()
    assert _body_rows(short) == 5 and "showing the first" not in short
    # the long form counts alternatives
    assert (
        "of 100 alternatives" in style_logprobs(_long_result(5).logprobs_frame(long=True)).to_html()
    )


def test_text_and_dict_cells_are_one_line_with_the_whole_value_escaped_in_the_title() -> None:
    text = 'Line one <b>bold</b> & "quoted"\nline two, which goes on ' + "and on " * 10
    cell = one_line_html(text, 30)
    assert "\n" not in cell.split('title="')[0]
    title = re.search(r'title="([^"]*)"', cell)
    assert title is not None and html.unescape(title.group(1)) == text
    shown = cell.split(">", 1)[1]
    assert "<b>" not in shown and "&lt;b&gt;" in shown and shown.endswith("\u2026</span>")
    assert len(html.unescape(re.sub(r"<[^>]+>", "", shown))) == 30
    assert one_line_html("short") == "short"  # nothing cut: no tooltip
    assert one_line_html({"Red": 3, "Blue": 2}) == '{"Red": 3, "Blue": 2}'
    assert one_line_html(None) == "\u2014" and one_line_html(float("nan")) == "\u2014"

    df = pd.DataFrame({"temperature": [0.2] * 70, "text": [text] * 70, "answers": [{"a": 1}] * 70})
    page = style_frame(df).to_html()
    assert _body_rows(page) == 60 and "showing the first 60 of 70 rows (10 more:" in page
    assert "white-space: nowrap" in page
    folded = collapsed_html(df, "add --out NAME")
    assert folded.startswith('<details class="tmlab-rows"><summary>all 70 rows')


@pytest.mark.slow
@pytest.mark.parametrize("out", [True, False])
def test_magic_sweep_shows_the_summary_and_keeps_the_rows_aside(
    ip: InteractiveShell, out: bool
) -> None:
    flag = " --out rows" if out else ""
    with capture_output() as cap:
        result = ip.run_cell(
            f"%%tmchat --temperature 0,1 --repeat 2 --max-tokens 2{flag}\nHi.", store_history=True
        )
    assert result.success, cap.stdout + cap.stderr
    df = result.result
    assert isinstance(df, pd.DataFrame) and len(df) == 4
    pages = [o.data.get("text/html", "") for o in cap.outputs]
    assert any("distinct_answers" in p for p in pages)  # the summary
    folded = [p for p in pages if p.startswith("<details")]
    if out:
        assert ip.user_ns["rows"] is df and not folded
        assert any(
            "4 rows (one per answer) are in `rows`" in o.data.get("text/plain", "")
            for o in cap.outputs
        )
    else:
        assert len(folded) == 1 and "all 4 rows" in folded[0]
    # the frame is the cell's value, not shown a second time (only the prompt is printed)
    assert "temperature" not in cap.stdout and "Hi" not in cap.stdout


@pytest.mark.slow
def test_a_template_word_that_names_no_variable_gets_a_one_line_notice(
    ip: InteractiveShell,
) -> None:
    ip.user_ns.pop("audience", None)
    with capture_output() as cap:
        result = ip.run_cell(
            "%%tmchat --max-tokens 4 --out said\nExplain a token to a {audience}.",
            store_history=True,
        )
    assert result.success, cap.stdout + cap.stderr
    notices = [
        o.data.get("text/plain", "")
        for o in cap.outputs
        if "names no variable" in o.data.get("text/plain", "")
    ]
    assert notices == [
        "note: {audience} names no variable in this notebook, so the braces are sent as written; "
        "define it first (audience = ...) to fill it in"
    ]
    assert (
        ip.user_ns["said"].request["messages"][-1]["content"] == "Explain a token to a {audience}."
    )
    ip.user_ns["audience"] = "child"
    with capture_output() as cap:
        result = ip.run_cell(
            "%%tmchat --max-tokens 4 --out said\nExplain a token to a {audience}.",
            store_history=True,
        )
    assert result.success and not any("names no variable" in str(o.data) for o in cap.outputs)
    assert ip.user_ns["said"].request["messages"][-1]["content"] == "Explain a token to a child."
    with capture_output() as cap:  # JSON: untouched, no notice
        result = ip.run_cell(
            '%%tmchat --max-tokens 4\n{"task": "echo", "x": {"y": 1}}', store_history=True
        )
    assert result.success and not any("names no variable" in str(o.data) for o in cap.outputs)


@pytest.mark.slow
def test_tmconfig_shows_the_slots_of_the_server_it_talks_to(ip: InteractiveShell) -> None:
    # the session's own default for a shared local server is 3 slots; this server has 1
    with capture_output():
        result = ip.run_cell("%tmconfig", store_history=True)
    assert result.success
    assert result.result["value"]["parallel"] == "1 (from its /v1/models)"
    with capture_output():
        result = ip.run_cell("%tmconfig base_url=http://127.0.0.1:9/v1", store_history=True)
    assert result.result["value"]["parallel"] == "unknown (not said)"  # nothing answers there
