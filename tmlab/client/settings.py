"""Where the client sends requests, with which key and which model.

Each setting comes from the constructor's argument, else the session's settings
(:data:`session`, changed by ``%tmconfig``), else the environment
(``TENSORMESH_SERVERLESS_BASE_URL``, ``TENSORMESH_INFERENCE_API_KEY``, ``TMLAB_MODEL``).
The session's default length limit (:meth:`Session.max_tokens_default`, ``TMLAB_MAX_TOKENS``)
is what the front ends (the magic, the Explorer, sweeps, branches) send as ``max_tokens`` when
a request gives no length limit (:func:`session_limit`); :class:`tmlab.Client` itself sends
only what it is given.
With a key but no base URL the client talks to the Tensormesh serverless API. A base URL
with no path gets ``/v1`` appended (the seed page names the host alone). With neither
a key nor a base URL it talks to the embedded local server, which is started lazily, at the
first request (:func:`tmlab.client.local.ensure_server`), so that constructing a client is instant
and never fails; its model is then SmolLM2-135M-Instruct unless another one is named. A server on
this machine (a loopback base URL) that serves exactly one model needs no model name either:
the client asks it once (``GET /models``). A remote server needs one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from tmlab.errors import ParameterError
from tmlab.meta import MODEL_NAME
from tmlab.params import NOT_GIVEN

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_TOKENS",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "ENV_HISTORY",
    "ENV_MAX_TOKENS",
    "ENV_MODEL",
    "ENV_PARALLEL",
    "LENGTH_LIMITS",
    "LOCAL_MODEL",
    "Session",
    "Settings",
    "resolve_settings",
    "session",
    "session_limit",
]

DEFAULT_BASE_URL: Final = "https://serverless.tensormesh.ai/v1"
LOCAL_MODEL: Final = MODEL_NAME
ENV_API_KEY: Final = "TENSORMESH_INFERENCE_API_KEY"
ENV_BASE_URL: Final = "TENSORMESH_SERVERLESS_BASE_URL"
ENV_MODEL: Final = "TMLAB_MODEL"
ENV_HISTORY: Final = "TMLAB_HISTORY"
ENV_PARALLEL: Final = "TMLAB_PARALLEL"
ENV_MAX_TOKENS: Final = "TMLAB_MAX_TOKENS"

# 512 tokens: about 380 English words, more than a teaching answer needs (a paragraph, a
# short story, a list, a code snippet), yet a bound on what a looping 135M model costs: at
# the embedded model's 75-100 tokens/s alone and 10-30 on a busy 2-core machine, 512 tokens
# take 5-50 s, where the whole 8,192-token context took 216 s. A remote model pays per
# output token, so the same bound caps a runaway's cost too. Reasoning models need more:
# `%tmconfig max_tokens=N` or `off`.
DEFAULT_MAX_TOKENS: Final = 512
"""The session's default ``max_tokens`` (front ends only; ``%tmconfig max_tokens=N|off``)."""

LENGTH_LIMITS: Final = ("max_tokens", "max_completion_tokens")
"""The parameters that limit an answer's length: a request with either has its own limit."""

_OFF: Final = ("off", "none")
LOCAL_PARALLEL: Final = 3
"""Slots of the shared local server by default: two or three kernels decode at once. Batching
does not change the numbers (:mod:`tmlab.server.batch`); each slot keeps a KV cache of the
whole context, about 190 MB (README, "The local model")."""


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


def _with_v1(url: str) -> str:
    """``https://host`` → ``https://host/v1``: a base URL with no path gets the API's ``/v1``."""
    url = url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme and parts.netloc and parts.path in ("", "/"):
        return url + "/v1"
    return url


