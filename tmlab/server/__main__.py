"""``python -m tmlab.server``: load the model, bind a socket, serve until told to stop.

Options: where to listen, the model, its context, and what one request may cost
(``--max-body-bytes``, ``--max-n``, ``--max-request-tokens``, ``--max-queue``,
``--body-timeout``; see
:mod:`tmlab.server.limits`).

Prints one line ``TMLAB_SERVER_READY http://HOST:PORT`` on stdout once it answers, which is
how :func:`tmlab.client.local.start` learns the port when it asked for port 0. With
``--parent-pid`` it exits when that process is gone, so a crashed kernel leaves no server
(and only then: a parent that is PID 1, as in a container, is a parent like any other).
"""

from __future__ import annotations

import argparse
import fcntl
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tmlab.meta import READY_PREFIX, forget_state, write_state
from tmlab.server.limits import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_N,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_REQUEST_TOKENS,
    Limits,
)
from tmlab.server.stats import Stats


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The server's command-line options (shared with ``tmlab serve``)."""
    p = parser or argparse.ArgumentParser(
        prog="python -m tmlab.server", description="Serve the local model."
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    p.add_argument("--model-path", default=None, help="a GGUF file (default: SmolLM2-135M)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("TMLAB_SERVER_API_KEY"),
        metavar="KEY | env:VAR",
        help="require 'Authorization: Bearer KEY' for the model's routes; env:VAR reads the key "
        "from the environment variable VAR (so that it is not on the command line, where ps "
        "shows it); required when --host is not a loopback address",
    )
    p.add_argument(
        "--parallel",
        type=_at_least(1),
        default=1,
        metavar="N",
        help="decode up to N requests together in one batch (continuous batching; default 1: "
        "one at a time). Each slot keeps its own KV cache of --n-ctx tokens. Whether an "
        "answer's numbers are the same as with one slot is measured on the loaded model at "
        "start (/v1/models says batch_invariant and what was compared)",
    )
    p.add_argument(
        "--kv-unified",
        action="store_true",
        help="with --parallel: one KV cache shared by the slots (llama.cpp's --kv-unified). "
        "An answer's numbers then depend on what else is decoded with it; the start-up "
        "self-test shows it and the server says so",
    )
    p.add_argument(
        "--prompt-cache",
        action="store_true",
        help="reuse the KV cache of the longest common token prefix with an earlier prompt "
        "(per slot; never across prompt_cache_isolation_key values) and report it as "
        "usage.prompt_tokens_details.cached_tokens. Whether reuse changes the numbers is "
        "measured on the loaded model at start (/v1/models says prompt_cache.exact)",
    )
    p.add_argument("--n-ctx", type=int, default=8192, help="context size in tokens")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for llama.cpp")
    limits = p.add_argument_group(
        "limits", "what one request may cost (a server shared by a room stays responsive)"
    )
    limits.add_argument(
        "--max-body-bytes",
        type=_at_least(1),
        default=DEFAULT_MAX_BODY_BYTES,
        metavar="N",
        help=f"larger request bodies get 413, unread (default {DEFAULT_MAX_BODY_BYTES}: 4 MiB)",
    )
    limits.add_argument(
        "--max-n",
        type=_at_least(1),
        default=DEFAULT_MAX_N,
        metavar="N",
        help=f"most choices (n) per request (default {DEFAULT_MAX_N})",
    )
    limits.add_argument(
        "--max-request-tokens",
        type=_at_least(1),
        default=DEFAULT_MAX_REQUEST_TOKENS,
        metavar="N",
        help="most tokens one request may generate, n x max_tokens "
        f"(default {DEFAULT_MAX_REQUEST_TOKENS})",
    )
    limits.add_argument(
        "--max-queue",
        type=_at_least(0),
        default=DEFAULT_MAX_QUEUE,
        metavar="N",
        help="most requests waiting for the model; beyond, 503 with Retry-After "
        f"(default {DEFAULT_MAX_QUEUE})",
    )
    limits.add_argument(
        "--body-timeout",
        type=_seconds,
        default=DEFAULT_BODY_TIMEOUT,
        metavar="S",
        help="a request body not received in full within S seconds gets 408 "
        f"(default {DEFAULT_BODY_TIMEOUT:g})",
    )
    p.add_argument(
        "--logprobs-mode",
        choices=("raw_logprobs", "processed_logprobs"),
        default="raw_logprobs",
        help="what logprobs describe when a request does not say (logprobs_mode): the model's "
        "raw distribution (default) or the one each token was drawn from",
    )
    p.add_argument(
        "--minimal",
        action="store_true",
        help="serve as a server without the optional capabilities: logprobs, echo and the "
        "extensions (continuing a final assistant message) ignored, n = 1 only (for testing "
        "that notebooks say what such a server lacks)",
    )
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--idle-exit",
        type=_seconds,
        default=None,
        metavar="S",
        help="exit after S seconds without a model request (the shared server: tmlab.client.local)",
    )
    # the shared server's state file and instance (written by tmlab.client.local's launcher)
    p.add_argument("--state-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--instance", default=None, help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="no progress or access log")
    return p


