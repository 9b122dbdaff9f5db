"""The API key never reaches a notebook: no cell output, not the saved .ipynb, not the history.

A notebook runs in a real kernel (nbclient) with a distinctive key in the kernel's environment,
against an embedded server started with that key, through every front end that shows things:
the magics (settings, answer, logprobs, usage, raw JSON, history, an error) and the client.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import tmlab.local
from tmlab.client.settings import ENV_API_KEY, ENV_BASE_URL, ENV_MODEL

pytestmark = pytest.mark.slow

CELLS = [
    "%load_ext tmlab.jupyter.magics",
    "%tmconfig",
    "%%tmchat --max-tokens 12 --seed 1 --logprobs 3 --show answer,reasoning,logprobs,usage,raw\n"
    "Say hello.",
    "%%tmchat --continue --max-tokens 8 --no-stream --out res\nAnd again?",
    "res, res.request, res.to_dict()",
    "import tmlab\nclient = tmlab.Client()\nclient",
    "%tmmodels",
    "%tmhistory",
    "from tmlab.history import history\nhistory().to_dict()",
    "import os\nos.environ['TMLAB_LEAK_WRONG'] = 'not-the-key-but-wrong'\n"
    "%tmconfig key=env:TMLAB_LEAK_WRONG",
    "%%tmchat --max-tokens 4\nThis one is refused (401).",
    "%tmconfig key=env:" + ENV_API_KEY,
    "%%tmchat --temperature 9\nA bad flag.",
]


def test_the_key_is_in_no_output_no_saved_notebook_and_no_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "tmleak-" + secrets.token_hex(16)
    history = tmp_path / "history.sqlite3"
    with tmlab.local.start(api_key=key, quiet=True) as server:
        monkeypatch.setenv(ENV_API_KEY, key)
        monkeypatch.setenv(ENV_BASE_URL, server.base_url)
        monkeypatch.delenv(ENV_MODEL, raising=False)
        monkeypatch.setenv("TMLAB_HISTORY", str(history))
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
        client = NotebookClient(
            nb,
            timeout=300,
            kernel_name="python3",
            allow_errors=True,
            resources={"metadata": {"path": str(tmp_path)}},
        )
        client.execute()
    outputs = [o for cell in nb.cells for o in cell.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    # the 401 and the bad flag fail, in one line each; everything else ran
    assert len(errors) == 2, errors
    assert "AuthenticationError 401" in errors[0]["traceback"][0]
    assert "--temperature" in errors[1]["traceback"][0]
    answer = nb.cells[2].outputs[0]["data"]["text/markdown"]
    assert " prompt + " in answer  # the request with the key went through
    saved = tmp_path / "leak.ipynb"
    nbformat.write(nb, saved)
    files = [saved, *tmp_path.glob("history.sqlite3*")]
    assert len(files) >= 2
    for path in files:
        data = path.read_bytes()
        for piece in (key, key[7:], key[-16:]):  # the whole key, or a tail of it
            assert piece.encode() not in data, path.name
    text = saved.read_text()
    assert "set (from TENSORMESH_INFERENCE_API_KEY)" in text
