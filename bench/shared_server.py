"""Two kernels, one model (issue 19): the shared local server against two servers side by side.

Each "kernel" is a thread with its own HTTP client (the server does not know the difference);
every request is 128 tokens at temperature 0.8 with ``ignore_eos``, distinct prompts.

* shared: the server :func:`tmlab.local.ensure_server` starts (its default slots), one request
  alone, then one from each of two clients at once; the aggregate (tokens of both ÷ wall time
  until the last answer) ÷ the lone request's tokens/s. Target ≥ 0.9: a second kernel costs
  the first nothing.
* before: what every kernel did until then, a server of its own (two ``--parallel 1``
  servers), the same two requests at once, aggregate ÷ one alone on one of them: information
  (0.12–0.22 measured when the issue was filed).

* memory: the resident size (``VmRSS``) of the shared server and of a one-slot server after
  the same requests, for the README's memory trade-off (information).

Rounds alternate between the two set-ups. Run alone: ``python bench/run.py --only shared``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from _common import Row, say

import tmlab.local
from tmlab.meta import MODEL_NAME

TOKENS = 128
ROUNDS = 3


def _one(url: str, tag: str) -> tuple[float, float, int]:
    body: dict[str, Any] = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": f"Write about the sea ({tag})."}],
        "max_tokens": TOKENS,
        "temperature": 0.8,
        "ignore_eos": True,
    }
    with httpx.Client(timeout=600) as client:
        t0 = time.perf_counter()
        r = client.post(url + "/chat/completions", json=body)
        r.raise_for_status()
        return t0, time.perf_counter(), int(r.json()["usage"]["completion_tokens"])


def _ratio(alone_url: str, pair: tuple[str, str], tag: str) -> float:
    """Aggregate tokens/s of two requests at once ÷ one request alone."""
    t0, t1, n = _one(alone_url, f"{tag} alone")
    alone = n / (t1 - t0)
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(_one, pair, (f"{tag} a", f"{tag} b")))
    together = sum(n for _, _, n in done) / (
        max(t1 for _, t1, _ in done) - min(t0 for t0, _, _ in done)
    )
    return together / alone


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (Linux ``/proc``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def run() -> list[Row]:
    """The two rows: shared (target ≥ 0.9) and two servers (information)."""
    folder = tempfile.mkdtemp(prefix="tmlab-bench-runtime-")
    os.environ["TMLAB_RUNTIME_DIR"] = folder
    shared = tmlab.local.ensure_server()
    first = tmlab.local.start(quiet=True)
    second = tmlab.local.start(quiet=True)
    try:
        for url in (shared.base_url, first.base_url, second.base_url):  # warm-up
            _one(url, "warm-up")
        ratios: dict[str, list[float]] = {"shared": [], "two": []}
        for i in range(ROUNDS):
            say(f"  round {i + 1}/{ROUNDS}")
            pair = (shared.base_url, shared.base_url)
            ratios["shared"].append(_ratio(shared.base_url, pair, f"s{i}"))
            pair = (first.base_url, second.base_url)
            ratios["two"].append(_ratio(first.base_url, pair, f"t{i}"))
        memory = (rss_mb(shared.pid), rss_mb(first.process.pid if first.process else 0))
    finally:
        first.stop()
        second.stop()
        tmlab.local.stop_shared()
        os.rmdir(folder) if not os.listdir(folder) else None
    s, t = statistics.median(ratios["shared"]), statistics.median(ratios["two"])
    detail = f"median of {ROUNDS} rounds, {TOKENS} tokens each, {shared.parallel} slots"
    return [
        Row(
            "resident memory, shared server ÷ one-slot server",
            memory[0] / memory[1],
            ">=",
            None,
            f"information: {memory[0]:.0f} MB ({shared.parallel} slots) / {memory[1]:.0f} MB "
            "(VmRSS after the same requests; 8,192-token context per slot)",
        ),
        Row(
            "two kernels at once, aggregate tokens/s ÷ one alone (one shared server)",
            s,
            ">=",
            0.9,
            f"{detail}; rounds {', '.join(f'{r:.2f}' for r in ratios['shared'])}",
        ),
        Row(
            "two kernels at once, aggregate ÷ one alone (a server each, as before)",
            t,
            ">=",
            None,
            f"information; rounds {', '.join(f'{r:.2f}' for r in ratios['two'])}",
        ),
    ]
