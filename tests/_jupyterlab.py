"""A headless JupyterLab owned by one test: started in its own process group, stopped by pid.

Everything it writes (settings, workspaces, runtime files, IPython profile) stays in a
temporary folder given by the test, never in the user's home. See
``/work/shared/recipes/browser-test.md`` for where the flags come from.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = ["JupyterLab", "write_notebook"]

# Settings that must not leak into the test's kernel: with none of them, tmlab.Client()
# uses the embedded local model.
_CLIENT_ENV = ("TENSORMESH_INFERENCE_API_KEY", "TENSORMESH_SERVERLESS_BASE_URL", "TMLAB_MODEL")


def _descendants(pid: int) -> list[int]:
    """The pids of every process below ``pid`` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")"
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the server is told not to try others)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_notebook(path: Path, cells: list[str]) -> Path:
    """A notebook of code ``cells`` with a kernelspec (else JupyterLab asks for a kernel)."""
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": f"cell-{i}",
                "metadata": {},
                "outputs": [],
                "source": source,
            }
            for i, source in enumerate(cells)
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    return path


class JupyterLab:
    """``with JupyterLab(root, state, env) as lab: page.goto(lab.url("lab/tree/x.ipynb"))``.

    ``root``: the folder it serves; ``state``: a folder for its own files (and its log,
    ``state/jupyterlab.log``); ``env``: extra environment variables for it and its kernels.
    """

    def __init__(
        self,
        root: Path,
        state: Path,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 90,
    ) -> None:
        self.root = root
        self.state = state
        self.extra_env = dict(env or {})
        self.start_timeout = start_timeout
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = state / "jupyterlab.log"
        self._log: IO[bytes] | None = None

    def url(self, path: str = "") -> str:
        """The address of ``path`` on this server."""
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def log(self, tail: int = 4000) -> str:
        """The end of the server's log (for failure messages)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-tail:]
        except OSError:
            return ""

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _CLIENT_ENV}
        home = self.state / "home"
        dirs = {
            "HOME": home,
            "JUPYTER_CONFIG_DIR": self.state / "config",
            "JUPYTER_DATA_DIR": self.state / "data",
            "JUPYTER_RUNTIME_DIR": self.state / "runtime",
            "IPYTHONDIR": self.state / "ipython",
            "JUPYTERLAB_SETTINGS_DIR": self.state / "lab-settings",
            "JUPYTERLAB_WORKSPACES_DIR": self.state / "lab-workspaces",
        }
        for name, folder in dirs.items():
            folder.mkdir(parents=True, exist_ok=True)
            env[name] = str(folder)
        # no "get notified about Jupyter news?" toast over the page
        labconfig = self.state / "config" / "labconfig"
        labconfig.mkdir(parents=True, exist_ok=True)
        (labconfig / "page_config.json").write_text(
            json.dumps(
                {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}
            ),
            encoding="utf-8",
        )
        # the kernel is this venv's python: its scripts first on PATH
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        """Start it and wait until ``/api/status`` answers; RuntimeError with its log if not."""
        self.port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            "--IdentityProvider.token=",
            "--ServerApp.disable_check_xsrf=True",
            f"--ServerApp.root_dir={self.root}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        self._launch(cmd, "JupyterLab", self._status_ok)

    def _status_ok(self) -> bool:
        try:
            with urllib.request.urlopen(self.url("api/status"), timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _launch(self, cmd: list[str], what: str, ready: Callable[[], bool]) -> None:
        """Start ``cmd`` in its own process group (its kernels die with it), logging to
        :attr:`log_path`; return once ``ready()``, else stop it and raise with its log."""
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            cmd,
            cwd=self.root,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise RuntimeError(f"{what} exited with code {code}:\n{self.log()}")
            if ready():
                return
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{what} did not answer within {self.start_timeout:g} s:\n{self.log()}")

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM (it shuts its kernels down), then SIGKILL what is left of it, by pid.

        Kernels run in their own sessions (jupyter_client starts them so), and a kernel may
        have started the local model server: every descendant is noted first and killed by
        pid if still there once JupyterLab has gone.
        """
        proc = self.process
        if proc is not None:
            below = _descendants(proc.pid) if proc.poll() is None else []
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout)
            # The group is the one start_new_session made for it (pgid == its pid): kernels
            # and the local model server a kernel started go too, even after a hang.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
            for pid in below:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> JupyterLab:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def api(self, path: str) -> Any:
        """GET a JSON endpoint of the server's REST API."""
        with urllib.request.urlopen(self.url(path), timeout=10) as r:
            return json.loads(r.read().decode("utf-8"))
