"""The logprobs the local server shows are the model's: checked against an independent run.

An independent llama.cpp model, loaded here with ``logits_all=True`` (the configuration
llama-cpp-python itself needs for logprobs), evaluates the same prompt and greedy tokens; the
log-softmax of its raw logits must equal what the server returned, and the frames built on
top must agree with a computation by hand.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from _e2e import MODEL

import tmlab

pytestmark = pytest.mark.slow


def test_server_logprobs_equal_an_independent_log_softmax(http: Any, reference: Any) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
        "max_tokens": 6,
        "logprobs": True,
        "top_logprobs": 5,
        "return_token_ids": True,
    }
    res = http.post("/v1/chat/completions", json=body).json()
    prompt_ids = res["prompt_token_ids"]
    content = res["choices"][0]["logprobs"]["content"]
    generated = [e["token_id"] for e in content]

    # Evaluate as the server does: the prompt in one batch, then one token at a time (a
    # different batching changes the float rounding of the quantised kernels by ~1e-2).
    reference.reset()
    reference.eval(prompt_ids)
    for tok in generated[:-1]:
        reference.eval([tok])
    scores = np.asarray(reference.scores, dtype=np.float64)
    for step, entry in enumerate(content):
        row = scores[len(prompt_ids) - 1 + step]
        lp = row - (row.max() + math.log(np.exp(row - row.max()).sum()))
        order = np.argsort(-lp)[:5]
        assert entry["token_id"] == int(order[0])  # greedy picked the argmax
        assert entry["logprob"] == pytest.approx(lp[entry["token_id"]], abs=1e-9)
        assert [t["token_id"] for t in entry["top_logprobs"]] == [int(i) for i in order]
        assert [t["logprob"] for t in entry["top_logprobs"]] == pytest.approx(
            lp[order].tolist(), abs=1e-9
        )


def test_frame_numbers_match_a_hand_computation(local_server: Any) -> None:
    with tmlab.Client(base_url=local_server.base_url, model=MODEL) as client:
        res = client.chat(
            "Write one word.", temperature=1.0, seed=3, max_tokens=5, logprobs=True, top_logprobs=4
        )
    df = res.logprobs_frame()
    for row, entry in zip(
        df.itertuples(), res.raw["choices"][0]["logprobs"]["content"], strict=True
    ):
        probs = [math.exp(t["logprob"]) for t in entry["top_logprobs"]]
        assert row.prob == pytest.approx(math.exp(entry["logprob"]))
        assert row.entropy == pytest.approx(-sum(p * math.log(p) for p in probs))
        assert row.other_mass == pytest.approx(1 - sum(probs))
        ids = [t["token_id"] for t in entry["top_logprobs"]]
        if entry["token_id"] in ids:
            better = sum(t["logprob"] > entry["logprob"] for t in entry["top_logprobs"])
            assert row.rank == better + 1
        else:
            assert row.rank is pd_na()


def pd_na() -> Any:
    import pandas as pd

    return pd.NA
