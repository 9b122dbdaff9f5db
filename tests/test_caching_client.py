"""KV caching made visible on the client side (issue 24): cached tokens and the hit rate in
every usage view, the money they saved, a per-request cache report, and where two prompts
stop sharing a prefix (``prefix_diff``), in tokens where the server tokenizes chat messages and
in characters, labelled, elsewhere."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

import tmlab
from tmlab.analysis.caching import CHARACTER_NOTE, REPORT_COLUMNS, PrefixDiff, render_messages
from tmlab.client.history import COLUMNS, MIGRATIONS, SCHEMA_VERSION, get_row, record
from tmlab.display import usage_line
from tmlab.jupyter.live import cost_line
from tmlab.result import ChatResult, Timing

PRICES = {"input": 0.5, "output": 2.0}  # USD per million tokens; cached input free
SYSTEM = "You are a terse assistant for a bicycle shop. " * 12


def _result(prompt: int, cached: int | None, completion: int = 20, **timing: float) -> ChatResult:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    raw = {
        "model": "m",
        "choices": [{"index": 0, "message": {"content": "ok"}, "finish_reason": "stop"}],
        "usage": usage,
    }
    return ChatResult(raw, timing=Timing(**timing))


# -- the numbers, by hand ---------------------------------------------------------------------


def test_usage_frame_hit_rate_cost_and_money_saved_by_hand() -> None:
    df = tmlab.usage_frame([_result(1510, 1024), _result(1510, 0), _result(1510, None)], PRICES)
    assert df["cache_hit_rate"].iloc[0] == 1024 / 1510
    assert df["cache_hit_rate"].iloc[1] == 0.0
    assert pd.isna(df["cache_hit_rate"].iloc[2])  # not reported is not 0
    # 486 uncached input tokens at $0.5/M, 1,024 cached at $0, 20 output at $2/M
    assert df["cost_usd"].iloc[0] == pytest.approx((486 * 0.5 + 20 * 2.0) / 1e6, rel=1e-12)
    assert df["saved_usd"].iloc[0] == pytest.approx(1024 * 0.5 / 1e6, rel=1e-12)
    assert df["saved_usd"].iloc[1] == 0.0 and df["saved_usd"].iloc[2] == 0.0
    # without a cache the first request would have cost exactly cost + saved
    assert df["cost_usd"].iloc[0] + df["saved_usd"].iloc[0] == pytest.approx(
        df["cost_usd"].iloc[1], rel=1e-12
    )
    assert "saved_usd" not in tmlab.usage_frame(_result(10, 5)).columns  # no prices, no money


def test_a_price_for_cached_input_is_charged_and_saves_only_the_difference() -> None:
    df = tmlab.usage_frame(_result(1000, 600, 100), {**PRICES, "cached_input": 0.1})
    assert df["cost_usd"].iloc[0] == pytest.approx((400 * 0.5 + 600 * 0.1 + 200) / 1e6)
    assert df["saved_usd"].iloc[0] == pytest.approx(600 * (0.5 - 0.1) / 1e6)


def test_the_usage_line_shows_cached_tokens_and_the_hit_rate() -> None:
    line = usage_line(_result(1510, 1024))
    assert "1510 prompt + 20 completion tokens · cached 1,024 of 1,510 (68%)" in line
    assert "cached 0 of 1,510 (0%)" in usage_line(_result(1510, 0))  # a miss is said
    assert "cached" not in usage_line(_result(1510, None))  # the server did not say
    assert "(<1%)" in usage_line(_result(1510, 1)) and "(>99%)" in usage_line(_result(1510, 1509))


def test_the_cost_line_puts_the_money_saved_next_to_the_cost() -> None:
    line = cost_line(_result(1510, 1024), PRICES)
    assert line is not None
    assert line.startswith("cost $0.000283, saved $0.000512 by 1,024 cached tokens")
    plain = cost_line(_result(1510, 0), PRICES)
    assert plain is not None and "saved" not in plain


def test_summarize_gives_each_cells_hit_rate_and_savings() -> None:
    frame = pd.DataFrame(
        {
            "temperature": [0.0, 0.0, 1.0],
            "model": ["m"] * 3,
            "text": ["a", "a", "b"],
            "error": [None, None, None],
            "latency_s": [1.0, 1.0, 1.0],
            "prompt_tokens": pd.array([100, 100, 100], dtype="Int64"),
            "cached_tokens": pd.array([0, 80, None], dtype="Int64"),
            "completion_tokens": pd.array([10, 10, 10], dtype="Int64"),
        }
    )
    cold, hot = tmlab.summarize(frame, prices=PRICES).to_dict("records")
    assert (cold["temperature"], hot["temperature"]) == (0.0, 1.0)
    assert cold["cache_hit_rate"] == 80 / 200
    assert pd.isna(hot["cache_hit_rate"])  # its one request did not report cached tokens
    assert cold["saved_usd"] == pytest.approx(80 * 0.5 / 1e6)
    assert cold["cost_usd"] == pytest.approx(((200 - 80) * 0.5 + 20 * 2.0) / 1e6)


def test_cache_report_rows_and_totals_by_hand() -> None:
    results = [_result(1500, 0, ttft_s=2.0), _result(1500, 1400, ttft_s=0.2), _result(40, None)]
    report = tmlab.cache_report(results, prices=PRICES)
    assert list(report.columns) == REPORT_COLUMNS
    assert report["cached_tokens"].tolist()[:2] == [0, 1400]
    assert report["cache_hit_rate"].iloc[1] == 1400 / 1500
    totals = report.attrs["totals"]
    assert totals["requests"] == 3 and totals["prompt_tokens"] == 3040
    assert totals["cached_tokens"] == 1400
    assert totals["cache_hit_rate"] == 1400 / 3000  # over the requests that reported it
    assert totals["saved_usd"] == pytest.approx(1400 * 0.5 / 1e6)
    assert totals["cost_usd"] == pytest.approx(((3040 - 1400) * 0.5 + 60 * 2.0) / 1e6)
    bare = tmlab.cache_report(results)  # no prices: no made-up money
    assert bare["cost_usd"].isna().all() and bare.attrs["totals"]["cost_usd"] is None
    assert "No prices" in bare.attrs["notes"]


def test_cache_report_reads_session_prices_and_sweep_frames() -> None:
    tmlab.session.update(prices={"input": 1.0, "output": 1.0})
    frame = pd.DataFrame(
        {
            "model": ["m", "m"],
            "prompt_tokens": pd.array([50, None], dtype="Int64"),
            "cached_tokens": pd.array([25, None], dtype="Int64"),
            "completion_tokens": pd.array([5, None], dtype="Int64"),
            "ttft_s": [0.1, None],
            "error": [None, "ServerError: 500"],
            "history_id": pd.array([7, 8], dtype="Int64"),
        }
    )
    report = tmlab.cache_report(frame)
    assert len(report) == 1 and report.attrs["left_out"] == 1  # the failed request
    assert report["history_id"].iloc[0] == 7
    assert report["saved_usd"].iloc[0] == pytest.approx(25 / 1e6)


def test_cache_report_refuses_what_it_cannot_read() -> None:
    with pytest.raises(tmlab.ParameterError, match="x") as err:
        tmlab.cache_report("a prompt")
    assert "history id" in str(err.value)
    with pytest.raises(tmlab.ParameterError, match="not in the history"):
        tmlab.cache_report(10**9)


def test_plot_cache_colours_points_by_cached_share() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [_result(1500, 0, ttft_s=2.0), _result(1500, 1400, ttft_s=0.2), _result(40, None)]
    ax = tmlab.plot_cache(tmlab.cache_report(results))
    try:
        shares = ax.collections[0].get_array()
        assert shares is not None and list(shares) == [0.0, 1400 / 1500]
        assert len(ax.collections) == 2  # the unreported one as a grey cross
        assert "prompt tokens" in ax.get_xlabel()
    finally:
        plt.close("all")


# -- the history -------------------------------------------------------------------------------


def test_an_old_history_gains_cached_tokens_and_keeps_its_rows(history_db: str) -> None:
    conn = sqlite3.connect(history_db)
    for script in MIGRATIONS[:3]:  # a database written by tmlab at schema version 3
        conn.executescript(script)
    conn.execute(
        "INSERT INTO requests (time, source, model, messages, params, text, complete, "
        "prompt_tokens, completion_tokens) VALUES ('2026-01-01T00:00:00.000+00:00', 'client', "
        "'m', '[]', '{}', 'old answer', 1, 30, 4)"
    )
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    new_id = record(body, base_url=None, result=_result(1510, 1024, ttft_s=0.3))
    assert new_id == 2
    conn = sqlite3.connect(history_db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    finally:
        conn.close()
    old = get_row(1)
    assert old is not None and old["text"] == "old answer" and old["cached_tokens"] is None
    df = tmlab.history()
    assert tuple(df.columns) == COLUMNS and "cached_tokens" in df.columns
    assert df["cached_tokens"].tolist()[1] == 1024
    report = tmlab.cache_report([1, 2], prices=PRICES)
    assert pd.isna(report["cache_hit_rate"].iloc[0])  # recorded before tmlab kept the count
    assert report["cache_hit_rate"].iloc[1] == 1024 / 1510
    assert report["ttft_s"].iloc[1] == 0.3


# -- prefix_diff, characters -------------------------------------------------------------------


def _conversation(first: str, last: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": first + SYSTEM},
        {"role": "user", "content": "Which tyre fits a 700c rim?" + last},
    ]


# A server that is not on this machine is never asked to tokenize: characters, at once.
_REMOTE = "http://192.0.2.1/v1"


def test_prefix_diff_in_characters_at_the_start_and_at_the_end() -> None:
    client = tmlab.Client(base_url=_REMOTE, api_key="sk-test", model="m")
    start = tmlab.prefix_diff(_conversation("A", ""), _conversation("B", ""), client=client)
    assert start.unit == "character" and start.note == CHARACTER_NOTE
    assert start.position == start.shared == len("system: ")
    assert (start.a[1], start.b[1]) == ("A", "B")
    end = tmlab.prefix_diff(_conversation("", "?"), _conversation("", "!"), client=client)
    text = render_messages(_conversation("", "?"))
    assert end.position == len(text) - 2 and end.lengths == (len(text), len(text))
    assert "".join(end.a) == text
    same = tmlab.prefix_diff(_conversation("", ""), _conversation("", ""), client=client)
    assert same.position is None and same.shared == len(text) - 1  # without the "?"
    longer = tmlab.prefix_diff("Hi", "Hi there", client=client)
    assert longer.position == len("user: Hi") and longer.a[1] == "\n"


def test_prefix_diff_html_aligns_the_prompts_and_escapes_them() -> None:
    client = tmlab.Client(base_url=_REMOTE, api_key="sk-test", model="m")
    diff = tmlab.prefix_diff("<b>x</b> & <script>1</script>", "<b>y</b>", client=client)
    page = diff._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;" in page
    assert page.count("<tr>") == 2 and "font-weight: bold" in page
    assert CHARACTER_NOTE in page
    assert "breaks the cache" in repr(diff)


def test_prefix_diff_refuses_what_is_not_a_prompt() -> None:
    with pytest.raises(tmlab.ParameterError, match="b"):
        tmlab.prefix_diff("hi", 3.5)


# -- against the real embedded server ----------------------------------------------------------


@pytest.fixture(scope="module")
def client(local_server: Any) -> Iterator[tmlab.Client]:
    with tmlab.Client(base_url=local_server.base_url, timeout=300.0) as c:
        yield c


@pytest.mark.slow
def test_cache_report_over_real_answers(client: tmlab.Client, history_db: str) -> None:
    messages = _conversation("", "")
    runs = [client.chat(messages, max_tokens=2, temperature=0) for _ in range(2)]
    report = tmlab.cache_report(runs, prices=PRICES)
    for i, res in enumerate(runs):
        u = res.usage
        assert u.prompt_tokens and u.prompt_tokens > 100 and u.cached_tokens is not None
        assert report["prompt_tokens"].iloc[i] == u.prompt_tokens
        assert report["cached_tokens"].iloc[i] == u.cached_tokens
        assert report["cache_hit_rate"].iloc[i] == u.cached_tokens / u.prompt_tokens
        assert report["ttft_s"].iloc[i] == res.timing.ttft_s
        saved = u.cached_tokens * 0.5 / 1e6
        assert report["saved_usd"].iloc[i] == pytest.approx(saved, abs=1e-15)
    # the same rows from the history ids
    by_id = tmlab.cache_report([r.history_id for r in runs], prices=PRICES)
    cols = ["prompt_tokens", "cached_tokens", "cache_hit_rate", "cost_usd", "saved_usd"]
    pd.testing.assert_frame_equal(by_id[cols], report[cols])


@pytest.mark.slow
def test_prefix_diff_uses_the_templates_exact_tokens(client: tmlab.Client) -> None:
    a, b = _conversation("A", ""), _conversation("B", "")
    start = tmlab.prefix_diff(a, b, client=client)
    assert isinstance(start, PrefixDiff) and start.unit == "token"
    assert start.tokens is not None
    # exactly the prompt the server evaluates for a chat with these messages
    res = client.chat(a, max_tokens=1, temperature=0)
    assert len(start.tokens[0]) == start.lengths[0] == res.usage.prompt_tokens
    assert start.position is not None and 0 < start.position < 10  # after "<|im_start|>system\n"
    assert start.tokens[0][: start.position] == start.tokens[1][: start.position]
    assert start.tokens[0][start.position] != start.tokens[1][start.position]
    assert "A" in start.a[1] and "B" in start.b[1]
    end = tmlab.prefix_diff(_conversation("", "?"), _conversation("", "!"), client=client)
    assert end.unit == "token" and end.position is not None
    assert end.lengths[0] - 8 < end.position < end.lengths[0]  # just before the template's end
    assert end.shared > 100 and "?" in end.a[1] and "!" in end.b[1]
    # from the results themselves: the server they went to is asked
    again = tmlab.prefix_diff(res, client.chat(b, max_tokens=1, temperature=0))
    assert (again.unit, again.position) == ("token", start.position)


# -- against llama.cpp's own server (it caches prompts; it does not tokenize messages) -----------


@pytest.mark.slow
def test_llamacpp_reports_cached_tokens_and_prefix_diff_falls_back(llamacpp_server: str) -> None:
    with tmlab.Client(base_url=llamacpp_server, timeout=300.0) as foreign:
        messages = _conversation("", "")
        first = foreign.chat(messages, max_tokens=2, temperature=0)
        second = foreign.chat(messages, max_tokens=2, temperature=0)
        report = tmlab.cache_report([first, second], prices=PRICES)
        u = second.usage
        assert u.prompt_tokens and u.cached_tokens and u.cached_tokens > 100
        assert report["cache_hit_rate"].iloc[1] == u.cached_tokens / u.prompt_tokens > 0.5
        assert report["saved_usd"].iloc[1] == pytest.approx(u.cached_tokens * 0.5 / 1e6)
        assert f"cached {u.cached_tokens:,} of {u.prompt_tokens:,}" in usage_line(second)
        diff = tmlab.prefix_diff(_conversation("A", ""), _conversation("B", ""), client=foreign)
        assert diff.unit == "character" and diff.note == CHARACTER_NOTE
        assert diff.position == len("system: ")


def test_the_explorers_usage_tab_shows_the_hit_rate_and_the_money_saved(make: Any) -> None:
    tmlab.session.update(prices=PRICES)
    ex = make(tmlab.Client(base_url=_REMOTE, api_key="sk-test", model="m"), prompt="hi")
    ex.show_run(_result(1510, 1024))
    assert "cached 1,024 of 1,510 (68%)" in ex.usage.value
    assert "saved $0.000512 by 1,024 cached tokens" in ex.usage.value
    assert "cache_hit_rate" in ex.usage.value and "saved_usd" in ex.usage.value
