"""The README's probe tables, measured: ``python bench/probe_tables.py``.

Runs ``tmlab.probe()`` against three servers started here, on the packaged GGUF:

* tmlab's embedded server (its defaults);
* llama.cpp's own C++ server (the ``xllamacpp`` wheel, with llama.cpp's defaults, as a user
  runs it);
* a server without the optional capabilities (``tmlab serve --minimal``);

and writes the embedded server's table between ``<!-- probe:start -->`` and
``<!-- probe:end -->`` in README.md, and the verdicts of the other two, side by side, between
``<!-- probe-elsewhere:start -->`` and ``<!-- probe-elsewhere:end -->``. The vLLM and
Tensormesh columns stay in the README's table "from their documentation": no such server runs
here. ``--no-readme`` prints the tables only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack

import pandas as pd
from _common import commit, say, write_readme
from _llamacpp import llamacpp_server

import tmlab
import tmlab.local

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "README.md")
PROBE = ("<!-- probe:start -->", "<!-- probe:end -->")
ELSEWHERE = ("<!-- probe-elsewhere:start -->", "<!-- probe-elsewhere:end -->")


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(frame: pd.DataFrame, columns: list[str], names: list[str]) -> str:
    """A Markdown table of ``columns`` of ``frame`` under the headers ``names``."""
    lines = ["| " + " | ".join(names) + " |", "| " + " | ".join("---" for _ in names) + " |"]
    for row in frame[columns].itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def probe(base_url: str) -> pd.DataFrame:
    """``tmlab.probe()`` of the server at ``base_url`` (fresh: nothing cached)."""
    with tmlab.Client(base_url=base_url, timeout=120) as client:
        return tmlab.probe(client, refresh=True, quiet=True)


def main() -> None:
    """Probe the three servers; print the tables and write them into the README."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-readme", action="store_true", help="print only")
    args = parser.parse_args()
    os.environ["TMLAB_HISTORY"] = "off"
    with ExitStack() as stack:
        say("starting the three servers …")
        embedded = stack.enter_context(tmlab.local.start(quiet=True)).base_url
        minimal = stack.enter_context(tmlab.local.start(quiet=True, minimal=True)).base_url
        llamacpp = stack.enter_context(llamacpp_server(parallel=2, as_user=True)) + "/v1"
        tables = {
            name: probe(url)
            for name, url in (("embedded", embedded), ("llamacpp", llamacpp), ("minimal", minimal))
        }
    own = markdown(
        tables["embedded"],
        ["capability", "asked", "came_back", "verdict"],
        ["capability", "asked", "came back", "verdict"],
    )
    both = tables["llamacpp"][["capability"]].copy()
    for name in ("llamacpp", "minimal"):
        t = tables[name]
        both[name] = [f"{v} ({c})" for v, c in zip(t["verdict"], t["came_back"], strict=True)]
    other = markdown(
        both,
        ["capability", "llamacpp", "minimal"],
        [
            "capability",
            "llama.cpp's server (`xllamacpp`, its defaults): verdict (came back)",
            "`tmlab serve --minimal`: verdict (came back)",
        ],
    )
    when = (
        f"Measured by `bench/probe_tables.py` on {time.strftime('%Y-%m-%d')} at commit {commit()}."
    )
    own, other = f"{when}\n\n{own}", f"{when}\n\n{other}"
    print(own, other, sep="\n\n")
    sys.stdout.flush()
    if not args.no_readme:
        write_readme(README, own, PROBE)
        write_readme(README, other, ELSEWHERE)
        say(f"wrote both tables into {os.path.normpath(README)}")


if __name__ == "__main__":
    main()
