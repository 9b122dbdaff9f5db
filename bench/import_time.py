"""``import tmlab`` against ``import httpx``, each in a fresh interpreter.

Each sample is a new ``python -c`` process that times the import statement alone
(``time.perf_counter`` around it: interpreter start-up is not counted, and the two imports
never share a module cache). Samples of the two alternate; the medians are compared.

Run alone: ``python bench/run.py --only import``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys

from _common import Row, fmt_time

CODE = "import time; t = time.perf_counter(); import {0}; print(time.perf_counter() - t)"


def import_seconds(module: str) -> float:
    """Seconds ``import module`` takes in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", CODE.format(module)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def run(samples: int = 9) -> list[Row]:
    """Median import time of tmlab ÷ that of httpx."""
    times: dict[str, list[float]] = {"tmlab": [], "httpx": []}
    for module in ("tmlab", "httpx"):  # warm the file-system cache and .pyc files
        import_seconds(module)
    for i in range(samples):
        for module in ("tmlab", "httpx") if i % 2 else ("httpx", "tmlab"):
            times[module].append(import_seconds(module))
    tm, hx = statistics.median(times["tmlab"]), statistics.median(times["httpx"])
    return [
        Row(
            "import tmlab vs import httpx",
            tm / hx,
            "<=",
            2.0,
            f"import tmlab {fmt_time(tm)} / import httpx {fmt_time(hx)}, fresh processes, "
            f"median of {samples}",
        )
    ]
