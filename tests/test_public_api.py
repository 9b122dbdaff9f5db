"""The public names are a contract: changing them is a decision, not an accident."""

from __future__ import annotations

import subprocess
import sys

import tmlab

EXPECTED = {
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
    "classify",
    "diff",
    "export_lesson",
    "history",
    "load_ipython_extension",
    "local",
    "logprobs_for_frame",
    "logprobs_frame",
    "params_table",
    "plot_sweep",
    "needs",
    "probe",
    "rerun",
    "sampling",
    "score",
    "session",
    "summarize",
    "sweep",
    "token_probs",
    "trace_frame",
    "usage_frame",
    "validate_params",
    "tree",
    "continuations",
    "cache_report",
    "prefix_diff",
    "plot_cache",
}


def test_all_is_pinned() -> None:
    assert set(tmlab.__all__) == EXPECTED
    assert len(tmlab.__all__) == len(EXPECTED)


def test_every_public_name_resolves_and_is_documented() -> None:
    for name in tmlab.__all__:
        obj = getattr(tmlab, name)
        if callable(obj) or isinstance(obj, type):
            assert obj.__doc__, f"tmlab.{name} has no docstring"


def test_import_tmlab_stays_light() -> None:
    """pandas, numpy, IPython, ipywidgets, matplotlib and the server load on first use."""
    heavy = ("pandas", "numpy", "IPython", "ipywidgets", "matplotlib", "llama_cpp", "starlette")
    code = f"import sys, tmlab; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    # and the lazy names resolve to the real objects
    from tmlab.frames import logprobs_frame

    assert tmlab.logprobs_frame is logprobs_frame
    assert callable(tmlab.history) and tmlab.history.__module__ == "tmlab.client.history"


def test_function_names_stay_functions_whatever_was_imported_first() -> None:
    """``tmlab.sweep`` and friends are functions even after their modules were imported by
    another path (the magic imports ``tmlab.sweeps`` on its own, for instance)."""
    code = (
        "import tmlab.sweeps, tmlab.audits, tmlab.align, tmlab.summary, tmlab.history\n"
        "import tmlab.scoring, tmlab.classification, tmlab.probes\n"
        "import tmlab.branchtree, tmlab.branching, tmlab.probtree\n"
        "import tmlab.jupyter.magics, tmlab.jupyter.explorer\n"
        "import tmlab, inspect\n"
        "names = ['sweep', 'asweep', 'summarize', 'plot_sweep', 'audit', 'diff', 'history',\n"
        "         'rerun', 'Explorer', 'score', 'classify', 'probe', 'tree',\n"
        "         'continuations']\n"
        "print([n for n in names if inspect.ismodule(getattr(tmlab, n))])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_error_tree() -> None:
    assert issubclass(tmlab.ParameterError, ValueError)
    assert issubclass(tmlab.ParameterError, tmlab.TmlabError)
    for cls in (
        tmlab.BadRequestError,
        tmlab.AuthenticationError,
        tmlab.PermissionDeniedError,
        tmlab.NotFoundError,
        tmlab.RateLimitError,
        tmlab.ServerError,
    ):
        assert issubclass(cls, tmlab.APIStatusError)
    assert issubclass(tmlab.APIStatusError, tmlab.APIError)
    assert issubclass(tmlab.APITimeoutError, tmlab.APIConnectionError)
    assert issubclass(tmlab.StreamError, tmlab.APIError)
    assert issubclass(tmlab.APIError, tmlab.TmlabError)
