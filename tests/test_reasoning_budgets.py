"""The reasoning budgets the README states (16–64, 64–192, 192–384 tokens for reasoning_effort
low, medium, high) hold on the embedded server, at those bounds, for an answer that would stop
at once and for one that would ramble on; and ``max_tokens`` limits the answer only."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from _e2e import MODEL

import tmlab

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
EFFORTS = ("low", "medium", "high")
PROMPTS = {
    "short": "Say OK.",  # the model would stop thinking at once: the minimum holds it
    "long": "Write a very long, detailed essay about the history of the sea.",  # the maximum
}


def _readme_budgets() -> dict[str, tuple[int, int]]:
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    found = re.search(r"thinks step by step \((\d+)–(\d+), (\d+)–(\d+), (\d+)–(\d+) tokens\)", text)
    assert found, "the README's sentence on reasoning budgets has changed: update this test"
    n = [int(x) for x in found.groups()]
    return {"low": (n[0], n[1]), "medium": (n[2], n[3]), "high": (n[4], n[5])}


@pytest.fixture(scope="module")
def client(local_server: Any) -> Any:
    with tmlab.Client(base_url=local_server.base_url, model=MODEL, timeout=600.0) as c:
        yield c


def test_the_notebook_states_the_readme_budgets() -> None:
    budgets = _readme_budgets()
    notebook = (ROOT / "notebooks" / "04-reasoning.ipynb").read_text(encoding="utf-8")
    listed = " / ".join(f"{lo}–{hi}" for lo, hi in budgets.values())
    assert listed in notebook  # "16–64 / 64–192 / 192–384" in its summary


@pytest.mark.parametrize("kind", list(PROMPTS))
@pytest.mark.parametrize("effort", EFFORTS)
def test_reasoning_tokens_stay_within_the_readme_budget(
    client: Any, effort: str, kind: str
) -> None:
    low, high = _readme_budgets()[effort]
    res = client.chat(
        PROMPTS[kind], reasoning_effort=effort, temperature=0, max_tokens=4, stream=True
    )
    reasoning = res.usage.reasoning_tokens
    assert reasoning is not None and low <= reasoning <= high, (effort, kind, reasoning)
    assert res.reasoning  # returned apart from the answer
    # max_tokens limits the answer only: the reasoning is counted on top of it
    assert res.usage.completion_tokens - reasoning <= 4
    assert res.usage.completion_tokens > 4 or reasoning == 0
