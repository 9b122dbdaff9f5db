"""Run every tmlab benchmark and print one table of ratios measured side by side.

    python bench/run.py                  # everything (`make bench`), a few minutes
    python bench/run.py --only client,sse

Each benchmark lives in its own module and returns rows (:class:`_common.Row`): the measured
number, its target, pass or MISS, and what it was computed from. Peers are measured in the
same run, interleaved with tmlab. The machine goes above the table; the table is Markdown.
Progress goes to stderr, the result to stdout. A run of every benchmark also writes the same
text into README.md, between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` (not with
``--only`` or ``--no-readme``): the README's Performance table is the table as measured.

Benchmarks never write into your history (``TMLAB_HISTORY=off`` for the run; one row
measures a temporary history file on purpose) and never reach a remote server (the API key
variable is removed; every server is on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack

from _common import Row, commit, machine, say, table, write_readme

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "README.md")

# name → (what it measures, the rows it fills when it fails)
BENCHMARKS: dict[str, tuple[str, list[tuple[str, str, float | tuple[float, float] | None]]]] = {
    "client": (
        "non-streaming client overhead",
        [
            ("client overhead vs raw httpx (non-streaming)", "<=", 1.05),
            ("client overhead vs openai SDK (non-streaming)", "<=", 0.8),
        ],
    ),
    "stream": (
        "streamed request",
        [("streamed request vs raw httpx line parsing", "<=", 1.2)],
    ),
    "sse": ("SSE parsing", [("SSE parse speed-up over openai SDK", ">=", 1.5)]),
    "frames": (
        "logprobs_frame",
        [
            ("logprobs_frame vs frame from a list of dicts", "<=", 1.0),
            ("logprobs_frame, absolute", "<", 0.2),
        ],
    ),
    "parse": (
        "ChatResult parsing",
        [
            ("ChatResult from a logprobs response, absolute", "<=", 0.1),
            ("ChatResult vs json.loads of the same body", "<=", 1.0),
        ],
    ),
    "trace": (
        "sampler trace cost",
        [
            (
                "sampler trace (64 positions × 50 candidates) vs the same request without it",
                "<=",
                1.1,
            )
        ],
    ),
    "stepper": (
        "tmlab.Stepper (loads the model)",
        [
            ("Stepper step ÷ a plain one-token continuation request", "<=", 1.2),
            ("Stepper slider redraw, no request (50 candidates × 8 stages), ms", "<=", 50.0),
        ],
    ),
    "sweep": (
        "sweep efficiency",
        [
            (
                "sweep vs bare httpx.AsyncClient + asyncio.gather (64 requests, concurrency 16, "
                "200 ms server)",
                ">=",
                0.95,
            )
        ],
    ),
    "llamacpp": (
        "embedded server vs llama.cpp's own server (three servers: a few minutes)",
        [
            ("one stream tokens/s, tmlab --parallel 8 vs llama.cpp server", ">=", 0.95),
            ("8 concurrent aggregate tokens/s, tmlab --parallel 8 vs llama.cpp server", ">=", 1.0),
        ],
    ),
    # in-process peers (llama-cpp-python's own loop): for information, the headline server
    # rows are the llama.cpp-server ones above
    "server": (
        "embedded server tokens/s (loads the model: about a minute)",
        [
            ("embedded server tokens/s vs direct llama.cpp, without logprobs", "", None),
            ("embedded server tokens/s vs direct llama.cpp, with logprobs (top 5)", "", None),
        ],
    ),
    "scoring": (
        "score() and processed logprobs (loads the model twice: about a minute)",
        [
            ("score() tokens/s vs llama.cpp logits_all in-process", ">=", 0.9),
            ("processed vs raw logprobs, time of the same sampled request", "<=", 1.1),
        ],
    ),
    "import": ("import time", [("import tmlab vs import httpx", "<=", 2.0)]),
    "branch": (
        "branching on the embedded server (loads the model)",
        [
            ("branch vs a fresh request with the same prompt + prefix tokens", "<=", 1.1),
            ("continuations(depth=3, width=3): requests made", "<=", 13),
        ],
    ),
    "parallel": (
        "--parallel 8 vs --parallel 1 (two servers: several minutes)",
        [
            ("single-request tokens/s, --parallel 8 alone vs --parallel 1", ">=", 0.95),
            ("aggregate tokens/s at 8 concurrent, --parallel 8 vs --parallel 1", ">=", 1.7),
        ],
    ),
    "prompt_cache": (
        "--prompt-cache: time to first token, prefix cached vs not (one server)",
        [("TTFT of a ~1,500-token prompt, not cached ÷ prefix cached (--prompt-cache)", ">=", 5.0)],
    ),
    "shared": (
        "two kernels on the shared local server vs a server each (three servers)",
        [
            ("two kernels at once, aggregate tokens/s ÷ one alone (one shared server)", ">=", 0.9),
        ],
    ),
    "display": (
        "%%tmchat display updates",
        [("%%tmchat live display updates/s at 1,000 tokens/s", "in", (5.0, 15.0))],
    ),
}


def main() -> None:
    """Parse arguments, run the chosen benchmarks, print the machine and the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated subset of: {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--no-readme",
        action="store_true",
        help="do not write the table into README.md (a run of every benchmark does)",
    )
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")

    os.environ["TMLAB_HISTORY"] = "off"
    os.environ.pop("TENSORMESH_INFERENCE_API_KEY", None)
    os.environ.pop("TENSORMESH_SERVERLESS_BASE_URL", None)

    import _loopback

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    rows: list[Row] = []
    with ExitStack() as stack:
        servers: dict[float, str] = {}

        def loopback(delay: float = 0.0) -> str:
            if delay not in servers:
                servers[delay] = stack.enter_context(_loopback.server(delay))
            return servers[delay]

        jobs: dict[str, Callable[[], list[Row]]] = {
            "client": lambda: __import__("client_overhead").requests(loopback()),
            "stream": lambda: __import__("client_overhead").streaming(loopback()),
            "sse": lambda: __import__("client_overhead").sse(),
            "frames": lambda: __import__("frames_speed").run(),
            "parse": lambda: __import__("parse_speed").run(),
            "trace": lambda: __import__("trace_cost").run(),
            "stepper": lambda: __import__("stepper").run(),
            "sweep": lambda: __import__("sweep_efficiency").run(loopback(0.2)),
            "llamacpp": lambda: __import__("llamacpp_server").run(),
            "server": lambda: __import__("server_overhead").run(),
            "scoring": lambda: __import__("scoring_speed").run(),
            "import": lambda: __import__("import_time").run(),
            "branch": lambda: __import__("branch_cost").run(),
            "parallel": lambda: __import__("parallel").run(),
            "prompt_cache": lambda: __import__("prompt_cache").run(),
            "shared": lambda: __import__("shared_server").run(),
            "display": lambda: __import__("display_rate").run(loopback()),
        }
        for name in BENCHMARKS:
            if name not in chosen:
                continue
            label, expected = BENCHMARKS[name]
            say(f"[{time.perf_counter() - started:5.0f} s] {label} …")
            try:
                rows.extend(jobs[name]())
            except Exception as exc:  # one broken benchmark must not hide the others
                traceback.print_exc()
                detail = f"did not run: {type(exc).__name__}: {exc}"
                rows.extend(Row(n, math.nan, op, t, detail[:120]) for n, op, t in expected)
    elapsed = time.perf_counter() - started
    lines = [
        f"Machine: {machine()}",
        "",
        f"One run of `make bench` on {time.strftime('%Y-%m-%d')} at commit {commit()}, "
        f"{elapsed:.0f} s, peers "
        f"measured side by side; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after (other processes share the cores: absolute times vary "
        "with it more than ratios do).",
        "",
        table(rows),
    ]
    missed = [r for r in rows if r.passed is False]
    if missed:
        lines += ["", f"{len(missed)} of {len(rows)} rows miss their target."]
    text = "\n".join(lines)
    print(text)
    sys.stdout.flush()
    if set(chosen) == set(BENCHMARKS) and not args.no_readme:
        write_readme(README, text)
        say(f"wrote the table into {os.path.normpath(README)}")


if __name__ == "__main__":
    main()
