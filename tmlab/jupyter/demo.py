"""``tmlab demo``: serve a notebook as a web app with Voilà — by default the Explorer app.

::

    tmlab demo                          # the packaged explorer-app.ipynb on http://127.0.0.1:8866/
    tmlab demo lesson.ipynb --host 0.0.0.0 --port 8866     # a notebook of one's own, for a room
    tmlab demo --projector              # large type, each lesson's controls only

Voilà runs the notebook in a fresh kernel for every page that is opened and shows its
Markdown and widgets, never its code; a browser can only talk to the widgets (Voilà refuses
any code sent by a page), so the page can be projected in class or opened by students.

The model: with an API key or a base URL configured (``TENSORMESH_INFERENCE_API_KEY``,
``TENSORMESH_SERVERLESS_BASE_URL``, or ``--base-url``) every page talks to that server.
Otherwise ``tmlab demo`` starts one embedded local model server before serving and points
every page's kernel at it (``TENSORMESH_SERVERLESS_BASE_URL`` in their environment): a page
would otherwise start a model of its own (about 400 MB each), so a room of 30 browsers would
start 30. The server is stopped with the app.

Projector mode (``--projector``) sets :data:`ENV_PROJECTOR` to ``1`` in the pages' kernels;
the packaged app then builds ``Explorer(large=True)``: larger type and token view, and only
the controls the chosen lesson is about, legible from the back of a room.

The default notebook ships inside the package (``tmlab/apps/explorer-app.ipynb``, see
:func:`app_notebook`), so ``tmlab demo`` works from any install of ``tmlab[demo]``; the
repository keeps the same file as ``notebooks/explorer-app.ipynb`` (a test keeps them equal).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import socket
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from tmlab.client.settings import check_setting
from tmlab.errors import LocalServerError, ParameterError

if TYPE_CHECKING:
    from tmlab.client.local import LocalServer

__all__ = [
    "APP_NOTEBOOK",
    "DEFAULT_PORT",
    "ENV_PROJECTOR",
    "app_notebook",
    "build_parser",
    "demo",
    "voila_argv",
]

APP_NOTEBOOK = "explorer-app.ipynb"
"""The file name of the packaged app notebook (in ``tmlab/apps/``)."""

DEFAULT_PORT = 8866
"""Voilà's own default port."""

ENV_PROJECTOR = "TMLAB_PROJECTOR"
"""Set to ``1`` by ``tmlab demo --projector`` for the pages' kernels (the app reads it)."""

_INSTALL_HINT = "install it with: pip install 'tmlab[demo]' (or make lab / make test)"


class DemoError(Exception):
    """Something the user can fix before the app is served (a bad option, a missing file)."""


