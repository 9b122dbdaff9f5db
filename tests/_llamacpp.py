"""llama.cpp's own C++ server (the ``xllamacpp`` wheel) on the packaged GGUF, as a user runs it.

    with llamacpp_server() as base_url:      # "http://127.0.0.1:PORT/v1"
        tmlab.Client(base_url=base_url).chat("Hello")

The one launcher is ``bench/_llamacpp.py`` (the benchmarks' peer); here it is started as a
user would run it: llama.cpp's defaults (its prompt cache on, its context size, its sampling
defaults), the GGUF's own chat template, two slots, a free loopback port. It is not made to do
tmlab's server's work: it is a foreign server that tmlab's client must get along with.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

PARALLEL = 2

_LAUNCHER = Path(__file__).resolve().parent.parent / "bench" / "_llamacpp.py"


def _launcher() -> ModuleType:
    """``bench/_llamacpp.py``, loaded under a name of its own (this module has its name)."""
    spec = importlib.util.spec_from_file_location("tmlab_bench_llamacpp", _LAUNCHER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def available() -> bool:
    """Whether the ``xllamacpp`` wheel is installed (it is in the ``dev`` extra)."""
    return importlib.util.find_spec("xllamacpp") is not None


@contextmanager
def llamacpp_server(*, parallel: int = PARALLEL, timeout: float = 180.0) -> Iterator[str]:
    """llama.cpp's server in a child process; yields ``http://127.0.0.1:PORT/v1`` once its
    ``/health`` answers, and stops it after (``RuntimeError`` with its log if it does not come
    up within ``timeout`` seconds)."""
    launch = _launcher().llamacpp_server
    with launch(parallel=parallel, timeout=timeout, as_user=True) as root:
        yield root + "/v1"
