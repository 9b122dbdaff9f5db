"""The classroom set-up (issue 15): ``tmlab serve --host 0.0.0.0 --api-key env:VAR --parallel N``.

A server that other machines can reach refuses to start without a key; ``env:VAR`` reads the
key from the environment and says so clearly when VAR is unset; with the key, the model's
routes need it. Without ``--quiet`` the server writes one line per request on stderr (time,
status, tokens, latency) that never holds the prompt or the key.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _e2e import MODEL

from tmlab.meta import READY_PREFIX

KEY_VAR = "TMLAB_TEST_CLASSROOM_KEY"
KEY = "class-key-7f3a9c1e2b"
SECRET_PROMPT = "zebra-canary-4417 lives here"  # text that must never reach the log


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TMLAB_SERVER_API_KEY", KEY_VAR)}
    return {**env, **extra}


def _serve(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tmlab.server", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_a_server_open_to_the_network_needs_a_key() -> None:
    done = _serve("--host", "0.0.0.0", "--port", "0", env=_env())
    assert done.returncode == 2, done
    assert "--api-key" in done.stderr and "0.0.0.0" in done.stderr
    assert READY_PREFIX not in done.stdout  # it never served


def test_api_key_from_an_unset_variable_fails_clearly() -> None:
    done = _serve("--host", "0.0.0.0", "--port", "0", "--api-key", f"env:{KEY_VAR}", env=_env())
    assert done.returncode == 2, done
    assert f"--api-key env:{KEY_VAR}" in done.stderr
    assert f"the environment variable {KEY_VAR} is not set" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def classroom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A server on 0.0.0.0 with the key from ``env:VAR``, two slots, not quiet: its URL (on
    the loopback address) and the file its stderr goes to."""
    log = tmp_path_factory.mktemp("classroom") / "stderr.txt"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tmlab.server",
                "--host",
                "0.0.0.0",
                "--port",
                "0",
                "--api-key",
                f"env:{KEY_VAR}",
                "--parallel",
                "2",
                "--n-ctx",
                "1024",
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=_env(**{KEY_VAR: KEY}),
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the server prints it once it answers
        assert line.startswith(READY_PREFIX), log.read_text()
        port = line.strip().rsplit(":", 1)[1]
        assert line.strip() == f"{READY_PREFIX}http://0.0.0.0:{port}"
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@pytest.mark.slow
def test_with_the_key_it_serves_and_the_chat_needs_it(classroom: tuple[str, Path]) -> None:
    url, _ = classroom
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    with httpx.Client(base_url=url, timeout=120.0) as c:
        # open routes, as on Tensormesh
        assert c.get("/health").status_code == 200
        (model,) = c.get("/v1/models").json()["data"]
        assert model["parallel"] == 2 and model["batch_invariant"] is True
        assert c.get("/v1/stats").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            r = c.post("/v1/chat/completions", json=body, headers=headers)
            assert r.status_code == 401, r.text
            assert r.json()["error"]["code"] == "invalid_api_key"
            assert KEY not in r.text
        assert c.post("/tokenize", json={"prompt": "x"}).status_code == 401
        auth = {"Authorization": f"Bearer {KEY}"}
        r = c.post("/v1/chat/completions", json=body, headers=auth)
        assert r.status_code == 200, r.text
        assert r.headers["X-Tmlab-Parallel"] == "2"


_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (POST|GET) (\S+) (\d{3}) (\d+) tokens (\d+\.\d\d) s$"
)


@pytest.mark.slow
def test_one_log_line_per_request_without_content_or_key(classroom: tuple[str, Path]) -> None:
    url, log = classroom
    auth = {"Authorization": f"Bearer {KEY}"}
    msgs = [{"role": "user", "content": SECRET_PROMPT}]
    answers: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, timeout=120.0) as c:
        before = [m for m in map(_LINE.match, log.read_text().splitlines()) if m]
        body = {"model": MODEL, "messages": msgs, "max_tokens": 5, "ignore_eos": True}
        r = c.post("/v1/chat/completions", json=body, headers=auth)
        assert r.status_code == 200, r.text
        answers.append(r.json())
        stream = {**body, "stream": True, "max_tokens": 3}
        r = c.post("/v1/chat/completions", json=stream, headers=auth)
        assert r.status_code == 200 and r.text.rstrip().endswith("[DONE]")
        r = c.post("/v1/chat/completions", json=body)  # no key
        assert r.status_code == 401
        r = c.post("/v1/chat/completions", json={**body, "temperature": 9}, headers=auth)
        assert r.status_code == 400
        c.get("/health")  # not a model route: not logged
    # the line is written once the answer is sent: wait for the four of them
    deadline = 100
    while True:
        lines = [m for m in map(_LINE.match, log.read_text().splitlines()) if m][len(before) :]
        if len(lines) >= 4 or deadline == 0:
            break
        deadline -= 1
        time.sleep(0.1)
    got = [(m[1], m[2], int(m[3]), int(m[4])) for m in lines]
    chat = "/v1/chat/completions"
    assert got == [
        ("POST", chat, 200, answers[0]["usage"]["completion_tokens"]),
        ("POST", chat, 200, 3),
        ("POST", chat, 401, 0),
        ("POST", chat, 400, 0),
    ]
    assert answers[0]["usage"]["completion_tokens"] == 5
    assert all(float(m[5]) >= 0 for m in lines)
    text = log.read_text()
    assert "zebra" not in text and "canary" not in text
    content = answers[0]["choices"][0]["message"]["content"]
    assert len(content) < 12 or content not in text
    assert KEY not in text
