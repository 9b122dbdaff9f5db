"""Issue 9, foundation hardening: PID 1, a stream held open after [DONE], queued streams that
are abandoned, the start-up notice, and what the client imports of the server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _e2e import MODEL, STORY, post_raw, read_until
from _fake_server import USAGE, chunk, sse

import tmlab.local
from tmlab.client import AsyncClient, Client
from tmlab.meta import MODEL_NAME, READY_PREFIX, VERSION
from tmlab.server.__main__ import _watch_parent, parent_gone

# -- 1. the server watches the process that started it, even when that is PID 1 ----------


class _FakeServer:
    should_exit = False


def _watch(pid: int, *, direct: bool) -> tuple[_FakeServer, list[int], threading.Thread]:
    server, exits = _FakeServer(), []
    thread = threading.Thread(
        target=_watch_parent,
        args=(pid, server),
        kwargs={"direct": direct, "interval": 0.02, "grace": 0.0, "exit": exits.append},
        daemon=True,
    )
    thread.start()
    return server, exits, thread


def test_watcher_keeps_serving_a_live_parent_that_is_pid_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # In a container the parent may be PID 1: "my parent is 1" does not mean "orphaned".
    monkeypatch.setattr(os, "getppid", lambda: 1)
    assert not parent_gone(1, direct=True)  # PID 1 is alive (it is this machine's init)
    parent = subprocess.Popen(["sleep", "30"])
    try:
        server, exits, thread = _watch(parent.pid, direct=False)
        time.sleep(0.3)
        assert not server.should_exit and exits == []
        parent.kill()
        parent.wait()
        thread.join(5)
        assert server.should_exit and exits == [0]
    finally:
        parent.kill()
        parent.wait()


def test_watcher_sees_a_direct_parent_gone_even_before_it_is_reaped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ppid = os.getppid()
    assert not parent_gone(ppid, direct=True)
    # re-parented (the parent died; it may linger as a zombie, which kill(pid, 0) still finds)
    monkeypatch.setattr(os, "getppid", lambda: 1)
    assert parent_gone(ppid, direct=True)


def _can_unshare() -> str | None:
    if shutil.which("unshare") is None:
        return "the unshare command is not installed"
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"this machine does not allow a PID namespace here: {probe.stderr.strip()}"
    return None


@pytest.mark.slow
def test_local_server_works_when_its_parent_is_pid_1() -> None:
    why = _can_unshare()
    if why is not None:
        # CI asks for it (TMLAB_REQUIRE_UNSHARE=1 in .ci/run), as for the browser test: a
        # machine that cannot run it fails there instead of skipping silently
        if os.environ.get("TMLAB_REQUIRE_UNSHARE") == "1":
            pytest.fail(f"TMLAB_REQUIRE_UNSHARE=1 but {why}")
        pytest.skip(why)
    script = textwrap.dedent(f"""
        import os, time, httpx, tmlab.local
        assert os.getpid() == 1, os.getpid()
        server = tmlab.local.start(quiet=True)
        time.sleep(2.5)  # the watcher looks every second
        r = httpx.post(server.base_url + "/chat/completions", timeout=60, json={{
            "model": {MODEL!r}, "max_tokens": 5,
            "messages": [{{"role": "user", "content": "hi"}}]}})
        print(r.status_code, server.running, flush=True)
        server.stop()
    """)
    done = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["200", "True"]


# -- 3. a stream whose body stays open after [DONE] ------------------------------------------

ANSWER = ["Hello", " world"]


class _HoldingServer:
    """Answers every POST with an SSE stream ending in [DONE], then keeps the body open.

    HTTP/1.1 chunked encoding without the final zero-length chunk: the client has the whole
    answer but no end of body, as behind a proxy that holds the connection.
    """

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.release = threading.Event()
        self.connections = 0
        self.threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _accept(self) -> None:
        while not self.release.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(body) < length:
                body += conn.recv(65536)
            events = [chunk(ANSWER[0], role="assistant"), chunk(ANSWER[1])]
            events += [chunk(finish="stop"), chunk(choices=[], usage=USAGE)]
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            for piece in sse(*events).split(b"\n\n")[:-1]:
                piece += b"\n\n"
                conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.release.wait(60)  # no "0\r\n\r\n": the body never ends

    def close(self) -> None:
        self.release.set()
        self.sock.close()
        for t in self.threads:
            t.join(5)


@pytest.fixture
def holding_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_HoldingServer]:
    monkeypatch.setenv("TMLAB_HISTORY", "off")
    server = _HoldingServer()
    try:
        yield server
    finally:
        server.close()


def test_stream_returns_promptly_when_the_body_is_held_open_after_done(
    holding_server: _HoldingServer,
) -> None:
    with Client(holding_server.base_url, api_key="k", model="m", timeout=30) as client:
        for _ in range(2):  # the held connection is closed, not handed to the next request
            t0 = time.monotonic()
            res = client.chat("hi", stream=True)
            assert time.monotonic() - t0 < 5
            assert res.text == "Hello world" and res.complete
            assert res.usage.completion_tokens == USAGE["completion_tokens"]
    assert holding_server.connections == 2


def test_async_stream_returns_promptly_when_the_body_is_held_open_after_done(
    holding_server: _HoldingServer,
) -> None:
    async def main() -> list[tuple[float, Any]]:
        out = []
        async with AsyncClient(holding_server.base_url, api_key="k", model="m", timeout=30) as c:
            for _ in range(2):
                t0 = time.monotonic()
                res = await c.chat("hi", stream=True)
                out.append((time.monotonic() - t0, res))
        return out

    for took, res in asyncio.run(main()):
        assert took < 5
        assert res.text == "Hello world" and res.complete
    assert holding_server.connections == 2


# -- 4. streams abandoned while queued leave no task behind -----------------------------------


# The server, with the garbage collector run often (as it eventually runs in a long-lived
# server): a task left pending and unreachable is then destroyed, and asyncio says so.
_SERVE_COLLECTING = """
import gc, sys, threading, time
def collect():
    while True:
        time.sleep(0.1)
        gc.collect()
