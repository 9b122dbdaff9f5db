"""tmlab: explore and teach LLM sampling from Jupyter.

Talks to the Tensormesh serverless chat-completions API, or to any OpenAI-compatible server,
or — with no API key — to an embedded local SmolLM2-135M-Instruct model::

    import tmlab
    res = tmlab.Client().chat("Hello", temperature=0.7, logprobs=True, top_logprobs=5)
    res.logprobs_frame()

In a notebook: ``%load_ext tmlab``, then ``%%tmchat`` on a cell, ``%tmconfig``, ``%tmmodels``,
``%tmhistory``.

``import tmlab`` stays light: pandas, numpy, IPython and ipywidgets are imported when a name
that needs them is first used (module ``__getattr__``), not at import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tmlab._settings import session
from tmlab._stream import Delta
from tmlab.client import AsyncClient, Client
from tmlab.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ContinuationError,
    LocalServerError,
    NotFoundError,
    ParameterError,
    PermissionDeniedError,
    RateLimitError,
    ScoreError,
    ServerError,
    StreamError,
    TmlabError,
)

# The function, not the module: ``tmlab.history()`` (import the module's names with
# ``from tmlab.history import ...``).
from tmlab.history import HistoryWarning, history
from tmlab.params import (
    NOT_GIVEN,
    PARAMS,
    Param,
    ParameterWarning,
    params_table,
    validate_params,
)
from tmlab.reruns import rerun
from tmlab.result import (
    ChatResult,
    Choice,
    Timing,
    TokenLogprob,
    TopLogprob,
    Usage,
    provide_branching,
)

if TYPE_CHECKING:
    from tmlab import local, sampling
    from tmlab.align import diff
    from tmlab.audits import audit
    from tmlab.branchtree import tree
    from tmlab.classification import classify
    from tmlab.frames import logprobs_frame, usage_frame
    from tmlab.jupyter.explorer import Explorer
    from tmlab.probes import needs, probe
    from tmlab.probtree import continuations
    from tmlab.scoring import ScoreResult, score
    from tmlab.summary import plot_sweep, summarize
    from tmlab.sweeps import asweep, sweep

# name -> (module, attribute or None for the module itself); imported on first use.
_LAZY: dict[str, tuple[str, str | None]] = {
    "logprobs_frame": ("tmlab.frames", "logprobs_frame"),
    "usage_frame": ("tmlab.frames", "usage_frame"),
    "sweep": ("tmlab.sweeps", "sweep"),
    "asweep": ("tmlab.sweeps", "asweep"),
    "summarize": ("tmlab.summary", "summarize"),
    "plot_sweep": ("tmlab.summary", "plot_sweep"),
    "audit": ("tmlab.audits", "audit"),
    "diff": ("tmlab.align", "diff"),
    "Explorer": ("tmlab.jupyter.explorer", "Explorer"),
    "sampling": ("tmlab.sampling", None),
    "local": ("tmlab.local", None),
    "score": ("tmlab.scoring", "score"),
    "ScoreResult": ("tmlab.scoring", "ScoreResult"),
    "classify": ("tmlab.classification", "classify"),
    "probe": ("tmlab.probes", "probe"),
    "needs": ("tmlab.probes", "needs"),
    "tree": ("tmlab.branchtree", "tree"),
    "continuations": ("tmlab.probtree", "continuations"),
}


def __getattr__(name: str) -> Any:
    if name == "__version__":  # importlib.metadata is slow to import: read it on first use
        from tmlab._meta import version

        return version()
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'tmlab' has no attribute {name!r}")
    module = importlib.import_module(target[0])
    value = module if target[1] is None else getattr(module, target[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"__version__"})


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext tmlab``: register ``%%tmchat``, ``%tmconfig``, ``%tmmodels``, ``%tmhistory``."""
    from tmlab.jupyter.magics import load_ipython_extension as load

    load(ipython)


def _branch(res: ChatResult, position: int, token: str | int | None = None, **kw: Any) -> Any:
    """``res.branch(...)``: :func:`tmlab.branching.branch`, imported when first used."""
    from tmlab.branching import branch

    return branch(res, position, token, **kw)


provide_branching(_branch)

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
    "ContinuationError",
    "Delta",
    "Explorer",
    "HistoryWarning",
    "LocalServerError",
    "NotFoundError",
    "Param",
    "ParameterError",
    "ParameterWarning",
    "PermissionDeniedError",
    "RateLimitError",
    "ScoreError",
    "ScoreResult",
    "ServerError",
    "StreamError",
    "Timing",
    "TmlabError",
    "TokenLogprob",
    "TopLogprob",
    "Usage",
    "__version__",
    "asweep",
    "audit",
    "classify",
    "continuations",
    "diff",
    "history",
    "load_ipython_extension",
    "local",
    "logprobs_frame",
    "needs",
    "params_table",
    "plot_sweep",
    "probe",
    "rerun",
    "sampling",
    "score",
    "session",
    "summarize",
    "sweep",
    "tree",
    "usage_frame",
    "validate_params",
]
