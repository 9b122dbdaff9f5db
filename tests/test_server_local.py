"""tmlab.local.start(), ensure_server(), `tmlab serve`, auth, and cleanup of the child."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from _e2e import MODEL

import tmlab.local
from tmlab.client import child
from tmlab.errors import LocalServerError

pytestmark = pytest.mark.slow

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}


def test_api_key_guards_chat_but_not_models_health_version() -> None:
    with tmlab.local.start(api_key="sekrit-key", quiet=True) as server:
        assert server.base_url.startswith("http://127.0.0.1:") and server.base_url.endswith("/v1")
        assert "sekrit" not in repr(server) and "running" in repr(server)
        with httpx.Client(base_url=server.url, timeout=60) as http:
            r = http.post("/v1/chat/completions", json=BODY)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            r = http.post(
                "/v1/chat/completions", json=BODY, headers={"Authorization": "Bearer wrong"}
            )
            assert r.status_code == 401
            r = http.post(
                "/v1/chat/completions", json=BODY, headers={"Authorization": "Bearer sekrit-key"}
            )
            assert r.status_code == 200
            for path in ("/v1/models", "/health", "/version"):
                assert http.get(path).status_code == 200
        proc = server.process
    assert proc.poll() is not None  # __exit__ stopped it
    assert not server.running


def test_bad_model_path_raises_with_the_servers_stderr(tmp_path: Path) -> None:
    bogus = tmp_path / "nothing.gguf"
    bogus.write_bytes(b"not a gguf file")
    with pytest.raises(LocalServerError) as info:
        tmlab.local.start(model_path=str(bogus), quiet=True)
    assert "exited" in str(info.value)


def test_server_exits_when_its_parent_dies(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import sys, time, tmlab.local
        s = tmlab.local.start(quiet=True)
        print(s.process.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(child, 0)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            with contextlib.suppress(ChildProcessError):  # reap it if it is our zombie
                os.waitpid(child, os.WNOHANG)
            time.sleep(0.2)
        else:
            os.kill(child, signal.SIGKILL)
            pytest.fail("the server outlived its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def test_ensure_server_is_shared_and_announced(capsys: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(tmlab.local, "_shared", None)
    try:
        a = tmlab.local.ensure_server()
        b = tmlab.local.ensure_server()
        assert a is b and a.running
        out, err = capsys.readouterr()
        assert err == ""  # JupyterLab paints stderr pink, like an error
        assert out.count("using the local SmolLM2-135M-Instruct model") == 1
        assert "TENSORMESH_INFERENCE_API_KEY" in out
        assert out.count("\n") == 1  # one line
    finally:
        if tmlab.local._shared is not None:
            tmlab.local._shared.stop()


def _read_line(stream: Any, timeout: float) -> str:
    """One line of ``stream``, or a failure after ``timeout`` seconds (never a hang)."""
    box: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: box.put(stream.readline()), daemon=True).start()
    try:
        return box.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"no line within {timeout:.0f}s")


def test_tmlab_serve_cli() -> None:
    code = "from tmlab.cli import main; raise SystemExit(main())"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "serve", "--port", "0", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = _read_line(proc.stdout, 120)
        assert line.startswith("TMLAB_SERVER_READY http://127.0.0.1:")
        url = line.split()[1]
        assert httpx.get(url + "/health", timeout=30).json()["status"] == "ok"
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    help_text = subprocess.run(
        [sys.executable, "-c", code, "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for flag in ("--host", "--port", "--model-path", "--api-key", "--n-ctx"):
        assert flag in help_text


def test_read_line_gives_up_on_a_silent_process() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"], stdout=subprocess.PIPE, text=True
    )
    try:
        t0 = time.monotonic()
        with pytest.raises(pytest.fail.Exception):
            _read_line(proc.stdout, 1.0)
        assert time.monotonic() - t0 < 5
    finally:
        proc.kill()
        proc.communicate(timeout=30)


def test_interrupted_start_kills_the_child(monkeypatch: Any) -> None:
    started: list[subprocess.Popen[str]] = []
    real_popen = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[str]:
        proc = real_popen(*args, **kwargs)
        started.append(proc)
        return proc

    def interrupt(url: str) -> bool:
        raise KeyboardInterrupt  # the user pressed Ctrl-C while the model was loading

    monkeypatch.setattr(child.subprocess, "Popen", popen)
    monkeypatch.setattr(child, "_healthy", interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            tmlab.local.start(quiet=True)
        (proc,) = started
        assert proc.poll() is not None, "the server outlived an interrupted start()"
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_reasoning_is_capped_to_the_room_left_in_the_context() -> None:
    # llama.cpp rounds the context up to a multiple of 256
    with (
        tmlab.local.start(n_ctx=256, quiet=True) as server,
        httpx.Client(base_url=server.url, timeout=120) as http,
    ):
        n_ctx = http.get("/v1/models").json()["data"][0]["max_model_len"]
        assert n_ctx == 256

        def ask(words: int, **extra: Any) -> httpx.Response:
            msgs = [{"role": "user", "content": " ".join(["apple"] * words)}]
            body = {"model": MODEL, "messages": msgs, "max_tokens": 8, "temperature": 0}
            return http.post("/v1/chat/completions", json={**body, **extra})

        # "Let me think step by step.\n" and "\n\nFinal answer:\n" take 8 + 6 tokens
        for words in (100, 200):
            prompt = ask(words).json()["usage"]["prompt_tokens"]
            res = ask(words, reasoning_effort="high")
            assert res.status_code == 200, res.text
            usage = res.json()["usage"]
            reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
            assert 0 < reasoning <= n_ctx - prompt - 8 - 6 - 1
            assert usage["completion_tokens"] - reasoning >= 1  # room for an answer
        # no room for reasoning and an answer: a clean 400, and the server lives on
        assert ask(220).status_code == 200
        r = ask(220, reasoning_effort="low")
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "context_length_exceeded"
        assert server.running
