"""The Stepper's cost: one step against a plain one-token request, and a slider's redraw.

**One step** (:meth:`tmlab.Stepper.sample`, then :meth:`~tmlab.Stepper.wait`): take the drawn
token and send the one request for the next position — a continuation of the text so far
(``continue_token_ids``), ``max_tokens=1``, ``logprobs=True, top_logprobs=20`` and
``sampler_trace={"top": 50}`` — and turn its answer into the stage rows. The peer is the same
continuation of one token without logprobs or trace (:func:`tmlab.analysis.branching.
continue_final`): what any one-token step costs. Each round goes Back first (no request), so
both continue the same one-token prefix. Target ≤ 1.2.

**A slider's redraw** (no request): setting ``top_k`` on a Stepper whose position has 50+
candidates and 8 stage rows (raw, logit_bias, penalties, then top_k, typical_p, top_p, min_p,
temperature), recomputed with :func:`tmlab.analysis.stages.run_chain`. Target ≤ 50 ms.

Run alone: ``python bench/run.py --only stepper``.
"""

from __future__ import annotations

import statistics
import time

from _common import Row, fmt_time, interleaved

import tmlab
import tmlab.local
from tmlab.analysis.branching import continue_final

PROMPT = "Write a short paragraph about the sea."
SETTINGS = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "seed": 7}


def run(repeats: int = 9, redraws: int = 40) -> list[Row]:
    """The two rows."""
    with (
        tmlab.local.start(quiet=True) as server,
        tmlab.Client(base_url=server.base_url, timeout=600) as client,
    ):
        st = tmlab.Stepper(PROMPT, client=client, **SETTINGS)
        try:
            assert st.wait(600) and st.error is None, st.error
            st.sample()
            assert st.wait(600) and st.error is None, st.error
            prefix, ids = st.text, [s.token_id for s in st.steps]
            st.back()
            assert st.wait(600)

            def step() -> None:
                st.sample()
                st.wait(600)
                st.back()
                st.wait(600)

            def plain() -> None:
                continue_final(
                    client,
                    st.messages,
                    prefix,
                    token_ids=ids,
                    max_tokens=1,
                    **SETTINGS,
                )

            med = interleaved({"step": step, "plain": plain}, repeats, budget=120)
        finally:
            st.close()

        busy = tmlab.Stepper(
            PROMPT,
            client=client,
            repetition_penalty=1.1,
            logit_bias={"13": -1.0},
            typical_p=0.95,
            **SETTINGS,
        )
        try:
            assert busy.wait(600) and busy.error is None, busy.error
            n_cand, n_rows = len(busy.view.ids), len(busy.stages)
            times = []
            for i in range(redraws):
                t0 = time.perf_counter()
                busy.top_k = 5 + i % 30
                times.append(time.perf_counter() - t0)
            assert busy.requests == 1  # redraws ask nothing (the debounced one comes later)
            busy.wait(600)
        finally:
            busy.close()
    redraw = statistics.median(times)
    return [
        Row(
            "Stepper step ÷ a plain one-token continuation request",
            med["step"] / med["plain"],
            "<=",
            1.2,
            f"step {fmt_time(med['step'])} / plain {fmt_time(med['plain'])}; median of "
            f"{med.rounds}",
        ),
        Row(
            f"Stepper slider redraw, no request ({n_cand} candidates × {n_rows} stages), ms",
            redraw * 1e3,
            "<=",
            50.0,
            f"median of {redraws} top_k moves: {redraw * 1e3:.1f} ms",
            unit="ms",
        ),
    ]


if __name__ == "__main__":
    for row in run():
        print(f"{row.name}: {row.value:.3g} ({row.detail})")
