"""Stop takes effect at once, wherever the request is: queued on the server, in prompt
evaluation, streaming, or waiting for a non-streamed answer.

Measured from the click on Stop to the Explorer's idle state (the Stop button disabled again),
against servers that hold the request: a scripted one on a real socket that records when the
client went away, and the embedded server busy with another request.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from _fake_server import LiveServer, _read_body, chunk

import tmlab
from tmlab.history import history
from tmlab.jupyter.explorer import Explorer

STOP_WITHIN_S = 0.5


@pytest.fixture(autouse=True)
def _history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMLAB_HISTORY", str(tmp_path / "history.sqlite3"))


class Holding:
    """An ASGI server that answers ``/models``, 404 to other paths but the chat route, and
    holds every chat request until the client leaves: before its headers (``phase="queued"``)
    or after a first piece of the stream (``"streaming"``). Records when the request arrived
    and when the client disconnected."""

    def __init__(self, phase: str) -> None:
        self.phase = phase
        self.held = threading.Event()
        self.gone = threading.Event()
        self.gone_at = 0.0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await _read_body(receive)
        if scope["path"].endswith("/models"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": b'{"data": [{"id": "m"}]}'})
            return
        if not scope["path"].endswith("/chat/completions"):  # e.g. the load line's /stats
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        if self.phase == "streaming":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            import json

            piece = f"data: {json.dumps(chunk('Once upon a time', role='assistant'))}\n\n"
            await send({"type": "http.response.body", "body": piece.encode(), "more_body": True})
        self.held.set()
        while True:  # the next message is the disconnect
            message = await receive()
            if message["type"] == "http.disconnect":
                self.gone_at = time.monotonic()
                self.gone.set()
                return
            await asyncio.sleep(0)


def _idle_after_stop(ex: Explorer) -> float:
    """Click Stop; the seconds until the panel is idle (Stop disabled, the answer shown)."""
    t0 = time.monotonic()
    ex.stop_button.click()
    while not ex.stop_button.disabled:
        if time.monotonic() - t0 > 30:
            raise AssertionError("the Explorer did not stop within 30 s")
        time.sleep(0.002)
    return time.monotonic() - t0


@pytest.mark.parametrize("phase", ["queued", "streaming"])
def test_stop_closes_the_connection_at_once(phase: str, make) -> None:
    server = Holding(phase)
    with LiveServer(server) as live:
        client = tmlab.Client(base_url=live.base_url, model="m", max_retries=0)
        ex = make(client, prompt="Tell a story.")
        ex.send_button.click()
        assert server.held.wait(10)
        if phase == "streaming":
            deadline = time.monotonic() + 10
            while "Once upon" not in ex.answer.value and time.monotonic() < deadline:
                time.sleep(0.01)
        t0 = time.monotonic()
        took = _idle_after_stop(ex)
        assert server.gone.wait(30), "the server never saw the client leave"
        print(
            f"Explorer stop ({phase}): idle after {took:.3f} s, server saw the disconnect "
            f"after {server.gone_at - t0:.3f} s"
        )
        assert took <= STOP_WITHIN_S
        assert server.gone_at - t0 <= STOP_WITHIN_S
    assert "stopped" in ex.status.value
    res = ex.result
    assert res is not None and not res.complete
    assert res.text == ("Once upon a time" if phase == "streaming" else "")
    [row] = history(source="explorer").to_dict("records")
    assert row["error"] == "interrupted" and not row["complete"]
    assert row["text"] == (res.text or None)  # nothing arrived: no answer text


@pytest.mark.slow
def test_stop_while_queued_on_the_embedded_server(local_server, make) -> None:
    """The model is busy with another request; the stopped one is dropped from the queue
    without a token generated for it."""
    body = {
        "model": "SmolLM2-135M-Instruct",
        "messages": [{"role": "user", "content": "Tell a story."}],
        "max_tokens": 150,
        "ignore_eos": True,
    }
    url = local_server.url + "/v1/chat/completions"
    blocker = threading.Thread(target=lambda: httpx.post(url, json=body, timeout=120))
    blocker.start()
    time.sleep(0.3)
    client = tmlab.Client(base_url=local_server.base_url)
    ex = make(client, prompt="Write a very long story.", max_tokens=2000, ignore_eos=True)
    ex.send_button.click()
    time.sleep(0.6)
    assert ex.result is None and not ex.stop_button.disabled  # waiting in the server's queue
    took = _idle_after_stop(ex)
    print(f"Explorer stop (queued on the embedded server): idle after {took:.3f} s")
    assert took <= STOP_WITHIN_S
    blocker.join(120)
    t0 = time.monotonic()
    r = httpx.post(url, json={**body, "max_tokens": 3}, timeout=120)
    assert r.status_code == 200
    # 2,000 tokens generated for the stopped request would take ~15 s here
    assert time.monotonic() - t0 < 5.0
    [row] = history(source="explorer").to_dict("records")
    assert row["error"] == "interrupted" and row["text"] is None


@pytest.mark.slow
def test_stop_during_prompt_evaluation_frees_the_model(local_server, make) -> None:
    """A long prompt is being evaluated when Stop is clicked: the panel is idle at once, and
    the server stops evaluating it at its next batch of prompt tokens, so the next request
    does not wait for the rest of the prompt."""
    long_prompt = "Summarise this. " + " ".join(f"word{i}" for i in range(600))
    url = local_server.url + "/v1/chat/completions"
    model = "SmolLM2-135M-Instruct"

    def ask(content: str) -> float:
        t0 = time.monotonic()
        r = httpx.post(
            url,
            json={
                "model": model,
                "messages": [{"role": "user", "content": content}],
                "max_tokens": 1,
            },
            timeout=300,
        )
        assert r.status_code == 200, r.text
        return time.monotonic() - t0

    full = ask(long_prompt)  # the whole prompt's evaluation, measured in this run
    client = tmlab.Client(base_url=local_server.base_url)
    ex = make(client, prompt=long_prompt, max_tokens=50)
    ex.send_button.click()
    time.sleep(min(0.5, full / 4))
    assert ex.result is None and not ex.stop_button.disabled
    took = _idle_after_stop(ex)
    waited = ask("Hi")
    print(
        f"Explorer stop (prompt evaluation): idle after {took:.3f} s; the next request "
        f"waited {waited:.2f} s, the whole prompt takes {full:.2f} s"
    )
    assert took <= STOP_WITHIN_S
    assert waited < 0.75 * full
