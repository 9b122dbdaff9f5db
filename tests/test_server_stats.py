"""What the embedded server says about its load (``GET /v1/stats``), and where tmlab shows it:
``Client.server_stats()``, the Explorer's load line, the request log's counts."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from _fake_server import completion

import tmlab
from tmlab.display import stats_line
from tmlab.jupyter.load import LoadLine

pytestmark = pytest.mark.slow


def test_the_embedded_server_reports_its_load(local_server: Any, history_db: str) -> None:
    with tmlab.Client(base_url=local_server.base_url) as client:
        before = client.server_stats()
        assert before is not None
        assert before["parallel"] == 1 and before["batch_invariant"] is True
        assert before["slots"] == [{"slot": 0, "state": "idle"}]
        assert before["running"] == 0 and before["queued"] == 0
        res = client.chat("Count to ten.", max_tokens=12, ignore_eos=True)
        after = client.server_stats()
    assert after is not None
    assert after["requests"] == before["requests"] + 1
    assert after["by_status"]["200"] >= 1
    assert after["tokens"] - before["tokens"] == res.usage.completion_tokens == 12
    # chat answers say how they were decoded
    r = httpx.post(
        local_server.url + "/v1/chat/completions",
        json={
            "model": "SmolLM2-135M-Instruct",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 2,
        },
        timeout=120,
    )
    assert r.headers["x-tmlab-parallel"] == "1"
    assert r.headers["x-tmlab-batch-invariant"] == "true"


def test_the_explorer_shows_the_load_line(local_server: Any) -> None:
    client = tmlab.Client(base_url=local_server.base_url)
    line = LoadLine(client, interval=0.1)
    try:
        deadline = time.monotonic() + 30
        while line.widget.layout.display == "none" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert line.widget.layout.display is None
        assert "1 slot (one at a time, exact)" in line.widget.value
        assert "running" in line.widget.value and "tokens/s" in line.widget.value
    finally:
        line.close()
        line._thread.join(5)
        client.close()


def test_a_server_without_stats_shows_nothing() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/stats"):
            return httpx.Response(404, json={"error": {"message": "no such route"}})
        return httpx.Response(200, json=completion("ok"))

    client = tmlab.Client(
        base_url="http://tm.test/v1", model="m", transport=httpx.MockTransport(answer)
    )
    assert client.server_stats() is None
    line = LoadLine(client, interval=0.05)
    line._thread.join(5)
    assert not line._thread.is_alive()  # asked once, then no more
    assert line.widget.layout.display == "none"
    line.close()


def test_tokens_per_second_over_the_recent_window(monkeypatch: pytest.MonkeyPatch) -> None:
    from tmlab.server import stats as mod

    clock = [100.0]
    monkeypatch.setattr(mod.time, "monotonic", lambda: clock[0])
    generated = [0]
    stats = mod.Stats(lambda: generated[0])
    clock[0] += 1.0
    generated[0] = 50
    stats.finished(200)  # 50 tokens in the first second
    clock[0] += 1.0
    generated[0] = 150
    assert stats.tokens_per_s() == pytest.approx(75.0)  # 150 tokens over 2 s
    clock[0] += mod.WINDOW_S + 5  # a quiet spell: the old samples leave the window
    assert stats.tokens_per_s() == 0.0
    assert stats.snapshot()["requests"] == 1 and stats.snapshot()["by_status"] == {"200": 1}


def test_stats_line_says_what_the_numbers_are() -> None:
    stats = {"running": 2, "queued": 3, "tokens_per_s": 41.4, "parallel": 4, "requests": 9}
    assert stats_line(stats) == (
        "2 running · 3 queued · 41 tokens/s · 4 slots (answers may depend on load) · "
        "9 requests served"
    )
    assert stats_line({**stats, "requests": 1}).endswith(" · 1 request served")
    invariant = {**stats, "batch_invariant": True}
    assert "4 slots (decoded together, each answer as if alone)" in stats_line(invariant)
    shared = stats_line({**invariant, "prompt_tokens_shared": 1234})
    assert shared.endswith(
        "9 requests served · 1,234 prompt tokens evaluated once for several requests"
    )
    assert "prompt tokens" not in stats_line({**invariant, "prompt_tokens_shared": 0})
