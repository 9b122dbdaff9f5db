"""Every ```python block of README.md runs as written: in order, in one IPython session (so
``%load_ext`` and ``%%tmchat`` blocks run as in a notebook), against the embedded server.

A block without IPython syntax must also compile as a plain Python script (no top-level
``await``): what a reader pastes into a ``.py`` file runs too. A block is skipped only when
the comment line above it says ``<!-- no-run: why -->``, and the test checks that it says why.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

import tmlab
from tmlab.client.settings import ENV_API_KEY, ENV_BASE_URL, ENV_MODEL, session
from tmlab.local import LocalServer

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parent.parent / "README.md"
_FENCE = re.compile(r"^```python\n(.*?)^```\n", re.DOTALL | re.MULTILINE)
_NO_RUN = re.compile(r"<!--\s*no-run\b(.*?)-->\s*$")


@dataclass
class Block:
    """One ```python block: its first line in the README, its code, why it is not run."""

    line: int
    code: str
    no_run: str | None

    @property
    def ipython(self) -> bool:
        """Whether it uses IPython syntax (a magic), which only a notebook session runs."""
        return any(line.lstrip().startswith("%") for line in self.code.splitlines())


def blocks(text: str) -> list[Block]:
    """The README's ```python blocks in order, with the no-run comment right above each."""
    out = []
    for m in _FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = _NO_RUN.search(before)
        line = text.count("\n", 0, m.start()) + 2
        out.append(Block(line, m.group(1), marker.group(1).strip(" :") if marker else None))
    return out


def test_blocks_are_found_and_skips_say_why() -> None:
    found = blocks(README.read_text(encoding="utf-8"))
    assert len(found) >= 10
    skipped = [b for b in found if b.no_run is not None]
    assert all(b.no_run for b in skipped), "a <!-- no-run --> comment must say why"
    assert len(skipped) <= 2, "skip only where running is impossible"
    # the parser sees a marker only directly above a block
    sample = "text\n<!-- no-run: needs a key -->\n```python\nx = 1\n```\n\n```python\ny\n```\n"
    assert [(b.code, b.no_run) for b in blocks(sample)] == [
        ("x = 1\n", "needs a key"),
        ("y\n", None),
    ]


@pytest.fixture(scope="module")
def shell(
    local_server: LocalServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InteractiveShell]:
    """One IPython session for every block, in order (as a reader runs them)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMLAB_HISTORY", str(tmp_path_factory.mktemp("readme") / "history.sqlite3"))
        mp.setenv("MPLBACKEND", "Agg")
        for var in (ENV_API_KEY, ENV_BASE_URL, ENV_MODEL):
            mp.delenv(var, raising=False)
        ip = InteractiveShell.instance()
        ip.reset()
        yield ip
        # what a kernel's exit would close: the clients and widgets the blocks made
        for value in list(ip.user_ns.values()):
            if isinstance(value, tmlab.Client | tmlab.Explorer):
                value.close()
        ip.reset()


RUNNABLE = [b for b in blocks(README.read_text(encoding="utf-8")) if b.no_run is None]


@pytest.mark.parametrize("block", RUNNABLE, ids=[f"line{b.line}" for b in RUNNABLE])
def test_python_block_runs_as_written(
    shell: InteractiveShell, local_server: LocalServer, block: Block
) -> None:
    """One block (one test each: a slow machine times each alone); the earlier blocks ran
    before it in the same session, as in the README's order."""
    session.update(base_url=local_server.base_url)  # each test starts with a fresh session
    where = f"README.md line {block.line}"
    if not block.ipython:
        compile(block.code, where, "exec")  # a script runs it too: no top-level await
    with capture_output() as cap:
        result = shell.run_cell(block.code, store_history=True)
    if not result.success:
        error = result.error_in_exec or result.error_before_exec
        pytest.fail(f"{where} failed: {error!r}\n{block.code}\n{cap.stdout}\n{cap.stderr}")


def test_the_blocks_made_what_they_say(shell: InteractiveShell) -> None:
    ns = shell.user_ns
    assert len(RUNNABLE) >= 10
    assert ns["res"].text and ns["reviews"] and ns["df"]["temperature"].nunique() == 3
