"""What the sampler trace costs on the embedded server.

The same seeded request (64 tokens, ``ignore_eos``, temperature 0.8, top_k 40, top_p 0.95)
with ``sampler_trace={"top": 50}`` (every stage of every position, 50 raw candidates) and
without it; calls interleaved, medians taken. Both generate the same tokens (checked): the
trace reads the chain, it does not change it. Target ≤ 1.1.

Run alone: ``python bench/run.py --only trace``.
"""

from __future__ import annotations

from functools import partial

from _common import Row, fmt_time, interleaved

import tmlab
import tmlab.local

ASK = "Write a short paragraph about the sea."
SETTINGS = {
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.95,
    "seed": 7,
    "max_tokens": 64,
    "ignore_eos": True,
}


def run(repeats: int = 9) -> list[Row]:
    """The trace's cost as a ratio to the same request without it."""
    with (
        tmlab.local.start(quiet=True) as server,
        tmlab.Client(base_url=server.base_url, timeout=600) as client,
    ):
        plain = partial(client.chat, ASK, **SETTINGS)
        traced = partial(client.chat, ASK, **SETTINGS, sampler_trace={"top": 50})
        a, b = plain(), traced()  # warm up, and check the tokens are the same
        assert a.text == b.text, "the trace changed the answer"
        positions = len(b.raw["choices"][0]["sampler_trace"]["positions"])
        assert positions == 64, positions
        med = interleaved({"traced": traced, "plain": plain}, repeats, budget=120)
    return [
        Row(
            "sampler trace (64 positions × 50 candidates) vs the same request without it",
            med["traced"] / med["plain"],
            "<=",
            1.1,
            f"traced {fmt_time(med['traced'])} / plain {fmt_time(med['plain'])}; "
            f"median of {med.rounds}",
        )
    ]