def resolve_settings(
    base_url: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve settings: arguments, then :data:`session`, then the environment.

    Never starts anything. Raises :class:`~tmlab.ParameterError` for an API key that cannot
    be sent in a header.
    """
    env = os.environ if environ is None else environ
    ses = session
    key = _clean(api_key)
    if key is not None:
        _check_key(key, "api_key=")
    elif ses.local and _clean(base_url) is None:
        return Settings(base_url=None, api_key=None, model=_clean(model) or ses.model)
    else:
        key, source = ses._key(env)
        if key is None:
            key, source = _clean(env.get(ENV_API_KEY)), ENV_API_KEY
        if key is not None:
            _check_key(key, source)
    url = _clean(base_url) or ses.base_url or _clean(env.get(ENV_BASE_URL))
    if url is None and key is not None:
        url = DEFAULT_BASE_URL
    return Settings(
        base_url=_with_v1(url) if url else None,
        api_key=key,
        model=_clean(model) or ses.model or _clean(env.get(ENV_MODEL)),
    )


class Session:
    """The session's settings (``%tmconfig``), between explicit arguments and the environment.

    ``tmlab.Client()`` with no arguments reads them, so the magic, the widget, sweeps and plain
    code agree. A key is only ever taken from an environment variable (``key_env``) or typed
    at a hidden prompt (:meth:`prompt_key`): never from notebook text, and it is in no repr.
    """

    _FIELDS: Final = (
        "base_url",
        "model",
        "key_env",
        "local",
        "history",
        "prices",
        "parallel",
        "max_tokens",
    )

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every session setting (back to the environment and defaults)."""
        self.base_url: str | None = None
        self.model: str | None = None
        self.key_env: str | None = None
        self.local = False
        self.history: str | None = None
        self.prices: dict[str, float] | None = None
        self.parallel: int | None = None
        self.max_tokens: int | str | None = None  # None: not set here; "off": no default
        self._prompted_key: str | None = None

    def update(self, **changes: Any) -> None:
        """Change some settings: ``base_url``, ``model``, ``key_env``, ``local``, ``history``
        (``"off"`` or a path), ``prices`` (``{"input": USD, "output": USD, "cached_input":
        USD}`` per million tokens; cached input 0 when not given), ``parallel`` (the slots
        of the embedded server this session starts: requests decoded together; 1, the
        default, is exact), ``max_tokens`` (the front ends' default
        length limit: an int ≥ 1, or ``"off"``/``"none"`` for none). ``None`` clears one. Raises
        :class:`~tmlab.ParameterError` before changing anything if a name or value is wrong.
        """
        checked: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in self._FIELDS:
                raise ParameterError(
                    name,
                    f"unknown setting {name!r}",
                    ", ".join(self._FIELDS) + " (an API key only as key_env=VAR or a prompt)",
                )
            checked[name] = check_setting(name, value)
        for name, value in checked.items():
            setattr(self, name, value)
            if name == "base_url" and value is not None:
                self.local = False
            if name == "local" and value:
                self.base_url = None
            if name == "key_env" and value is not None:
                self._prompted_key = None

    def prompt_key(self, key: str) -> None:
        """Use ``key`` (typed at a hidden prompt) for this session; it is kept in memory only."""
        key = key.strip()
        _check_key(key, "the prompt")
        self._prompted_key = key
        self.key_env = None
        self.local = False

    def _key(self, env: Mapping[str, str]) -> tuple[str | None, str]:
        """The session's key and where it came from, or ``(None, "")``."""
        if self._prompted_key:
            return self._prompted_key, "the prompt"
        if self.key_env:
            return _clean(env.get(self.key_env)), self.key_env
        return None, ""

    def key_source(self, environ: Mapping[str, str] | None = None) -> str | None:
        """Where the key in force comes from (a variable's name, ``"the prompt"``), or None."""
        env = os.environ if environ is None else environ
        if self.local:
            return None
        key, source = self._key(env)
        if key is not None:
            return source
        if self._prompted_key is None and self.key_env is None and _clean(env.get(ENV_API_KEY)):
            return ENV_API_KEY
        return None

    def history_path(self, environ: Mapping[str, str] | None = None) -> Path | None:
        """The history database in force, or ``None`` when the history is off."""
        env = os.environ if environ is None else environ
        value = self.history or _clean(env.get(ENV_HISTORY))
        if value is None:
            import platformdirs

            return Path(platformdirs.user_data_dir("tmlab", appauthor=False)) / "history.sqlite3"
        if value.lower() == "off":
            return None
        return Path(value).expanduser()

    def local_parallel(self, environ: Mapping[str, str] | None = None) -> int:
        """Slots of the shared local server this session uses: ``parallel``, else
        ``TMLAB_PARALLEL``, else :data:`LOCAL_PARALLEL`."""
        if self.parallel is not None:
            return self.parallel
        env = os.environ if environ is None else environ
        value = _clean(env.get(ENV_PARALLEL))
        return LOCAL_PARALLEL if value is None else int(check_setting("parallel", value))

    def max_tokens_default(self, environ: Mapping[str, str] | None = None) -> int | None:
        """The ``max_tokens`` the front ends send when a request gives no length limit:
        ``%tmconfig max_tokens=``, else ``TMLAB_MAX_TOKENS``, else :data:`DEFAULT_MAX_TOKENS`;
        ``None`` when turned off (``off`` / ``none``)."""
        value, _source = self._max_tokens(environ)
        return value

    def _max_tokens(self, environ: Mapping[str, str] | None) -> tuple[int | None, str]:
        if self.max_tokens is not None:
            value: Any = self.max_tokens
            source = "%tmconfig"
        else:
            env = os.environ if environ is None else environ
            text = _clean(env.get(ENV_MAX_TOKENS))
            if text is None:
                return DEFAULT_MAX_TOKENS, "default"
            value, source = check_setting("max_tokens", text), ENV_MAX_TOKENS
        return (None if value == "off" else int(value)), source

    def describe(self, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The settings in force, for display: never the key itself."""
        env = os.environ if environ is None else environ
        settings = resolve_settings(environ=env)
        source = self.key_source(env)
        path = self.history_path(env)
        return {
            "base_url": settings.base_url or "embedded local server (started on first request)",
            "model": settings.model or (LOCAL_MODEL if settings.local else None),
            "key": f"set (from {source})" if source else "not set",
            "local": settings.local,
            "history": str(path) if path else "off",
            "prices": self.prices,
            "parallel": self.local_parallel(env),
            "max_tokens": _describe_limit(*self._max_tokens(env)),
        }

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._FIELDS)
        return f"Session({shown})"


def _describe_limit(value: int | None, source: str) -> str:
    if value is None:
        return f"off (from {source}): front ends send no max_tokens unless given"
    return (
        f"{value} (from {source}): sent by %%tmchat, the Explorer, sweeps and branches "
        "when no max_tokens is given"
    )


def check_setting(name: str, value: Any) -> Any:
    if value is None:
        return False if name == "local" else None
    if name == "max_tokens":
        text = str(value).strip()
        if text.lower() in _OFF:
            return "off"
        if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
            raise ParameterError(
                "max_tokens",
                f"max_tokens={value!r} is not a length limit",
                "an int ≥ 1, or off (no default limit)",
            )
        return int(text)
    if name == "local":
        if not isinstance(value, bool):
            raise ParameterError("local", f"local={value!r} is not a bool", "True | False")
        return value
    if name == "parallel":
        text = str(value).strip()
        if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
            raise ParameterError(
                "parallel",
                f"parallel={value!r} is not a number of slots",
                "an int ≥ 1 (1: one request at a time, exact)",
            )
        return int(text)
    if name == "prices":
        ok = isinstance(value, Mapping) and set(value) <= {"input", "output", "cached_input"}
        if ok and all(isinstance(v, int | float) and v >= 0 for v in value.values()):
            return {k: float(v) for k, v in value.items()}
        raise ParameterError(
            "prices",
            "prices must give USD per million tokens",
            "{'input': 0.3, 'output': 1.2} (numbers ≥ 0)",
        )
    if not isinstance(value, str) or not value.strip():
        raise ParameterError(name, f"{name} must be a non-empty string", "a string")
    value = value.strip()
    if name == "base_url":
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ParameterError(
                "base_url", f"base_url={value!r} is not an http(s) URL", "http(s)://host[:port]/v1"
            )
        return _with_v1(value)
    if name == "key_env" and not value.replace("_", "").isalnum():
        raise ParameterError(
            "key_env", "key_env must name an environment variable", "a name such as MY_API_KEY"
        )
    return value


session: Final = Session()
"""The process-wide session settings (``%tmconfig``)."""


def session_limit(
    params: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> int | None:
    """The ``max_tokens`` a front end adds to ``params``: the session's default when
    ``params`` (or their ``extra_body``) give neither ``max_tokens`` nor
    ``max_completion_tokens``, else ``None`` (also when the default is off).

    Only the front ends call this (the magic, the Explorer, sweeps, branches);
    :meth:`tmlab.Client.chat` sends exactly what it is given.
    """
    extra = params.get("extra_body")
    given = [params.get(n, NOT_GIVEN) for n in LENGTH_LIMITS]
    if isinstance(extra, Mapping):
        given += [extra.get(n, NOT_GIVEN) for n in LENGTH_LIMITS]
    if any(v is not NOT_GIVEN for v in given):
        return None
    return session.max_tokens_default(environ)
