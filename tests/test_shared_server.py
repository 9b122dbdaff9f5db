"""One local model per user, shared by every kernel (``tmlab.local.ensure_server``).

Two real kernels (``jupyter_client``) find the same server and decode at once; the server
outlives the kernel that started it; a stale or foreign state file never hands out a dead or
foreign URL; an idle server exits and the next request starts a new one.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _kernel import Kernel, kernel

import tmlab.local
from tmlab.errors import LocalServerError

TOKENS = 128


@pytest.fixture
def own_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A state folder of this test's own: its shared servers are stopped afterwards."""
    folder = tmp_path / "runtime"
    monkeypatch.setenv("TMLAB_RUNTIME_DIR", str(folder))
    monkeypatch.setattr(tmlab.local, "_shared", None)
    try:
        yield folder
    finally:
        tmlab.local.stop_shared()


def _timed_chat(k: Kernel, run_id: str) -> Any:
    """Start a 128-token answer in ``k``; the cell prints its wall-clock start and end."""
    return k.start(
        f"_t0 = time.time()\n"
        f"_r = tmlab.Client(timeout=600).chat('Write about the sea. {run_id}', "
        f"max_tokens={TOKENS}, ignore_eos=True, temperature=0.8, seed=1)\n"
        "print(repr((_t0, time.time(), _r.usage.completion_tokens, _r.complete)))"
    )


def _result(k: Kernel, run: Any) -> tuple[float, float, int, bool]:
    import ast

    k.finish(run, timeout=180)
    assert run.status == "ok", run.text
    return tuple(ast.literal_eval(run.text.strip().splitlines()[-1]))  # type: ignore[return-value]


@pytest.mark.slow
def test_two_kernels_share_one_server_decode_at_once_and_outlive_each_other(
    tmp_path: Path,
) -> None:
    env = {"TMLAB_HISTORY": str(tmp_path / "history.sqlite3")}
    with kernel(env) as a:
        with kernel(env) as b:
            for k in (a, b):
                k.run("import time, tmlab, tmlab.local")
                warm = k.run("print(tmlab.Client().chat('Hi', max_tokens=2).complete)")
                assert warm.text.rstrip().endswith("True"), warm.text
            pid = a.value("tmlab.local._shared.pid")
            assert b.value("tmlab.local._shared.pid") == pid, "each kernel started its own"
            assert a.value("tmlab.local._shared.parallel") >= 2

            t0, t1, n, complete = _result(a, _timed_chat(a, "alone"))
            assert (n, complete) == (TOKENS, True)
            alone = n / (t1 - t0)

            runs = [_timed_chat(a, "a"), _timed_chat(b, "b")]
            (a0, a1, na, ca), (b0, b1, nb, cb) = _result(a, runs[0]), _result(b, runs[1])
            assert (na, nb, ca, cb) == (TOKENS, TOKENS, True, True)
            assert a0 < b1 and b0 < a1, "the two requests did not run at the same time"
            together = (na + nb) / (max(a1, b1) - min(a0, b0))
            print(
                f"two kernels at once: {together:.1f} tok/s together, one alone "
                f"{alone:.1f} tok/s: ratio {together / alone:.2f}"
            )
            # Two servers side by side gave 0.12-0.22 here (each starving the other); the
            # bench (bench/shared_server.py) prints the ratio, this only catches starvation.
            assert together > 0.6 * alone
        # the kernel that started it is gone: the server is not
        assert a.value("tmlab.local._shared.pid") == pid
        again = a.run("print(tmlab.Client().chat('Still there?', max_tokens=3).complete)")
        assert again.text.rstrip().endswith("True"), again.text


def test_a_stale_or_foreign_state_file_is_never_handed_out(own_runtime: Path) -> None:
    # something else answers /health on a port: a plain HTTP server saying "ok"
    class Foreign(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"status": "ok", "model": "SmolLM2-135M-Instruct"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    foreign = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Foreign)
    threading.Thread(target=foreign.serve_forever, daemon=True).start()
    try:
        with tmlab.local.shared_state(parallel=2) as state:
            fake_url = f"http://127.0.0.1:{foreign.server_address[1]}"
            # a live pid (this process) and a port that answers: still not tmlab's instance
            record = {"url": fake_url, "pid": os.getpid(), "instance": "x"}
            state.path.write_text(json.dumps(record))
            assert state.read() is None
            assert not state.path.exists()
            # a dead pid
            record = {"url": fake_url, "pid": 2**22 + 12345, "instance": "x"}
            state.path.write_text(json.dumps(record))
            assert state.read() is None
            # a torn file
            state.path.write_text('{"url": "http://127.0.0.1:1"')
            assert state.read() is None
            state.path.write_text(json.dumps(record))
        server = tmlab.local.ensure_server(2)
        assert server.url != fake_url and server.running and server.shared
        health = httpx.get(server.url + "/health", timeout=60).json()
        assert health["server"] == "tmlab" and health["parallel"] == 2
        assert json.loads(state.path.read_text())["pid"] == server.pid
        # found again, from the file, by a process that does not know it yet
        tmlab.local._shared = None
        again = tmlab.local.ensure_server(2)
        assert (again.pid, again.url) == (server.pid, server.url)
    finally:
        foreign.shutdown()
        foreign.server_close()


def test_an_idle_server_exits_and_the_next_request_starts_a_new_one(
    own_runtime: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMLAB_LOCAL_IDLE", "3")
    server = tmlab.local.ensure_server(2)
    with tmlab.local.shared_state(parallel=2) as state:
        assert state.path.exists()
    body = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Hi"}]}
    r = httpx.post(
        server.base_url + "/chat/completions", json={**body, "max_tokens": 8}, timeout=120
    )
    assert r.status_code == 200
    answered = time.monotonic()
    deadline = answered + 60
    while server.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.running, "the idle server did not exit"
    # the idle clock starts when the last request ends
    assert time.monotonic() - answered >= 3.0
    assert not state.path.exists(), "it left its state file behind"
    with tmlab.Client() as client:
        assert client.chat("Hi", max_tokens=2).complete
    assert tmlab.local._shared is not None and tmlab.local._shared.pid != server.pid


def test_each_user_model_and_slot_count_has_its_own_server(own_runtime: Path) -> None:
    with tmlab.local.shared_state(parallel=2) as two, tmlab.local.shared_state(parallel=3) as three:
        assert two.path != three.path
        assert two.identity["model_path"] == three.identity["model_path"]
        assert two.identity["user"] == os.getuid()
    # a state folder that others can read is refused, not used
    own_runtime.chmod(0o755)
    with pytest.raises(LocalServerError, match="only this user"):
        tmlab.local.runtime_dir()
    own_runtime.chmod(0o700)
