"""Where the client sends requests, with which key and which model.

Each setting comes from the constructor's argument, else the environment
(``TENSORMESH_SERVERLESS_BASE_URL``, ``TENSORMESH_INFERENCE_API_KEY``, ``TMLAB_MODEL``).
With a key but no base URL the client talks to the Tensormesh serverless API. With neither
a key nor a base URL it talks to the embedded local server, which is started lazily, at the
first request (:func:`local_base_url`), so that constructing a client is instant and never
fails; its model is then SmolLM2-135M-Instruct unless another one is named. A server on
this machine (a loopback base URL) that serves exactly one model needs no model name either:
the client asks it once (``GET /models``). A remote server needs one.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from tmlab.errors import ParameterError
from tmlab.server.engine import MODEL_NAME

__all__ = [
    "DEFAULT_BASE_URL",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "ENV_MODEL",
    "LOCAL_MODEL",
    "Settings",
    "local_base_url",
    "resolve_settings",
]

DEFAULT_BASE_URL: Final = "https://serverless.tensormesh.ai/v1"
LOCAL_MODEL: Final = MODEL_NAME
ENV_API_KEY: Final = "TENSORMESH_INFERENCE_API_KEY"
ENV_BASE_URL: Final = "TENSORMESH_SERVERLESS_BASE_URL"
ENV_MODEL: Final = "TMLAB_MODEL"


@dataclass(frozen=True)
class Settings:
    """Resolved client settings. ``base_url is None`` means: the embedded local server."""

    base_url: str | None
    api_key: str | None = field(repr=False)
    model: str | None

    @property
    def local(self) -> bool:
        """True when requests go to the embedded local server."""
        return self.base_url is None

    @property
    def loopback(self) -> bool:
        """True when the base URL is on this machine (a server the user runs here)."""
        if self.base_url is None:
            return True
        host = urlsplit(self.base_url).hostname or ""
        return host == "localhost" or host == "::1" or host.startswith("127.")

    def require_model(
        self,
        model: str | None = None,
        *,
        discovered: str | None = None,
        served: list[str] | None = None,
    ) -> str:
        """The model for one request: ``model``, else the configured one, else an error.

        ``discovered`` is the one model a loopback server said it serves. Raises
        :class:`~tmlab.ParameterError` (before the chat request is sent) when a remote
        server is used and no model was named anywhere; ``served`` lists the server's models
        for the message when they are known.
        """
        if model:
            return model
        if self.model:
            return self.model
        if self.local:
            return LOCAL_MODEL
        if discovered:
            return discovered
        known = f"; it serves: {', '.join(served[:20])}" if served else ""
        raise ParameterError(
            "model",
            f"no model given for {self.base_url}{known}: pass chat(..., model=NAME), "
            f"Client(model=NAME) or set {ENV_MODEL}",
            "a model name the server serves; list them with client.models()",
        )


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def _check_key(key: str, source: str) -> None:
    """Reject a key that cannot go into an HTTP header, without ever quoting it.

    An API key is printable ASCII without spaces; anything else (a newline or a zero-width
    space pasted along with it, a typographic character) would otherwise fail deep in the
    HTTP stack with an error that shows the key.
    """
    if key.isascii() and key.isprintable() and " " not in key:
        return
    pos, bad = next((i, c) for i, c in enumerate(key) if not ("!" <= c <= "~"))
    what = "a space" if bad == " " else f"the character U+{ord(bad):04X}"
    raise ParameterError(
        "api_key",
        f"the API key from {source} contains {what} at position {pos + 1} of {len(key)}, "
        "which cannot be sent in an HTTP header; copy the key again",
        "printable ASCII characters without spaces",
    )


def resolve_settings(
    base_url: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve settings from arguments, then the environment. Never starts anything.

    Raises :class:`~tmlab.ParameterError` for an API key that cannot be sent in a header.
    """
    env = os.environ if environ is None else environ
    key = _clean(api_key)
    if key is not None:
        _check_key(key, "api_key=")
    else:
        key = _clean(env.get(ENV_API_KEY))
        if key is not None:
            _check_key(key, ENV_API_KEY)
    url = _clean(base_url) or _clean(env.get(ENV_BASE_URL))
    if url is None and key is not None:
        url = DEFAULT_BASE_URL
    return Settings(
        base_url=url.rstrip("/") if url else None,
        api_key=key,
        model=_clean(model) or _clean(env.get(ENV_MODEL)),
    )


def local_base_url() -> str:
    """Start the embedded local server if needed (once per process) and return its URL.

    ``tmlab.local.ensure_server()`` prints the one-line notice itself.
    """
    # import_module (not ``from tmlab import local``) so tests can swap the module out.
    local = importlib.import_module("tmlab.local")
    return str(local.ensure_server().base_url).rstrip("/")
