"""Every notebook, unchanged, on servers that are not tmlab's embedded one.

``make test`` runs the notebooks under nbval against the embedded server; here each runs again
in a fresh kernel whose environment points at

* llama.cpp's own C++ server (``xllamacpp``, its defaults) on the same GGUF, and
* a server without the optional capabilities (``tmlab serve --minimal``: no logprobs, no
  echo, no continuation, ``n`` = 1),

exactly as a user would run it with ``TENSORMESH_SERVERLESS_BASE_URL`` set. A cell that raises
fails the test with its traceback: where a server lacks something, the notebook must say so in
a line and go on, never stop with a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import tmlab.local

pytestmark = pytest.mark.slow

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def minimal_server() -> Iterator[str]:
    """The embedded server without the optional capabilities; its base URL."""
    with tmlab.local.start(quiet=True, minimal=True) as server:
        yield server.base_url


def _run(path: Path, base_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("TENSORMESH_SERVERLESS_BASE_URL", base_url)
    monkeypatch.delenv("TENSORMESH_INFERENCE_API_KEY", raising=False)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_on_llamacpp_server(
    path: Path, llamacpp_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run(path, llamacpp_server, monkeypatch)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_on_a_server_without_optional_capabilities(
    path: Path, minimal_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run(path, minimal_server, monkeypatch)
