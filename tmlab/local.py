"""Start the embedded local server from Python.

:func:`start` runs ``python -m tmlab.server`` in a subprocess (a llama.cpp crash cannot take
the Jupyter kernel with it), waits until ``/health`` answers and returns a
:class:`LocalServer` handle. The child is given this process's id and exits when this process
is gone. :func:`ensure_server` starts one shared server per process, for ``tmlab.Client()``
with no API key and no base URL.

Progress is one calm line, never on stderr (JupyterLab paints stderr pink, like an error): in
a Jupyter kernel a display that is updated in place once the model is ready (and, for front
ends that render an output once and never update it, such as Voilà, a second line saying the
outcome), elsewhere a line on stdout that is completed then.
"""

from __future__ import annotations

import atexit
import collections
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from types import TracebackType
from typing import IO, Any

from tmlab._meta import MODEL_NAME
from tmlab.errors import LocalServerError

__all__ = ["NOTICE", "LocalServer", "ensure_server", "start"]

NOTICE = (
    f"tmlab: using the local {MODEL_NAME} model "
    "(set TENSORMESH_INFERENCE_API_KEY to use Tensormesh)"
)
READY_PREFIX = "TMLAB_SERVER_READY "


class LocalServer:
    """A running local server: ``.base_url`` for clients, ``.stop()`` when done."""

    def __init__(
        self,
        process: subprocess.Popen[str],
        url: str,
        *,
        api_key: str | None,
        parallel: int = 1,
    ) -> None:
        self.process = process
        self.url = url
        self.api_key = api_key
        self.parallel = parallel
        """Requests it decodes together (``--parallel``)."""

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, ``http://127.0.0.1:PORT/v1``."""
        return self.url + "/v1"

    @property
    def port(self) -> int:
        """The TCP port it listens on."""
        return int(self.url.rsplit(":", 1)[1])

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout`` seconds)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited({self.process.returncode})"
        return f"<LocalServer {self.base_url} pid={self.process.pid} {state}>"