def _at_least(least: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum, {least}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{value:g} is not a positive number of seconds")
    return value


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def parent_gone(pid: int, direct: bool) -> bool:
    """Whether process ``pid``, the one this server serves, has ended.

    ``direct``: ``pid`` was this process's parent when it started; then a new parent means
    ``pid`` ended, even while it lingers as a zombie that nobody reaped yet. Being a child of
    PID 1 says nothing by itself: in a container the parent may well be PID 1.
    """
    if direct and os.getppid() != pid:
        return True
    return not _alive(pid)


def _watch_parent(
    pid: int,
    server: Any,
    *,
    direct: bool,
    interval: float = 1.0,
    grace: float = 5.0,
    exit: Callable[[int], object] = os._exit,
) -> None:
    """Ask ``server`` to stop once ``pid`` has ended; exit for good ``grace`` seconds later.

    ``direct``: see :func:`parent_gone`.
    """
    while not parent_gone(pid, direct):
        time.sleep(interval)
    server.should_exit = True
    time.sleep(grace)
    exit(0)


def serve(args: argparse.Namespace) -> int:
    """Load the model and serve until interrupted; return an exit status."""
    import uvicorn

    from tmlab.server.app import create_app
    from tmlab.server.engine import Engine

    # Taken first: the parent may end while the model loads.
    direct = args.parent_pid is not None and os.getppid() == args.parent_pid
    try:
        api_key = _api_key(args.api_key)
    except ValueError as exc:
        print(f"tmlab serve: {exc}", file=sys.stderr)
        return 2
    if api_key is None and not _loopback(args.host):
        print(
            f"tmlab serve: --host {args.host} lets other machines in: set a key with "
            "--api-key env:VAR (students then use %tmconfig key=env:VAR), or serve on "
            "127.0.0.1",
            file=sys.stderr,
        )
        return 2
    t0 = time.perf_counter()
    if not args.quiet:
        print("loading the model …", file=sys.stderr, flush=True)
    engine = Engine(args.model_path, n_ctx=args.n_ctx, n_threads=args.threads)
    engine.logprobs_mode = args.logprobs_mode
    if args.parallel > 1:
        from tmlab.server.batch import BatchEngine
        from tmlab.server.selftest import measure

        batch = BatchEngine(engine, args.parallel, unified=args.kv_unified)
        batch.invariance = measure(engine, batch)
        engine.batch = batch
        if not args.quiet:
            print(f"batching: {batch.invariance.describe()}", file=sys.stderr, flush=True)
    if args.prompt_cache:
        from tmlab.server.prompt_cache import PromptCache
        from tmlab.server.selftest import measure_prompt_cache

        engine.prompt_cache = PromptCache()
        check = measure_prompt_cache(engine)
        engine.prompt_cache = PromptCache(check=check)  # counts start at 0
        if not args.quiet:
            print(f"prompt cache: {check.describe()}", file=sys.stderr, flush=True)
    if not args.quiet:
        print(
            f"loaded {engine.model_name} ({engine.model_path.name}) in "
            f"{time.perf_counter() - t0:.1f}s",
            file=sys.stderr,
            flush=True,
        )
    limits = Limits(
        max_body_bytes=args.max_body_bytes,
        max_n=args.max_n,
        max_request_tokens=args.max_request_tokens,
        max_queue=args.max_queue,
        body_timeout=args.body_timeout,
    )
    log = None if args.quiet else _log_line
    app = create_app(
        engine,
        api_key=api_key,
        close_engine=True,
        limits=limits,
        log=log,
        instance=args.instance,
        minimal=args.minimal,
    )
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        print(f"cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        log_level="warning" if args.quiet else "info",
        access_log=False,  # the app logs one line per request itself, with its tokens
        timeout_graceful_shutdown=3,
        backlog=256,
    )
    server = uvicorn.Server(config)
    if args.parent_pid:
        threading.Thread(
            target=_watch_parent,
            args=(args.parent_pid, server),
            kwargs={"direct": direct},
            daemon=True,
        ).start()
    shown = host if ":" not in host else f"[{host}]"

    url = f"http://{shown}:{port}"
    state = Path(args.state_file) if args.state_file else None

    def announce() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.02)
        if server.started:
            print(f"{READY_PREFIX}{url}", flush=True)
            if state is not None:
                write_state(state, url, args.instance)

    threading.Thread(target=announce, daemon=True).start()
    if args.idle_exit is not None:
        threading.Thread(
            target=_exit_when_idle,
            args=(app.stats, server, args.idle_exit, state, args.instance),
            daemon=True,
        ).start()
    try:
        server.run(sockets=[sock])
    finally:
        if state is not None:
            forget_state(state, args.instance)
    return 0


def _exit_when_idle(
    stats: Stats, server: Any, idle_s: float, state: Path | None, instance: str | None
) -> None:
    """Stop ``server`` once no model request has come for ``idle_s`` seconds.

    With a state file, under its lock (a launcher holds it while it checks the server, so
    none is handed this server's URL as it goes): the file is removed first, then the
    server stops; the lock is held until the process ends.
    """
    while True:
        time.sleep(min(5.0, idle_s / 4))
        if stats.idle_s() < idle_s:
            continue
        if state is not None:
            lock = os.open(state.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a launcher is looking at this server right now
                os.close(lock)
                continue
            if stats.idle_s() < idle_s:
                os.close(lock)
                continue
            forget_state(state, instance)
            # ``lock`` stays open, so held, until this process ends: a launcher waiting for
            # it then finds no state file and starts the next server
        server.should_exit = True
        return


def _api_key(value: str | None) -> str | None:
    """The key given as ``--api-key``: the text itself, or ``env:VAR``'s value."""
    if not value:
        return None
    if value.startswith("env:"):
        name = value[4:]
        key = os.environ.get(name)
        if not key:
            raise ValueError(f"--api-key {value}: the environment variable {name} is not set")
        return key
    return value


def _loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def _log_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tmlab.server``."""
    return serve(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
