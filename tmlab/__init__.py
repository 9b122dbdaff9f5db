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
import importlib.abc
import importlib.util
import sys
from typing import TYPE_CHECKING, Any

from tmlab.client import AsyncClient, Client

# The function, not the module: ``tmlab.history()`` (import the module's names with
# ``from tmlab.client.history import ...``).
from tmlab.client.history import HistoryWarning, history
from tmlab.client.reruns import rerun
from tmlab.client.settings import session
from tmlab.client.stream import Delta
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
from tmlab.params import (
    NOT_GIVEN,
    PARAMS,
    Param,
    ParameterWarning,
    params_table,
    validate_params,
)
from tmlab.result import (
    ChatResult,
    Choice,
    Timing,
    TokenLogprob,
    TopLogprob,
    Usage,
    provide_branching,
)

# -- where modules used to be -----------------------------------------------------------------
# The package is laid out in layers (tmlab.client, tmlab.analysis, tmlab.jupyter, README,
# "Architecture"). The modules' earlier paths keep working, as the same module objects:
# ``import tmlab.local``, ``from tmlab.sweeps import sweep``, ``tmlab.sampling.whatif(...)``.
MOVED: dict[str, str] = {
    "tmlab.history": "tmlab.client.history",
    "tmlab.reruns": "tmlab.client.reruns",
    "tmlab.local": "tmlab.client.local",
    "tmlab.sampling": "tmlab.analysis.whatif",
    "tmlab.sweeps": "tmlab.analysis.sweeps",
    "tmlab.summary": "tmlab.analysis.summary",
    "tmlab.audits": "tmlab.analysis.audits",
    "tmlab.align": "tmlab.analysis.align",
    "tmlab.branching": "tmlab.analysis.branching",
    "tmlab.branchtree": "tmlab.analysis.branch_tree",
    "tmlab.probtree": "tmlab.analysis.continuations",
    "tmlab.continuation": "tmlab.analysis.continuation_check",
    "tmlab.probes": "tmlab.analysis.probes",
    "tmlab.scoring": "tmlab.analysis.scoring",
    "tmlab.classification": "tmlab.analysis.classification",
    "tmlab.plots": "tmlab.analysis.plots",
    "tmlab.demo": "tmlab.jupyter.demo",
    "tmlab.explain": "tmlab.jupyter.explain",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an earlier path (``tmlab.sweeps``) as the module at its new one."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> Any:
        module = importlib.import_module(MOVED[spec.name])
        spec.loader_state = module.__spec__  # the import system replaces it: see exec_module
        return module

    def exec_module(self, module: Any) -> None:
        """Nothing to run (the module is imported at its new path); the import system gave it
        the earlier path's spec: give it back its own."""
        module.__spec__ = module.__spec__.loader_state


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.insert(0, _MovedModules())
# tmlab.history is the function; its module is already imported: register the earlier path
# so that ``from tmlab.history import ...`` finds it without replacing the function.
sys.modules.setdefault("tmlab.history", sys.modules["tmlab.client.history"])

if TYPE_CHECKING:
    from tmlab.analysis import whatif as sampling
    from tmlab.analysis.align import diff
    from tmlab.analysis.audits import audit
    from tmlab.analysis.branch_tree import tree
    from tmlab.analysis.caching import cache_report, prefix_diff
    from tmlab.analysis.classification import classify
    from tmlab.analysis.continuations import continuations
    from tmlab.analysis.plots import plot_cache
    from tmlab.analysis.probes import needs, probe
    from tmlab.analysis.scoring import ScoreResult, score
    from tmlab.analysis.summary import plot_sweep, summarize
    from tmlab.analysis.sweeps import asweep, sweep
    from tmlab.analysis.token_probs import token_probs
    from tmlab.client import local
    from tmlab.frames import logprobs_for_frame, logprobs_frame, trace_frame, usage_frame
    from tmlab.jupyter.explorer import Explorer
    from tmlab.jupyter.export import export_lesson
    from tmlab.jupyter.stepper import Stepper

# name -> (module, attribute or None for the module itself); imported on first use.
_LAZY: dict[str, tuple[str, str | None]] = {
    "logprobs_frame": ("tmlab.frames", "logprobs_frame"),
    "logprobs_for_frame": ("tmlab.frames", "logprobs_for_frame"),
    "trace_frame": ("tmlab.frames", "trace_frame"),
    "token_probs": ("tmlab.analysis.token_probs", "token_probs"),
    "export_lesson": ("tmlab.jupyter.export", "export_lesson"),
    "usage_frame": ("tmlab.frames", "usage_frame"),
    "sweep": ("tmlab.analysis.sweeps", "sweep"),
    "asweep": ("tmlab.analysis.sweeps", "asweep"),
    "summarize": ("tmlab.analysis.summary", "summarize"),
    "plot_sweep": ("tmlab.analysis.summary", "plot_sweep"),
    "audit": ("tmlab.analysis.audits", "audit"),
    "diff": ("tmlab.analysis.align", "diff"),
    "Explorer": ("tmlab.jupyter.explorer", "Explorer"),
    "Stepper": ("tmlab.jupyter.stepper", "Stepper"),
    "sampling": ("tmlab.analysis.whatif", None),
    "local": ("tmlab.client.local", None),
    "score": ("tmlab.analysis.scoring", "score"),
    "ScoreResult": ("tmlab.analysis.scoring", "ScoreResult"),
    "classify": ("tmlab.analysis.classification", "classify"),
    "probe": ("tmlab.analysis.probes", "probe"),
    "needs": ("tmlab.analysis.probes", "needs"),
    "tree": ("tmlab.analysis.branch_tree", "tree"),
    "continuations": ("tmlab.analysis.continuations", "continuations"),
    "cache_report": ("tmlab.analysis.caching", "cache_report"),
    "prefix_diff": ("tmlab.analysis.caching", "prefix_diff"),
    "plot_cache": ("tmlab.analysis.plots", "plot_cache"),
}


def __getattr__(name: str) -> Any:
    if name == "__version__":  # importlib.metadata is slow to import: read it on first use
        from tmlab.meta import version

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
    """``res.branch(...)``: :func:`tmlab.analysis.branching.branch`, imported when first used."""
    from tmlab.analysis.branching import branch

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
    "Stepper",
    "StreamError",
    "Timing",
    "TmlabError",
    "TokenLogprob",
    "TopLogprob",
    "Usage",
    "__version__",
    "asweep",
    "audit",
    "cache_report",
    "classify",
    "continuations",
    "diff",
    "export_lesson",
    "history",
    "load_ipython_extension",
    "local",
    "logprobs_for_frame",
    "logprobs_frame",
    "needs",
    "params_table",
    "plot_cache",
    "plot_sweep",
    "prefix_diff",
    "probe",
    "rerun",
    "sampling",
    "score",
    "session",
    "summarize",
    "sweep",
    "token_probs",
    "trace_frame",
    "tree",
    "usage_frame",
    "validate_params",
]
