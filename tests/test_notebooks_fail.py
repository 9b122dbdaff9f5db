"""Every notebook fails when its requests fail: at the first cell that makes a request.

Run under nbval, a notebook passes when no cell raises. A cell that swallowed a failed request
(an Explorer whose ``wait()`` was ignored, a sweep whose rows all carry an error, an
``else "no answer"``) would let a broken setup pass. Here each notebook runs in a real kernel
against a server that is not there: the first cell that sends a request must be the cell that
fails.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from _e2e import dead_url
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from tmlab.client.settings import ENV_API_KEY, ENV_BASE_URL, ENV_MODEL

pytestmark = pytest.mark.slow

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
# what a cell that sends a request contains
SENDS = (
    ".chat(",
    "%%tmchat",
    "ex.run()",
    "tmlab.sweep(",
    "tmlab.audit(",
    "tmlab.Explorer(",
    "tmlab.probe(",
    "tmlab.needs(",
    "tmlab.score(",
    "tmlab.classify(",
    "tmlab.continuations(",
    ".branch(",
)


def test_every_notebook_is_here() -> None:
    assert len(NOTEBOOKS) >= 7, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_a_failed_request_fails_the_cell_that_sent_it(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_API_KEY, raising=False)
    monkeypatch.setenv(ENV_BASE_URL, dead_url())
    monkeypatch.setenv(ENV_MODEL, "SmolLM2-135M-Instruct")
    monkeypatch.setenv("TMLAB_HISTORY", str(tmp_path / "history.sqlite3"))
    nb = nbformat.read(path, as_version=4)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    first_request = next(i for i in code if any(s in nb.cells[i].source for s in SENDS))
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    with pytest.raises(CellExecutionError):
        client.execute()
    failed = [i for i in code if any(o.output_type == "error" for o in nb.cells[i].outputs)]
    assert failed, "no cell shows an error"
    # the Explorer's constructor only lists models; its first request is ex.run()
    source = nb.cells[first_request].source
    if "tmlab.Explorer(" in source and "tmlab.needs(" not in source:
        first_request = next(i for i in code if "ex.run()" in nb.cells[i].source)
    assert failed[0] == first_request, (failed[0], first_request, nb.cells[failed[0]].source)
