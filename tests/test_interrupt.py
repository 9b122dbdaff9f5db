"""The kernel's stop button, pressed for real: a Jupyter kernel started with ``jupyter_client``,
interrupted with ``KernelManager.interrupt_kernel()`` (SIGINT to the kernel's process group, as
JupyterLab's stop button sends it) during a streamed ``%%tmchat``, a non-streamed one, one
queued behind another request, a sweep and an Explorer request.

After each: the embedded server is the same process, still serving (three more requests
succeed), the partial answer is kept and the history row says ``interrupted``. A server that
died anyway (killed) is replaced at the next request, with a line saying so.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _kernel import Kernel, kernel

pytestmark = pytest.mark.slow

STOP_WITHIN_S = 0.5
"""The issue's bound on Stop-to-idle; measured here with the model busy on this machine."""

LONG = "--max-tokens 2000 --ignore-eos"


@pytest.fixture
def k(tmp_path: Path) -> Iterator[Kernel]:
    """A kernel with tmlab loaded and its embedded server started (its own history file)."""
    env = {"TMLAB_HISTORY": str(tmp_path / "history.sqlite3")}
    with kernel(env, cwd=str(tmp_path)) as kern:
        kern.run("import time, tmlab, tmlab.local\n%load_ext tmlab")
        first = kern.run("print(tmlab.Client().chat('Hi', max_tokens=2).complete)")
        assert "True" in first.text
        # the start-up line is live: a widget view beside the text, told the outcome
        assert any(
            "application/vnd.jupyter.widget-view+json" in m["content"].get("data", {})
            for m in first.outputs
            if m["header"]["msg_type"] == "display_data"
        ), first.outputs
        # started by this kernel, or found (the shared server of an earlier kernel)
        assert any(
            any(
                outcome in str(m["content"].get("data", {}).get("state", {}).get("value", ""))
                for outcome in ("ready in", "shared with other processes")
            )
            for m in first.outputs
            if m["header"]["msg_type"] == "comm_msg"
        ), "the start-up widget was never told the server is ready"
        yield kern


def _server_pid(k: Kernel) -> int:
    return int(k.value("tmlab.local._shared.pid"))


SERVED_WITHIN_S = 20.0
"""Three 4-token requests after an interrupt: about a second here. A server still generating
the interrupted request (2,000 tokens, ~20 s) would hold them past this bound."""


def _still_serving(k: Kernel, pid: int) -> None:
    """The same server process, and three more requests answered in full, promptly (the
    interrupted request does not hold the model)."""
    assert _server_pid(k) == pid, "the embedded server was restarted: the interrupt reached it"
    t0 = time.monotonic()
    for i in range(3):
        ok = k.value(
            f"(lambda r: (r.complete, bool(r.text)))(tmlab.Client().chat('Say {i}.', max_tokens=4))"
        )
        assert ok == (True, True), f"request {i} after the interrupt"
    took = time.monotonic() - t0
    print(f"three requests after the interrupt: {took:.2f} s")
    assert took < SERVED_WITHIN_S


def _last_row(k: Kernel, source: str) -> dict[str, object]:
    return dict(
        k.value(
            "(lambda r: {'error': r['error'], 'complete': bool(r['complete']), "
            f"'text': r['text']}})(tmlab.history(source={source!r}).iloc[-1])"
        )
    )


def _interrupt(k: Kernel, run: object) -> float:
    """Press stop; the seconds until the cell's reply (the kernel idle again)."""
    t0 = time.monotonic()
    k.interrupt()
    k.wait_until(lambda: run.reply is not None, 30, "the interrupted cell to end")  # type: ignore[attr-defined]
    return time.monotonic() - t0


def test_interrupting_a_streamed_tmchat(k: Kernel) -> None:
    pid = _server_pid(k)
    run = k.start(f"%%tmchat {LONG} --out res\nWrite a very long story about the sea.")
    k.wait_until(lambda: len(run.text) > 120, 60, "the answer to stream in")
    took = _interrupt(k, run)
    print(f"stop → idle, streamed %%tmchat: {took:.3f} s")
    assert run.status == "error"
    assert "Interrupted" in run.text and "partial answer" in run.text
    assert took <= STOP_WITHIN_S
    # one line, no traceback; the partial answer stays on screen, marked, and in --out
    (error,) = [m["content"] for m in run.outputs if m["header"]["msg_type"] == "error"]
    assert error["ename"] == "TmchatInterrupted" and len(error["traceback"]) == 1
    assert error["traceback"][0].startswith(
        "Interrupted: the request was stopped; kept in res and history id"
    )
    partial = k.value("(res.complete, res.text)")
    assert partial[0] is False and len(partial[1]) > 20
    shown = [
        m["content"]["data"].get("text/markdown", "")
        for m in run.outputs
        if m["header"]["msg_type"] in ("display_data", "update_display_data")
    ]
    assert any(partial[1] in md and "INTERRUPTED" in md for md in shown), shown
    row = _last_row(k, "magic")
    assert row["error"] == "interrupted" and row["text"] == partial[1]
    _still_serving(k, pid)


