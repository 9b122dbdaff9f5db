"""``%%tmchat`` live display: redraws per second while tokens arrive at 1,000 a second.

The magic streams an answer into one output through
:class:`tmlab.jupyter.live.LiveAnswer`, whose :class:`~tmlab.jupyter.live.Throttle` bounds the
redraws. Measured inside a real (terminal-less) IPython ``InteractiveShell`` whose display
publisher counts what a notebook front end would receive, so every redraw goes the whole way
(``display_formatter`` → Markdown view → ``publish_display_data``):

1. synthetic: one-token deltas handed to ``LiveAnswer.on_delta`` on a fixed schedule of 1,000
   a second for 3 s, as the client hands them out;
2. end to end, when the magic is installed: ``%%tmchat`` against the loopback server
   (``bench/_loopback.py``) streaming 3,000 one-token chunks at 1,000 a second.

Updates per second = display updates published while streaming ÷ streaming time (the first
display and the final view are not counted). The target is 5–15 a second, both bounds: the
throttle aims at ~10 (``update_interval`` 0.1 s), so more would flood the front end and fewer
(zero, say) would be a live display that does not show the answer growing.
Run alone: ``python bench/run.py --only display``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from _common import Row

RATE = 1000.0
SECONDS = 3.0


def _shell() -> tuple[Any, list[tuple[float, bool]]]:
    """An InteractiveShell whose display publisher records (time, is_update) of each publish."""
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    published: list[tuple[float, bool]] = []

    class Counting(DisplayPublisher):
        def publish(self, data: Any, metadata: Any = None, *args: Any, **kw: Any) -> None:
            assert "text/markdown" in data or "text/plain" in data
            published.append((time.perf_counter(), bool(kw.get("update"))))

    shell = InteractiveShell.instance()
    shell.display_pub = Counting(shell=shell)
    return shell, published


def synthetic(published: list[tuple[float, bool]]) -> Row:
    """LiveAnswer fed one-token deltas at RATE per second for SECONDS."""
    from tmlab.client.stream import Delta
    from tmlab.jupyter.live import LiveAnswer

    live = LiveAnswer()
    live.start()
    published.clear()
    n = int(RATE * SECONDS)
    t0 = time.perf_counter()
    for i in range(n):
        wait = t0 + i / RATE - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        live.on_delta(Delta(0, "x"))
    live.flush()
    elapsed = time.perf_counter() - t0
    updates = sum(1 for _, update in published if update)
    assert live.text == "x" * n
    return Row(
        "%%tmchat live display updates/s at 1,000 tokens/s (LiveAnswer)",
        updates / elapsed,
        "in",
        (5.0, 15.0),
        f"{updates} display updates in {elapsed:.2f} s of {n:,} one-token deltas, "
        "IPython display path",
    )


def magic(shell: Any, published: list[tuple[float, bool]], base_url: str) -> Row | None:
    """``%%tmchat`` end to end against a paced loopback stream; None without the magic."""
    try:
        import tmlab.jupyter.magics  # noqa: F401
    except ImportError:
        return None
    n = int(RATE * SECONDS)
    os.environ["TMLAB_BENCH_KEY"] = "bench-key"
    shell.run_line_magic("load_ext", "tmlab")
    shell.run_line_magic("tmconfig", f"base_url={base_url} model=paced key=env:TMLAB_BENCH_KEY")
    published.clear()
    t0 = time.perf_counter()
    res = shell.run_cell_magic("tmchat", f"--max-tokens {n}", "Count to a thousand.")
    elapsed = time.perf_counter() - t0
    updates = sum(1 for _, update in published if update) - 1  # the final view
    assert res.text == "x" * n, res
    return Row(
        "%%tmchat display updates/s at 1,000 tokens/s (magic, end to end)",
        updates / elapsed,
        "in",
        (5.0, 15.0),
        f"{updates} display updates in {elapsed:.2f} s of a {n:,}-chunk loopback stream",
    )


def run(base_url: str | None = None) -> list[Row]:
    """The synthetic stream, and the magic end to end when it exists and a server is given."""
    shell, published = _shell()
    rows = [synthetic(published)]
    if base_url is not None:
        row = magic(shell, published, base_url)
        if row is not None:
            rows.append(row)
    return rows
