"""tmlab: explore and teach LLM sampling from Jupyter.

Talks to the Tensormesh serverless chat-completions API, or to any OpenAI-compatible server,
or — with no API key — to an embedded local SmolLM2-135M-Instruct model::

    import tmlab
    res = tmlab.Client().chat("Hello", temperature=0.7, logprobs=True, top_logprobs=5)
    res.logprobs_frame()
"""

from __future__ import annotations

from typing import Any

from tmlab.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    LocalServerError,
    NotFoundError,
    ParameterError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    StreamError,
    TmlabError,
)
from tmlab.frames import logprobs_frame, usage_frame
from tmlab.params import NOT_GIVEN, PARAMS, Param, params_table, validate_params
from tmlab.result import ChatResult, Choice, Timing, TokenLogprob, TopLogprob, Usage

__version__ = "0.1.0"

_LAZY = {"Client": "tmlab.client", "AsyncClient": "tmlab.client", "Delta": "tmlab._stream"}


def __getattr__(name: str) -> Any:
    # The clients load httpx and the local module loads nothing heavy, but importing them
    # lazily keeps `import tmlab` fast in a notebook that only wants the frames.
    if name == "local":
        import importlib

        return importlib.import_module("tmlab.local")
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tmlab' has no attribute {name!r}")


__all__ = [
    "NOT_GIVEN",
    "PARAMS",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "ChatResult",
    "Choice",
    "Client",
    "Delta",
    "LocalServerError",
    "NotFoundError",
    "Param",
    "ParameterError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "StreamError",
    "Timing",
    "TmlabError",
    "TokenLogprob",
    "TopLogprob",
    "Usage",
    "__version__",
    "local",
    "logprobs_frame",
    "params_table",
    "usage_frame",
    "validate_params",
]