def app_notebook() -> Path:
    """The path of the packaged Explorer app notebook, ``tmlab/apps/explorer-app.ipynb``."""
    return Path(str(resources.files("tmlab.apps").joinpath(APP_NOTEBOOK)))


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The options of ``tmlab demo``."""
    p = parser or argparse.ArgumentParser(prog="tmlab demo", description=__doc__)
    p.add_argument(
        "notebook",
        nargs="?",
        default=None,
        metavar="NOTEBOOK",
        help="the notebook to serve (default: the packaged Explorer app, explorer-app.ipynb)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: a room)",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument(
        "--base-url",
        default=None,
        help="the chat-completions server every page talks to, e.g. a 'tmlab serve' "
        "(default: the configured one, else one local model server started for the app)",
    )
    p.add_argument(
        "--no-browser", action="store_true", help="do not open the app in a browser here"
    )
    p.add_argument(
        "--projector",
        action="store_true",
        help="projector mode: large type and token view, only each lesson's own controls",
    )
    p.add_argument(
        "--show-tracebacks",
        action="store_true",
        help="show a failing cell's traceback on the page (Voilà hides it by default)",
    )
    return p


def voila_argv(
    notebook: Path,
    host: str,
    port: int,
    *,
    open_browser: bool = True,
    show_tracebacks: bool = False,
) -> list[str]:
    """The command-line arguments given to Voilà for one notebook.

    No token (like Voilà's own default: the page runs no code a browser sends), the port
    exactly as asked (``port_retries=0``: students were told the address), and nothing that
    needs root-only flags (standalone Voilà, unlike JupyterLab, runs as root as it is).
    """
    argv = [
        str(notebook),
        f"--Voila.ip={host}",
        f"--Voila.port={port}",
        "--Voila.port_retries=0",
    ]
    if not open_browser:
        argv.append("--no-browser")
    if show_tracebacks:
        argv.append("--VoilaConfiguration.show_tracebacks=True")
    return argv


def _check_notebook(name: str | None) -> Path:
    path = app_notebook() if name is None else Path(name).expanduser()
    if path.suffix != ".ipynb":
        raise DemoError(f"NOTEBOOK={name!r} is not a notebook: give a .ipynb file")
    if not path.is_file():
        if name is None:  # pragma: no cover - a broken install
            raise DemoError(f"the packaged app notebook is missing ({path}): reinstall tmlab")
        raise DemoError(f"NOTEBOOK={name!r}: no such file")
    return path.resolve()


def _check_port(host: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise DemoError(f"--port={port} is out of range 1..65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Voilà's server does
        try:
            s.bind((host, port))
        except OSError as exc:
            raise DemoError(
                f"cannot listen on --host={host} --port={port}: {exc.strerror or exc} "
                "(a port in use: choose another with --port)"
            ) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_voila() -> None:
    try:
        import voila.app  # noqa: F401
    except ImportError:
        raise DemoError(f"Voilà is not installed: {_INSTALL_HINT}") from None


def _say(line: str) -> None:
    print(f"tmlab demo: {line}", flush=True)


def demo(args: argparse.Namespace) -> int:
    """Serve ``args.notebook`` with Voilà until interrupted; return an exit status."""
    try:
        notebook = _check_notebook(args.notebook)
        _check_port(args.host, args.port)
        _check_voila()
        base_url = None if args.base_url is None else check_setting("base_url", args.base_url)
    except DemoError as exc:
        print(f"tmlab demo: error: {exc}", file=sys.stderr)
        return 2
    except ParameterError as exc:
        print(f"tmlab demo: error: --base-url: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "projector", False):
        os.environ[ENV_PROJECTOR] = "1"  # the kernels Voilà starts inherit it
        _say("projector mode: large type, each lesson's own controls")
    try:
        server = _model_server(base_url)
    except LocalServerError as exc:
        print(f"tmlab demo: error: {exc}", file=sys.stderr)
        return 1
    try:
        shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(args.host, args.host)
        shown = f"[{shown}]" if ":" in shown and not shown.startswith("[") else shown
        _say(f"serving {notebook.name} at http://{shown}:{args.port}/ (Ctrl-C stops it)")
        if not _is_loopback(args.host):
            _say(
                f"listening on {args.host}: anyone who reaches this machine on port "
                f"{args.port} can open the app and send requests (never code)"
            )
        return _run_voila(
            voila_argv(
                notebook,
                args.host,
                args.port,
                open_browser=not args.no_browser,
                show_tracebacks=args.show_tracebacks,
            )
        )
    finally:
        if server is not None:
            server.stop()


def _model_server(base_url: str | None) -> LocalServer | None:
    """Point the pages' kernels at one model server; the one started here to stop at the
    end, if any (none: the shared local server outlives the app)."""
    from tmlab.client.settings import ENV_BASE_URL, resolve_settings

    if base_url is not None:
        os.environ[ENV_BASE_URL] = base_url  # the kernels Voilà starts inherit it
        _say(f"every page talks to {base_url}")
        return None
    settings = resolve_settings()
    if not settings.local:
        key = " (with the API key from the environment)" if settings.api_key else ""
        _say(f"every page talks to {settings.base_url}{key}")
        return None
    from tmlab.client import local

    # The user's shared server (one calm progress line on stdout), loaded before the first
    # page opens. The pages' kernels find it themselves, as every kernel does, and so also
    # find its successor should it stop (idle in a long break, killed); it outlives the app.
    server = local.ensure_server()
    _say(f"every page shares the local model server at {server.base_url} (pid {server.pid})")
    return None


def _run_voila(argv: list[str]) -> int:
    """Run Voilà in this process until SIGTERM or Ctrl-C (it then shuts its kernels down)."""
    from voila.app import Voila

    app = Voila()
    app.initialize(argv)
    with contextlib.suppress(KeyboardInterrupt):
        app.start()
    return 0
