"""Shared fixtures: one real local server (the real model, a real socket) per test session."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import tmlab.local
from tmlab.local import LocalServer


@pytest.fixture(scope="session")
def local_server() -> Iterator[LocalServer]:
    """A :func:`tmlab.local.start` handle serving SmolLM2-135M-Instruct, for every e2e test."""
    server = tmlab.local.start(quiet=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def parallel_server() -> Iterator[LocalServer]:
    """The same server decoding up to 4 requests together (``--parallel 4``; 2048-token
    context per slot), for the tests that must hold with batching too."""
    server = tmlab.local.start(quiet=True, parallel=4, n_ctx=2048)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def http(local_server: LocalServer) -> Iterator[object]:
    """An ``httpx.Client`` on the local server's root URL."""
    import httpx

    with httpx.Client(base_url=local_server.url, timeout=120.0) as client:
        yield client


_HISTORY_DIR = tempfile.mkdtemp(prefix="tmlab-test-history-")
_RUNTIME_DIR = tempfile.mkdtemp(prefix="tmlab-test-runtime-")


def pytest_configure(config: pytest.Config) -> None:
    """Tests (and the notebook kernels they start) never write to the user's own history, nor
    use (or leave behind) the user's shared local server: theirs is found through a state
    folder of the test run, and stopped when the run ends."""
    os.environ["TMLAB_HISTORY"] = os.path.join(_HISTORY_DIR, "history.sqlite3")
    os.environ["TMLAB_RUNTIME_DIR"] = _RUNTIME_DIR


@pytest.fixture
def history_db(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty history database for one test (``TMLAB_HISTORY`` points at it)."""
    path = os.path.join(str(tmp_path), "history.sqlite3")
    monkeypatch.setenv("TMLAB_HISTORY", path)
    return path


@pytest.fixture(autouse=True)
def _fresh_session() -> Iterator[None]:
    """Each test starts and ends with no ``%tmconfig`` settings."""
    from tmlab.client.settings import session

    session.reset()
    yield
    session.reset()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Close the two /dev/null files llama_cpp opens at import and never closes.

    Otherwise every test run that loaded llama_cpp in-process ends with two ResourceWarnings.
    """
    import sys

    utils = sys.modules.get("llama_cpp._utils")
    for name in ("outnull_file", "errnull_file"):
        handle = getattr(utils, name, None)
        if handle is not None:
            handle.close()
    shutil.rmtree(_HISTORY_DIR, ignore_errors=True)
    tmlab.local.stop_shared()
    shutil.rmtree(_RUNTIME_DIR, ignore_errors=True)


@pytest.fixture
def make() -> Iterator[Callable[..., Any]]:
    """Build Explorers; each is stopped, its threads joined and closed after the test."""
    from tmlab.jupyter.explorer import Explorer

    made: list[Explorer] = []

    def build(*args: Any, **kwargs: Any) -> Explorer:
        ex = Explorer(*args, **kwargs)
        made.append(ex)
        return ex

    yield build
    for ex in made:
        ex.stop()
        assert ex.wait(timeout=60), "an Explorer thread did not end"
        ex.close()


@pytest.fixture(scope="session")
def llamacpp_server() -> Iterator[str]:
    """llama.cpp's own C++ server (``xllamacpp``) on the packaged GGUF, configured as a user
    would (its defaults, prompt cache on, the GGUF's template, 2 slots); yields its base URL
    ``http://127.0.0.1:PORT/v1`` and stops it at the end of the session."""
    from _llamacpp import available, llamacpp_server

    if not available():
        pytest.skip("llama.cpp's server needs the 'xllamacpp' wheel (dev extra)")
    with llamacpp_server() as base_url:
        yield base_url


@pytest.fixture(scope="module")
def reference() -> Iterator[Any]:
    """An independent llama.cpp model (``logits_all=True``, the configuration llama-cpp-python
    itself needs for logprobs), for tests that hold the server's numbers against its logits."""
    import llama_cpp

    from tmlab.server.engine import default_model_path

    llm = llama_cpp.Llama(
        model_path=str(default_model_path()), n_ctx=512, logits_all=True, verbose=False
    )
    yield llm
    llm.close()


@pytest.fixture
def ip(local_server: LocalServer, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An IPython shell with the magics loaded, its session on the local server and a
    history of its own."""
    from IPython.core.interactiveshell import InteractiveShell

    from tmlab.client.settings import ENV_API_KEY, ENV_BASE_URL, ENV_MODEL, session
    from tmlab.jupyter.magics import load_ipython_extension

    monkeypatch.setenv("TMLAB_HISTORY", str(tmp_path / "history.sqlite3"))
    for var in (ENV_API_KEY, ENV_BASE_URL, ENV_MODEL):
        monkeypatch.delenv(var, raising=False)
    shell = InteractiveShell.instance()
    load_ipython_extension(shell)
    session.reset()
    session.update(base_url=local_server.base_url)
    yield shell
    session.reset()
