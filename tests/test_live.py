"""The streaming display: throttled redraws (≤ ~10/s at any token rate), no text lost."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import RichOutput, capture_output

from tmlab.client import Client
from tmlab.client.stream import Delta
from tmlab.jupyter.live import LiveAnswer, Throttle, answer_markdown, reasoning_html


def final_screen(outputs: list[RichOutput]) -> list[dict[str, Any]]:
    """What a notebook shows after these display messages: updates replace by display id."""
    screen: list[dict[str, Any]] = []
    for out in outputs:
        display_id = (out.transient or {}).get("display_id")
        if out.update:
            for shown in screen:
                if shown["id"] == display_id:
                    shown["data"] = out.data
        else:
            screen.append({"id": display_id, "data": out.data})
    return [s["data"] for s in screen]


@pytest.fixture
def shell() -> InteractiveShell:
    return InteractiveShell.instance()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throttle_updates_at_most_once_per_interval_and_flush_sends_the_last() -> None:
    clock = FakeClock()
    seen: list[float] = []
    throttle = Throttle(lambda: seen.append(clock.now), interval=0.1, clock=clock)
    for _ in range(1000):  # 1000 pokes over 1 s
        throttle.poke()
        clock.now += 0.001
    assert throttle.pending
    throttle.flush()
    assert not throttle.pending
    assert 10 <= throttle.updates <= 11
    assert seen[0] == 0.0  # the first change shows at once
    assert all(b - a >= 0.1 - 1e-9 for a, b in itertools.pairwise(seen))
    throttle.flush()  # nothing pending: no update
    assert throttle.updates == len(seen)


def test_throttle_counts_the_interval_from_the_end_of_a_slow_update() -> None:
    clock = FakeClock()

    def slow() -> None:
        clock.now += 0.5  # a redraw that takes longer than the interval

    throttle = Throttle(slow, interval=0.1, clock=clock)
    throttle.poke()
    throttle.poke()  # right after the slow update ended: pending, not another update
    assert throttle.updates == 1 and throttle.pending


def test_reasoning_is_one_collapsible_html_line() -> None:
    block = reasoning_html("step 1\n\nstep <2>")
    assert block.startswith("<details") and "</details>" in block
    assert "\n" not in block  # a blank line would end the HTML block inside Markdown
    assert "step &lt;2&gt;" in block
    md = answer_markdown({0: "**yes**"}, {0: "thinking"}, streaming=True)
    assert "<details open" not in md  # answer text arrived: the reasoning folds away
    assert "<details open" in answer_markdown({}, {0: "thinking"}, streaming=True)


def _sse(n_chunks: int, delay: float) -> Iterator[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        choices = [{"index": 0, "delta": delta, "finish_reason": finish}]
        body = {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": choices}
        return b"data: " + json.dumps({**body, **extra}).encode() + b"\n\n"

    yield chunk({"role": "assistant", "reasoning_content": "think "})
    for i in range(n_chunks):
        if delay:
            time.sleep(delay)
        yield chunk({"content": f"t{i} "})
    usage = {"prompt_tokens": 3, "completion_tokens": n_chunks, "total_tokens": n_chunks + 3}
    yield chunk({}, "stop", usage=usage)
    yield b"data: [DONE]\n\n"


class _Stream(httpx.SyncByteStream):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks


def test_a_high_token_rate_is_redrawn_at_most_10_times_a_second_and_no_text_is_lost(
    shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMLAB_HISTORY", "off")
    n = 3000

    def handler(request: httpx.Request) -> httpx.Response:
        stream = _Stream(_sse(n, delay=0.0005))  # ≥ 2000 chunks a second
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)

    client = Client(base_url="http://test/v1", model="m", transport=httpx.MockTransport(handler))
    live = LiveAnswer(interval=0.1)
    with capture_output() as cap:
        live.start()
        start = time.monotonic()
        res = client.chat("go", stream=True, on_delta=live.on_delta)
        elapsed = time.monotonic() - start
        live.flush()
    expected = "".join(f"t{i} " for i in range(n))
    assert res.text == expected
    assert live.text == expected  # no delta lost on the way to the display
    assert live.deltas >= n
    rate = n / elapsed
    redraws = sum(1 for o in cap.outputs if o.update)
    assert redraws == live.updates
    print(
        f"\n{n} chunks in {elapsed:.2f} s ({rate:.0f}/s): {redraws} redraws "
        f"= {redraws / elapsed:.1f} redraws/s"
    )
    assert rate > 300  # far above any real model (the machine is shared: keep margin)
    assert redraws <= elapsed / 0.1 + 2  # ≤ ~10 a second, whatever the token rate
    assert redraws >= elapsed / 0.1 / 3  # and it does redraw while streaming
    # the last redraw shows everything that arrived
    screen = final_screen(cap.outputs)
    assert len(screen) == 1
    assert expected.strip() in screen[0]["text/markdown"]
    assert "reasoning" in screen[0]["text/markdown"]


def test_several_choices_stream_side_by_side(shell: InteractiveShell) -> None:
    live = LiveAnswer(interval=0.0)
    with capture_output() as cap:
        live.start()
        for i in range(3):
            live.on_delta(Delta(choice=0, text=f"a{i}"))
            live.on_delta(Delta(choice=1, text=f"b{i}"))
    markdown = final_screen(cap.outputs)[0]["text/markdown"]
    assert "**[0]** a0a1a2" in markdown and "**[1]** b0b1b2" in markdown