class _Notice:
    """One line of progress: a display updated in place in a Jupyter kernel, else stdout.

    Shows ``"{prefix} — starting …"``; :meth:`done` turns it into ``"{prefix} — {outcome}"``
    (on stdout by completing the line, so a terminal or a log gets one line). In a kernel the
    display carries a small text widget too: front ends that render an output once and never
    apply later updates to it (Voilà, an app built on a notebook) still show the outcome,
    because a widget stays live; saved notebooks and static renderers get the plain text.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._handle: Any = None
        self._widget: Any = None
        display = _kernel_display()
        if display is not None:
            text = f"{prefix} — starting …"
            self._widget = _text_widget(text)
            self._handle = display(self._bundle(text), raw=True, display_id=True)
        else:
            print(f"{prefix} — starting …", end="", file=sys.stdout, flush=True)

    def _bundle(self, text: str) -> dict[str, Any]:
        bundle: dict[str, Any] = {"text/plain": text}
        if self._widget is not None:
            bundle["application/vnd.jupyter.widget-view+json"] = {
                "model_id": self._widget.model_id,
                "version_major": 2,
                "version_minor": 0,
            }
        return bundle

    def done(self, outcome: str) -> None:
        """Say how it ended (``"ready in 1.9s"``)."""
        text = f"{self.prefix} — {outcome}"
        if self._handle is not None:
            if self._widget is not None:
                self._widget.value = text
            self._handle.update(self._bundle(text), raw=True)
        else:
            print(f" {outcome}", file=sys.stdout, flush=True)


def _text_widget(text: str) -> Any:
    """A plain-text ``ipywidgets.Label`` showing ``text``; None if ipywidgets cannot load."""
    try:
        import ipywidgets
    except ImportError:  # pragma: no cover - ipywidgets is a dependency
        return None
    return ipywidgets.Label(value=text)


def _kernel_display() -> Any:
    """IPython's ``display`` when running in a Jupyter kernel, else None.

    IPython is only looked at when it is already imported: tmlab never imports it here.
    """
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    shell = get() if get is not None else None
    if shell is None or getattr(shell, "kernel", None) is None:
        return None  # plain Python, or terminal IPython (whose display cannot be updated)
    from IPython.display import display

    return display


def _drain(stream: IO[str], tail: collections.deque[str]) -> None:
    for line in stream:
        tail.append(line.rstrip("\n"))
    stream.close()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait_ready(
    proc: subprocess.Popen[str],
    url_box: list[str],
    tail: collections.deque[str],
    *,
    t0: float,
    timeout: float,
    shown: list[_Notice],
    notice_after: float | None,
) -> None:
    """Wait until the child announced its URL and answers ``/health``.

    ``notice_after`` seconds into the wait (None: never), shows a progress line and appends
    it to ``shown``, unless one is shown already.
    """
    while True:
        if proc.poll() is not None:
            time.sleep(0.1)  # let the stderr reader catch up
            detail = "\n".join(tail) or "(no output)"
            raise LocalServerError(
                f"the local server exited with status {proc.returncode}:\n{detail}"
            )
        elapsed = time.monotonic() - t0
        if url_box and _healthy(url_box[0]):
            return
        if elapsed > timeout:
            raise LocalServerError(
                f"the local server did not become healthy within "
                f"{timeout:.0f}s:\n" + "\n".join(tail)
            )
        if not shown and notice_after is not None and elapsed > notice_after:
            shown.append(_Notice(f"tmlab: local {MODEL_NAME} model server"))
        time.sleep(0.05)


def start(
    host: str = "127.0.0.1",
    port: int | None = None,
    model_path: str | None = None,
    api_key: str | None = None,
    quiet: bool = False,
    timeout: float = 120.0,
    n_ctx: int | None = None,
    *,
    max_body_bytes: int | None = None,
    max_n: int | None = None,
    max_request_tokens: int | None = None,
    max_queue: int | None = None,
    body_timeout: float | None = None,
    logprobs_mode: str | None = None,
    parallel: int = 1,
) -> LocalServer:
    """Start a local server in a subprocess and wait until ``/health`` answers.

    ``port=None`` picks a free port; ``n_ctx`` sets the context size in tokens (default
    8192); ``max_body_bytes``, ``max_n``, ``max_request_tokens``, ``max_queue`` and
    ``body_timeout`` set what one request may cost (the options of ``tmlab serve``; None: the
    server's default);
    ``logprobs_mode`` the server's default for requests that do not say (``"raw_logprobs"``,
    the default, or ``"processed_logprobs"``); ``parallel=N`` decodes up to N requests together
    (1, the default: one at a time, and the same request gives the same numbers). Raises
    :class:`~tmlab.LocalServerError` (with the server's last stderr lines) if it exits or is
    not healthy within ``timeout`` seconds; an interrupt (Ctrl-C) while waiting stops the child
    before it propagates. Unless ``quiet``, shows one line of progress (stdout, or a display in
    Jupyter) when starting takes more than a moment.
    """
    limits = {
        "--max-body-bytes": max_body_bytes,
        "--max-n": max_n,
        "--max-request-tokens": max_request_tokens,
        "--max-queue": max_queue,
    }
    extra = [a for flag, v in limits.items() if v is not None for a in (flag, str(int(v)))]
    if body_timeout is not None:
        extra += ["--body-timeout", repr(float(body_timeout))]
    if logprobs_mode is not None:
        extra += ["--logprobs-mode", str(logprobs_mode)]
    if parallel != 1:
        extra += ["--parallel", str(int(parallel))]
    return _start(
        host, port, model_path, api_key, timeout, n_ctx, None, None if quiet else 1.0, extra
    )


def _start(
    host: str,
    port: int | None,
    model_path: str | None,
    api_key: str | None,
    timeout: float,
    n_ctx: int | None,
    notice: _Notice | None,
    notice_after: float | None,
    server_args: list[str] | None = None,
) -> LocalServer:
    cmd = [
        sys.executable,
        "-m",
        "tmlab.server",
        "--host",
        host,
        "--port",
        str(port or 0),
        # The child watches this very process (not "am I an orphan?": this process may be
        # PID 1 in a container, whose children are never orphaned).
        "--parent-pid",
        str(os.getpid()),
        "--quiet",
    ]
    if model_path is not None:
        cmd += ["--model-path", str(model_path)]
    if n_ctx is not None:
        cmd += ["--n-ctx", str(int(n_ctx))]
    cmd += server_args or []
    env = dict(os.environ)
    if api_key is not None:
        env["TMLAB_SERVER_API_KEY"] = api_key  # not on the command line, where ps shows it
    else:
        env.pop("TMLAB_SERVER_API_KEY", None)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        # Its own session: SIGINT sent to this process's group (a kernel's stop button, Ctrl-C
        # in a terminal) must not stop the model. It exits with this process (--parent-pid).
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    tail: collections.deque[str] = collections.deque(maxlen=40)
    threading.Thread(target=_drain, args=(proc.stderr, tail), daemon=True).start()
    url_box: list[str] = []

    def read_ready() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(READY_PREFIX) and not url_box:
                url_box.append(line[len(READY_PREFIX) :].strip())
        proc.stdout.close()

    threading.Thread(target=read_ready, daemon=True).start()
    shown = [notice] if notice is not None else []
    try:
        _wait_ready(
            proc, url_box, tail, t0=t0, timeout=timeout, shown=shown, notice_after=notice_after
        )
    except BaseException:
        # a timeout, an exit, or the user's Ctrl-C: never leave a model server behind
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for n in shown:
            n.done("failed to start")
        raise
    for n in shown:
        n.done(f"ready in {time.monotonic() - t0:.1f}s")
    args = server_args or []
    parallel = int(args[args.index("--parallel") + 1]) if "--parallel" in args else 1
    return LocalServer(proc, url_box[0], api_key=api_key, parallel=parallel)


_shared: LocalServer | None = None
_shared_lock = threading.Lock()


def ensure_server() -> LocalServer:
    """The process's shared local server, started on first use (thread-safe).

    The first start shows :data:`NOTICE` as one calm line (a display in Jupyter, else
    stdout), completed once the model is ready; the server is stopped at exit. A shared
    server that has died (killed, crashed) is never handed out: a new one is started, with a
    line saying so. Its slots follow the session (``%tmconfig parallel=N``, else
    ``TMLAB_PARALLEL``): a running server with other slots is replaced.
    """
    global _shared
    from tmlab._settings import session

    parallel = session.local_parallel()
    with _shared_lock:
        if _shared is not None and _shared.running and _shared.parallel == parallel:
            return _shared
        first = _shared is None
        if first:
            notice = _Notice(NOTICE)
        elif _shared is not None and _shared.running:
            _shared.stop()
            notice = _Notice(
                f"tmlab: restarting the local {MODEL_NAME} model server with {parallel} "
                "slot(s) (%tmconfig parallel)"
            )
        else:
            assert _shared is not None
            notice = _Notice(
                f"tmlab: the local {MODEL_NAME} model server had stopped "
                f"(exit status {_shared.process.returncode}); starting a new one"
            )
        args = ["--parallel", str(parallel)] if parallel != 1 else []
        _shared = _start("127.0.0.1", None, None, None, 120.0, None, notice, None, args)
        if first:
            atexit.register(_stop_shared)
        return _shared


def _stop_shared() -> None:
    if _shared is not None:
        _shared.stop()
