"""llama.cpp's own C++ server (the ``xllamacpp`` wheel) on the packaged GGUF, as a user runs it.

    with llamacpp_server() as base_url:      # "http://127.0.0.1:PORT/v1"
        tmlab.Client(base_url=base_url).chat("Hello")

Configured as a user would: llama.cpp's defaults (its prompt cache on, its context size, its
sampling defaults), the GGUF's own chat template (``use_jinja=True``), two slots
(``n_parallel=2``), a free loopback port. Unlike ``bench/_llamacpp.py`` it is not made to do
tmlab's server's work: it is a foreign server that tmlab's client must get along with.

``xllamacpp.Server`` runs in threads of the process that starts it, until that process ends,
so it runs in a child process (this file, run as a script); stopping it is stopping that
process.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import httpx

PARALLEL = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def available() -> bool:
    """Whether the ``xllamacpp`` wheel is installed (it is in the ``dev`` extra)."""
    return importlib.util.find_spec("xllamacpp") is not None


@contextmanager
def llamacpp_server(*, parallel: int = PARALLEL, timeout: float = 180.0) -> Iterator[str]:
    """llama.cpp's server in a child process; yields ``http://127.0.0.1:PORT/v1`` once its
    ``/health`` answers, and stops it after.

    Raises ``RuntimeError`` (with the end of the child's log) when it does not come up within
    ``timeout`` seconds.
    """
    port = _free_port()
    root = f"http://127.0.0.1:{port}"
    # its log goes to a file: a pipe nobody reads would fill up and block the server
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as log:
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), str(port), str(parallel)],
            stdout=log,
            stderr=log,
        )
        try:
            _wait_healthy(proc, log, root, timeout)
            yield root + "/v1"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_healthy(proc: subprocess.Popen[bytes], log: IO[str], root: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"llama.cpp's server exited: {log.read()[-2000:]}")
        try:
            if httpx.get(root + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            log.seek(0)
            raise RuntimeError(
                f"llama.cpp's server did not answer within {timeout:g} s: {log.read()[-2000:]}"
            )
        time.sleep(0.1)


def _serve(port: int, parallel: int) -> None:
    """Run the server on ``127.0.0.1:port`` in this process until it is terminated."""
    import xllamacpp

    from tmlab.server.engine import default_model_path

    params = xllamacpp.CommonParams()  # llama.cpp's defaults, prompt cache included
    params.model.path = str(default_model_path())
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.n_parallel = parallel
    params.use_jinja = True
    server = xllamacpp.Server(params)
    try:
        while True:
            time.sleep(3600)
    finally:
        del server


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
