"""The public names are a contract: changing them is a decision, not an accident."""

from __future__ import annotations

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
}


def test_all_is_pinned() -> None:
    assert set(tmlab.__all__) == EXPECTED
    assert len(tmlab.__all__) == len(EXPECTED)


def test_every_public_name_resolves_and_is_documented() -> None:
    for name in tmlab.__all__:
        obj = getattr(tmlab, name)
        if callable(obj) or isinstance(obj, type):
            assert obj.__doc__, f"tmlab.{name} has no docstring"


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