threading.Thread(target=collect, daemon=True).start()
from tmlab.server.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_streams_abandoned_while_queued_leave_no_pending_task(tmp_path: Path) -> None:
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as err:
        proc = subprocess.Popen(
            # not --quiet: it would silence asyncio's report too
            [sys.executable, "-c", _SERVE_COLLECTING, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(READY_PREFIX), errors.read_text()
        url = line[len(READY_PREFIX) :].strip()
        body = {"model": MODEL, "messages": STORY, "stream": True, "max_tokens": 3}
        busy = post_raw(url, {**body, "max_tokens": 2000, "ignore_eos": True})
        read_until(busy, b"data: ")  # the model is generating for it
        queued = [post_raw(url, body) for _ in range(3)]
        time.sleep(0.5)
        for sock in queued:  # their clients leave while they wait in the queue
            sock.close()
        time.sleep(1.0)  # the server notices (it looks every 0.25 s)
        busy.close()
        # queued behind the abandoned jobs: once it is answered, the worker has skipped them
        sock = post_raw(url, body)
        assert b"data: [DONE]" in read_until(sock, b"data: [DONE]")
        sock.close()
        time.sleep(0.5)  # a few garbage collections
    finally:
        proc.terminate()
        proc.communicate(timeout=30)  # (its stdout has uvicorn's access log)
    log = errors.read_text()
    assert "Application shutdown complete" in log
    assert "Task was destroyed but it is pending" not in log
    assert "never retrieved" not in log and "Traceback" not in log
    # uvicorn re-raises SIGTERM once it has shut down gracefully
    assert proc.returncode in (0, -signal.SIGTERM), log


# -- 11. the start-up notice is one calm line, not on stderr -----------------------------------


@pytest.mark.slow
def test_startup_notice_is_one_line_on_stdout_not_stderr(tmp_path: Path) -> None:
    # a state folder of its own: the process starts the shared server, then stops it
    script = (
        "import tmlab.local as L; L.ensure_server(); print('after', flush=True); L.stop_shared()"
    )
    env = {**os.environ, "TMLAB_RUNTIME_DIR": str(tmp_path / "runtime")}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # JupyterLab shows stderr in pink, like an error
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and lines[1] == "after", lines
    assert lines[0].startswith(tmlab.local.NOTICE)
    assert "TENSORMESH_INFERENCE_API_KEY" in lines[0] and MODEL_NAME in lines[0]
    assert " — starting … ready in " in lines[0]


@pytest.mark.slow
def test_startup_notice_in_a_kernel_is_a_display_updated_once_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # a state folder of its own (the kernel inherits it): the kernel starts the shared server
    monkeypatch.setenv("TMLAB_RUNTIME_DIR", str(tmp_path / "runtime"))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import tmlab.local\ntmlab.local.ensure_server();")]
    try:
        nbclient.NotebookClient(nb, timeout=180, kernel_name="python3").execute()
    finally:
        tmlab.local.stop_shared()
    outputs = nb.cells[0].outputs
    assert not [o for o in outputs if o.get("name") == "stderr"], outputs
    shown = [o["data"]["text/plain"] for o in outputs if o["output_type"] == "display_data"]
    assert len(shown) == 1, outputs  # one line, updated in place
    assert shown[0].startswith(tmlab.local.NOTICE + " — ready in "), shown


def test_notice_outside_a_kernel_is_a_stdout_line(capsys: pytest.CaptureFixture[str]) -> None:
    notice = tmlab.local.StartNotice("tmlab: something")
    notice.done("ready in 1.0s")
    out, err = capsys.readouterr()
    assert (out, err) == ("tmlab: something — starting … ready in 1.0s\n", "")


# -- 12, 13. the model's name and the version live in one small module -------------------------


def test_client_side_does_not_import_the_server() -> None:
    script = (
        "import sys, tmlab, tmlab.client, tmlab.local, tmlab.client.settings\n"
        "print(sorted(m for m in sys.modules if m.startswith('tmlab.server')))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_server_reports_the_package_version(http: Any) -> None:
    from importlib import metadata

    body = http.get("/version").json()
    assert body["version"] == VERSION == metadata.version("tmlab")
    assert body["model"] == MODEL_NAME == MODEL
    assert json.dumps(body)
