"""Lessons that show their effect, on the embedded model: the README's sweep ("Name a colour.",
four tokens) gives more distinct answers at a higher temperature, and one answer whatever
the temperature with top_k=1. Seeds 1..8 stand for eight random draws, so the test repeats."""

from __future__ import annotations

import pytest

import tmlab
from tmlab.local import LocalServer

pytestmark = pytest.mark.slow

PROMPT = "Name a colour."  # as in README.md's sweep
SEEDS = range(1, 9)


def _distinct(client: tmlab.Client, temperature: float, top_k: int, seeds: range = SEEDS) -> int:
    answers = {
        client.chat(PROMPT, temperature=temperature, top_k=top_k, seed=s, max_tokens=4).text
        for s in seeds
    }
    return len(answers)


def test_temperature_and_top_k_visibly_change_the_answers(local_server: LocalServer) -> None:
    with tmlab.Client(base_url=local_server.base_url) as client:
        wide = {t: _distinct(client, t, 50) for t in (0.1, 0.7, 1.5)}
        greedy = {t: _distinct(client, t, 1, range(1, 5)) for t in (0.1, 1.5)}
    print(f"distinct of {len(SEEDS)}: top_k=50 {wide}, top_k=1 {greedy}")
    assert greedy == {0.1: 1, 1.5: 1}  # top_k=1: only the most likely token, at any temperature
    assert wide[0.1] < wide[0.7] < wide[1.5]  # more distinct answers as T grows
    # the figures README.md quotes (seeded: the same on every run of this model file)
    assert wide == {0.1: 3, 0.7: 6, 1.5: 8}