def test_interrupting_a_non_streamed_tmchat(k: Kernel) -> None:
    pid = _server_pid(k)
    run = k.start(f"%%tmchat --no-stream {LONG}\nWrite a very long story about the sea.")
    time.sleep(1.5)  # generating: nothing is shown until the whole answer is there
    assert run.reply is None
    took = _interrupt(k, run)
    print(f"stop → idle, non-streamed %%tmchat: {took:.3f} s")
    assert run.status == "error" and "Interrupted" in run.text
    assert took <= STOP_WITHIN_S
    row = _last_row(k, "magic")
    assert row["error"] == "interrupted" and not row["complete"]
    _still_serving(k, pid)


def test_interrupting_a_tmchat_queued_behind_another_request(k: Kernel) -> None:
    """The model is busy with someone else's request: the cell waits in the server's queue.
    Stop ends it at once, and the server drops it without generating a token for it."""
    pid = _server_pid(k)
    url = k.value("tmlab.local._shared.url")
    body = {
        "model": "SmolLM2-135M-Instruct",
        "messages": [{"role": "user", "content": "Tell a story."}],
        "max_tokens": 150,
        "ignore_eos": True,
    }
    # one request per slot: the model is busy with them all
    blockers = [
        threading.Thread(
            target=lambda: httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
        )
        for _ in range(int(k.value("tmlab.local._shared.parallel")))
    ]
    for blocker in blockers:
        blocker.start()
    time.sleep(0.3)
    run = k.start(f"%%tmchat {LONG} --out res\nWrite a very long story about the sea.")
    time.sleep(0.8)
    assert run.reply is None and "sea" not in run.text  # still waiting for its turn
    took = _interrupt(k, run)
    print(f"stop → idle, queued %%tmchat: {took:.3f} s")
    assert took <= STOP_WITHIN_S
    for blocker in blockers:
        blocker.join(120)
    # Had the server generated the 2,000 tokens of the dropped request, this short one would
    # wait for them (about 15 s here); it is answered at once.
    t0 = time.monotonic()
    r = httpx.post(url + "/v1/chat/completions", json={**body, "max_tokens": 3}, timeout=120)
    waited = time.monotonic() - t0
    assert r.status_code == 200
    print(f"next request after the dropped one: {waited:.2f} s")
    assert waited < 5.0
    assert _last_row(k, "magic")["error"] == "interrupted"
    _still_serving(k, pid)


def test_interrupting_a_sweep(k: Kernel) -> None:
    pid = _server_pid(k)
    run = k.start(
        "df = tmlab.sweep('Tell a story.', grid={'temperature': [0.7, 1.0]}, repeats=3, "
        "max_tokens=300, ignore_eos=True, concurrency=2, progress=False)"
    )
    time.sleep(2.0)
    assert run.reply is None
    took = _interrupt(k, run)
    print(f"stop → idle, sweep: {took:.3f} s")
    assert took <= STOP_WITHIN_S
    # the finished rows are the answer; the others say they were interrupted
    assert k.value("bool(df.attrs['interrupted'])") is True
    assert k.value("len(df)") == 6
    rows = k.value("list(tmlab.history(source='sweep')['error'])")
    assert "interrupted" in rows
    _still_serving(k, pid)


def test_interrupting_while_the_explorer_streams(k: Kernel) -> None:
    """The Explorer runs its request off the kernel's thread: the interrupt stops the cell
    that was running, never the server nor the Explorer's answer; Stop then ends it."""
    pid = _server_pid(k)
    k.run(
        "ex = tmlab.Explorer(prompt='Write a very long story about the sea.', "
        "max_tokens=2000, ignore_eos=True)\nex.run()"
    )
    # streaming: some of the answer is shown (however busy the machine is)
    k.run(
        "t0 = time.monotonic()\n"
        "while len(ex.answer.value) < 150 and time.monotonic() - t0 < 120:\n"
        "    time.sleep(0.05)"
    )
    run = k.start("time.sleep(60)")
    time.sleep(0.5)
    _interrupt(k, run)
    assert "KeyboardInterrupt" in run.text
    assert k.value("ex.stop_button.disabled") is False  # still streaming
    t0 = time.monotonic()
    k.run("ex.stop()\nassert ex.wait(10)")
    print(f"Explorer stop → idle (one kernel round trip): {time.monotonic() - t0:.3f} s")
    assert k.value("(ex.result.complete, len(ex.result.text) > 20)") == (False, True)
    row = _last_row(k, "explorer")
    assert row["error"] == "interrupted" and not row["complete"]
    _still_serving(k, pid)


def test_a_server_that_died_is_replaced_at_the_next_request(k: Kernel) -> None:
    pid = _server_pid(k)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while k.value("tmlab.local._shared.running") and time.monotonic() < deadline:
        time.sleep(0.1)
    run = k.run("%%tmchat --max-tokens 4\nSay hi.")
    assert "had stopped" in run.text and "starting a new one" in run.text
    new = _server_pid(k)
    assert new != pid
    _still_serving(k, new)
