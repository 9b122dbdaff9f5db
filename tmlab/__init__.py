"""tmlab: explore and teach LLM sampling from Jupyter.

Talks to the Tensormesh serverless chat-completions API, or to any OpenAI-compatible server,
or — with no API key — to an embedded local SmolLM2-135M-Instruct model::

    import tmlab
    res = tmlab.Client().chat("Hello", temperature=0.7, logprobs=True, top_logprobs=5)
    res.logprobs_frame()
"""

from __future__ import annotations

from tmlab import local
from tmlab._stream import Delta
from tmlab.client import AsyncClient, Client
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
