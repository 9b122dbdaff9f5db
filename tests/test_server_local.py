"""tmlab.local.start(), ensure_server(), `tmlab serve`, auth, and cleanup of the child."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import tmlab.local
from tmlab.errors import LocalServerError

pytestmark = pytest.mark.slow

MODEL = "SmolLM2-135M-Instruct"
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
        err = capsys.readouterr().err
        assert err.count("using the local SmolLM2-135M-Instruct model") == 1
        assert "TENSORMESH_INFERENCE_API_KEY" in err
    finally:
        if tmlab.local._shared is not None:
            tmlab.local._shared.stop()


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
        line = proc.stdout.readline()
        assert line.startswith("TMLAB_SERVER_READY http://127.0.0.1:")
        url = line.split()[1]
        assert httpx.get(url + "/health", timeout=30).json()["status"] == "ok"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    help_text = subprocess.run(
        [sys.executable, "-c", code, "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--host", "--port", "--model-path", "--api-key"):
        assert flag in help_text
