"""What every benchmark shares: interleaved timing, the result row, the machine, the table.

A benchmark is a function returning a list of :class:`Row`; ``bench/run.py`` runs them all
and prints one table. Runs of competing contenders are interleaved (A, B, C, A, B, C …,
rotating who goes first) and medians taken, so that noise from other processes on a shared
2-core machine hits every contender alike.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Row:
    """One line of the table: a measured number, its target and what it was computed from.

    ``op`` is ``"<="``, ``"<"``, ``">="``, ``"in"`` (``target`` is ``(low, high)``, both
    bounds included) or ``""`` (no target: shown for information).
    """

    name: str
    value: float
    op: str
    target: float | tuple[float, float] | None
    detail: str
    unit: str = ""

    @property
    def passed(self) -> bool | None:
        """True/False against the target; None when there is no target. A row that was not
        measured (NaN: its benchmark crashed) misses, target or not."""
        if math.isnan(self.value):
            return False
        if self.target is None or not self.op:
            return None
        if self.op == "in":
            assert isinstance(self.target, tuple)
            low, high = self.target
            return low <= self.value <= high
        assert not isinstance(self.target, tuple)
        return {
            "<=": self.value <= self.target,
            "<": self.value < self.target,
            ">=": self.value >= self.target,
        }[self.op]


class Medians(dict[str, float]):
    """Median per contender; ``rounds`` says how many rounds were run."""

    rounds: int = 0

    @property
    def samples(self) -> str:
        """``median of N``, or a warning when one round gave the figure: not a median."""
        if self.rounds == 1:
            return "ONE sample only (not a median: the budget ran out)"
        return f"median of {self.rounds}"


def _interleave(
    contenders: dict[str, Callable[[], float]], rounds: int, budget: float | None
) -> Medians:
    # Round by round, rotating who goes first; after ``budget`` seconds no new round starts
    # (a crowded machine then gets fewer samples rather than a run without end).
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    start = time.perf_counter()
    done = 0
    for r in range(rounds):
        if done and budget is not None and time.perf_counter() - start > budget:
            break
        for name in names[r % len(names) :] + names[: r % len(names)]:
            samples[name].append(contenders[name]())
        done += 1
    out = Medians({name: statistics.median(s) for name, s in samples.items()})
    out.rounds = done
    return out


def interleaved(
    contenders: dict[str, Callable[[], Any]],
    rounds: int,
    batch: int = 1,
    budget: float | None = None,
) -> Medians:
    """Median seconds per call of each contender, batches interleaved round by round."""

    def timed(fn: Callable[[], Any]) -> Callable[[], float]:
        def run() -> float:
            t0 = time.perf_counter()
            for _ in range(batch):
                fn()
            return (time.perf_counter() - t0) / batch

        return run

    return _interleave({name: timed(fn) for name, fn in contenders.items()}, rounds, budget)


def interleaved_values(
    contenders: dict[str, Callable[[], float]], rounds: int, budget: float | None = None
) -> Medians:
    """Median of the numbers each contender returns (e.g. a rate), calls interleaved."""
    return _interleave(contenders, rounds, budget)


def fmt_time(seconds: float) -> str:
    """A duration with a unit that keeps three significant digits readable."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def machine() -> str:
    """CPU model, cores and Python version of this machine, one line."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.release()}"
    )


def commit() -> str:
    """The commit measured, e.g. ``9e0853e``; ``9e0853e + uncommitted changes`` when the
    working tree (the README, where the tables go, aside) differs from it; ``unknown commit``
    outside a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            # the README is where the tables go: its changes are not the code measured
            [
                "git",
                "-C",
                root,
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!README.md",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown commit"
    return f"{head} + uncommitted changes" if dirty else head


def _target(row: Row) -> str:
    if row.target is None or not row.op:
        return "—"
    if isinstance(row.target, tuple):
        low, high = row.target
        return f"{low:g}–{high:g}{row.unit}"
    op = {"<=": "≤", "<": "<", ">=": "≥"}[row.op]
    return f"{op} {row.target:g}{row.unit}"


def _mark(row: Row) -> str:
    passed = row.passed
    return "info" if passed is None else ("pass" if passed else "MISS")


def table(rows: list[Row]) -> str:
    """The rows as one Markdown table (pastes into the README as it is)."""
    head = ("benchmark", "measured", "target", "", "from")
    body = [
        (
            r.name,
            "—" if math.isnan(r.value) else f"{r.value:.3g}{r.unit}",
            _target(r),
            _mark(r),
            r.detail,
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]

    def fmt(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(head), rule, *(fmt(line) for line in body)])


def say(message: str) -> None:
    """Progress on stderr, so that stdout holds only the result."""
    print(message, file=sys.stderr, flush=True)


README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


def write_readme(
    path: str, block: str, markers: tuple[str, str] = (README_START, README_END)
) -> None:
    """Put ``block`` between the README's ``markers`` (the bench's by default), replacing what
    was there.

    ``make bench`` writes its table into the README itself, so that the README shows the table
    as measured (``bench/probe_tables.py`` does the same for the probe's tables). Raises
    ``ValueError`` when the markers are not there exactly once, in order.
    """
    first, last = markers
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.count(first) != 1 or text.count(last) != 1:
        raise ValueError(f"{path} must hold {first} and {last} once each")
    start = text.index(first) + len(first)
    end = text.index(last)
    if end < start:
        raise ValueError(f"{last} comes before {first} in {path}")
    new = text[:start] + "\n" + block.strip("\n") + "\n" + text[end:]
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)
