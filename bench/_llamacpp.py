"""llama.cpp's own C++ server on the packaged GGUF, in-process (the ``xllamacpp`` wheel).

    with llamacpp_server(parallel=8, n_ctx=2048) as url:   # "http://127.0.0.1:PORT"
        httpx.post(url + "/v1/chat/completions", json={...})

:func:`llamacpp_server` configures it as tmlab's embedded server is configured, so that the
two do the same work for the same request: the same GGUF file, ``n_ctx`` tokens of KV cache
per slot (one KV stream per slot, as tmlab's ``--parallel N``), the same thread count for
prompts and generation, the same ``n_batch``, flash attention off (llama-cpp-python's
default, hence tmlab's), and no prompt cache (tmlab evaluates every prompt in full, so that
the same request always gives the same numbers). Sampling settings come with each request;
llama.cpp's server defaults (``top_k=40, top_p=0.95, min_p=0.05``) are not tmlab's, so a
request that means "the full distribution" says ``top_k=0, top_p=1, min_p=0``.

``xllamacpp.Server`` runs in threads of the process that starts it, until that process ends:
:func:`llamacpp_server` starts it in a child process of its own (:func:`start_in_process`
there), as tmlab's server runs in its own, so that the client measuring both shares the
cores with each alike, and stopping it is stopping that process.
"""

from __future__ import annotations

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

READY = "LLAMACPP_SERVER_READY "


def default_threads() -> int:
    """The thread count tmlab's engine takes by default (``min(8, cores)``)."""
    return max(1, min(8, os.cpu_count() or 1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_in_process(
    port: int,
    *,
    parallel: int = 1,
    n_ctx: int = 8192,
    threads: int | None = None,
    model_path: str | None = None,
    as_user: bool = False,
) -> object:
    """Start ``xllamacpp.Server`` on ``127.0.0.1:port`` in this process; return it (keep a
    reference: the server stops when it is collected). ``as_user``: llama.cpp's own defaults
    (its context size, prompt cache on) instead of tmlab's configuration: a foreign server
    as a user runs it, for the tests."""
    import xllamacpp

    from tmlab.server.engine import default_model_path

    n = threads or default_threads()
    params = xllamacpp.CommonParams()
    params.model.path = model_path or str(default_model_path())
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.n_parallel = parallel
    params.use_jinja = True  # the GGUF's own chat template, as tmlab renders it
    if as_user:
        return xllamacpp.Server(params)
    params.n_ctx = n_ctx * parallel  # llama.cpp divides the context among the slots
    params.kv_unified = False  # one KV stream per slot, as tmlab's batch engine
    params.n_batch = 512  # llama-cpp-python's default, tmlab's prompt pieces
    params.n_ubatch = 512
    params.cpuparams.n_threads = n
    params.cpuparams_batch.n_threads = n
    params.flash_attn_type = xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
    params.cache_prompt = False  # tmlab evaluates every prompt in full
    params.cache_ram_mib = 0
    params.fit_params = False  # no device to fit: keep the context asked for
    return xllamacpp.Server(params)


@contextmanager
def llamacpp_server(
    *,
    parallel: int = 1,
    n_ctx: int = 8192,
    threads: int | None = None,
    timeout: float = 120.0,
    as_user: bool = False,
) -> Iterator[str]:
    """llama.cpp's server on the packaged GGUF in a child process; yields its base URL
    (``http://127.0.0.1:PORT``, without ``/v1``) once ``/health`` answers; stops it after.

    Raises ``RuntimeError`` (with the child's last output) when it does not come up within
    ``timeout`` seconds, or ``ModuleNotFoundError`` when ``xllamacpp`` is not installed (it is
    in the ``dev`` extra).
    """
    import importlib.util

    if importlib.util.find_spec("xllamacpp") is None:
        raise ModuleNotFoundError("llama.cpp's server needs the 'xllamacpp' wheel (dev extra)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    args = [str(port), str(parallel), str(n_ctx), str(threads or default_threads())]
    args.append("1" if as_user else "0")
    # its log goes to a file: a pipe nobody reads would fill up and block the server
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as log:
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), *args], stdout=log, stderr=log
        )
        try:
            _wait_healthy(proc, log, url, timeout)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_healthy(proc: subprocess.Popen[bytes], log: IO[str], url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"llama.cpp's server exited: {log.read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"llama.cpp's server did not answer within {timeout:g} s")
        time.sleep(0.1)


def _serve(argv: list[str]) -> None:
    port, parallel, n_ctx, threads, as_user = (int(a) for a in argv)
    server = start_in_process(
        port, parallel=parallel, n_ctx=n_ctx, threads=threads, as_user=bool(as_user)
    )
    print(READY + f"http://127.0.0.1:{port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        del server


if __name__ == "__main__":
    _serve(sys.argv[1:])
