"""A local server in a child process: :func:`start`, its :class:`LocalServer` handle, and the
one-line notice shown while a model loads.

:func:`start` runs ``python -m tmlab.server`` in a subprocess (a llama.cpp crash cannot take
the Jupyter kernel with it), waits until ``/health`` answers and returns a
:class:`LocalServer` handle. The child is given this process's id and exits when this process
is gone. (The server a user's kernels share is :mod:`tmlab.client.local`'s.)

Progress is one calm line, never on stderr (JupyterLab paints stderr pink, like an error): in
a Jupyter kernel a display that is updated in place once the model is ready (and, for front
ends that render an output once and never update it, such as Voilà, a second line saying the
outcome), elsewhere a line on stdout that is completed then.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from types import TracebackType
from typing import IO, Any

from tmlab.errors import LocalServerError
from tmlab.meta import MODEL_NAME, READY_PREFIX

__all__ = ["NOTICE", "LocalServer", "StartNotice", "health", "start", "started_here"]

NOTICE = (
    f"tmlab: using the local {MODEL_NAME} model "
    "(set TENSORMESH_INFERENCE_API_KEY to use Tensormesh)"
)


class LocalServer:
    """A running local server: ``.base_url`` for clients, ``.stop()`` when done.

    Either a child of this process (``process``, from :func:`start`: it exits with this
    process), or the user's shared server (``shared``, from :func:`ensure_server`: known by
    its ``pid``, it outlives the process that started it).
    """

    def __init__(
        self,
        process: subprocess.Popen[str] | None,
        url: str,
        *,
        api_key: str | None,
        parallel: int = 1,
        pid: int | None = None,
        shared: bool = False,
    ) -> None:
        self.process = process
        self.url = url
        self.api_key = api_key
        self.parallel = parallel
        """Requests it decodes together (``--parallel``)."""
        self.pid = process.pid if process is not None else int(pid or 0)
        """The server's process id."""
        self.shared = shared
        """Whether this is the user's shared server (see :func:`ensure_server`)."""
        self.returncode: int | None = None
        """Its exit status once it has exited and this process reaped it (else None)."""

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
        if self.process is not None:
            self.returncode = self.process.poll()
            return self.returncode is None
        if self.returncode is not None or self.pid <= 0:
            return False
        try:  # this process's child (it spawned the shared server): reap it once it exits
            done, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # another process's: is it there?
            return _alive(self.pid)
        if done == self.pid:
            self.returncode = os.waitstatus_to_exitcode(status)
            return False
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout`` seconds).

        For the shared server this stops it for every process using it.
        """
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout)
            return
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.running:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the server and, if it is this process's child, reap it."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            return
        self._signal(signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while self.running and time.monotonic() < deadline:
            time.sleep(0.01)

    def _signal(self, sig: int) -> None:
        if self.pid > 0 and self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

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
        state = "running" if self.running else f"exited({self.returncode})"
        kind = " shared" if self.shared else ""
        return f"<LocalServer{kind} {self.base_url} pid={self.pid} {state}>"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (of another process: a child is reaped instead, see
    :attr:`LocalServer.running`)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive, and not ours
    return True


class StartNotice:
    """One line of progress: a display updated in place in a Jupyter kernel, else stdout.

    Shows ``"{prefix} — starting …"``; :meth:`done` turns it into ``"{prefix} — {outcome}"``
    (on stdout by completing the line, so a terminal or a log gets one line). In a kernel the
    display carries a small text widget too: front ends that render an output once and never
    apply later updates to it (Voilà, an app built on a notebook) still show the outcome,
    because a widget stays live; saved notebooks and static renderers get the plain text.
    """

    def __init__(self, prefix: str, pending: str = "starting …") -> None:
        self.prefix = prefix
        self._handle: Any = None
        self._widget: Any = None
        display = _kernel_display()
        if display is not None:
            text = f"{prefix} — {pending}"
            self._widget = _text_widget(text)
            self._handle = display(self._bundle(text), raw=True, display_id=True)
        else:
            print(f"{prefix} — {pending}", end="", file=sys.stdout, flush=True)

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


def health(url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """``GET /health``'s JSON body, or None if nothing (or something else) answers."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=timeout) as resp:
            body = json.loads(resp.read(65536))
    except urllib.error.HTTPError as exc:  # something answers, not with a health report
        exc.close()
        return None
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _healthy(url: str) -> bool:
    return health(url) is not None


def _wait_ready(
    proc: subprocess.Popen[str],
    url_box: list[str],
    tail: collections.deque[str],
    *,
    t0: float,
    timeout: float,
    shown: list[StartNotice],
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
            shown.append(StartNotice(f"tmlab: local {MODEL_NAME} model server"))
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
    minimal: bool = False,
    kv_unified: bool = False,
    prompt_cache: bool = False,
) -> LocalServer:
    """Start a local server in a subprocess and wait until ``/health`` answers.

    ``port=None`` picks a free port; ``n_ctx`` sets the context size in tokens (default
    8192); ``max_body_bytes``, ``max_n``, ``max_request_tokens``, ``max_queue`` and
    ``body_timeout`` set what one request may cost (the options of ``tmlab serve``; None: the
    server's default);
    ``logprobs_mode`` the server's default for requests that do not say (``"raw_logprobs"``,
    the default, or ``"processed_logprobs"``); ``parallel=N`` decodes up to N requests together
    (1, the default: one at a time, and the same request gives the same numbers);
    ``minimal`` serves as a server without the optional capabilities (no logprobs, echo or
    continuation; ``n`` = 1), for trying what a notebook does elsewhere; ``kv_unified`` shares
    one KV cache among the slots (llama.cpp's ``--kv-unified``: answers then depend on the
    batch, and the server says so); ``prompt_cache`` reuses the KV cache of a prompt's longest
    common prefix with an earlier one (``--prompt-cache``: ``cached_tokens`` in usage; whether
    it changes the numbers is measured at start, ``/v1/models`` says). Raises
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
    if minimal:
        extra += ["--minimal"]
    if kv_unified:
        extra += ["--kv-unified"]
    if prompt_cache:
        extra += ["--prompt-cache"]
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
    notice: StartNotice | None,
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
    server = LocalServer(proc, url_box[0], api_key=api_key, parallel=parallel)
    if "--minimal" not in args:
        _STARTED[server.base_url.rstrip("/")] = proc
    return server


# The embedded servers (with every capability: not --minimal) this process started, by base URL.
_STARTED: dict[str, subprocess.Popen[str]] = {}


def started_here(base_url: str) -> bool:
    """Whether ``base_url`` is an embedded server with every capability (not ``--minimal``)
    that this process started and that still runs: a client of it is ``embedded``."""
    proc = _STARTED.get(base_url.rstrip("/"))
    return proc is not None and proc.poll() is None
