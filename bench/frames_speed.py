"""``logprobs_frame`` of a long answer against building the same frame from a list of dicts.

The answer: 8,000 generated tokens, each with 20 alternatives (``top_logprobs=20``, the
largest the API allows), in the OpenAI shape with ``bytes`` as the embedded server sends
them. The peer is what one writes by hand: a loop over ``logprobs.content`` computing the same
columns (prob, rank, entropy, top mass …) into one dict per token, then
``pandas.DataFrame(rows)``. Both frames are checked equal before timing.

Two times for tmlab: ``logprobs_frame(res)`` on a result at hand (what a user calls), and
``ChatResult(raw).logprobs_frame()`` (parsing the logprobs included, the same start as the
peer's).

Run alone: ``python bench/run.py --only frames``.
"""

from __future__ import annotations

import math
import random
from typing import Any

from _common import Row, fmt_time, interleaved

TOKENS = 8_000
ALTERNATIVES = 20


def make_raw(tokens: int = TOKENS, alternatives: int = ALTERNATIVES) -> dict[str, Any]:
    """A response whose one choice carries ``tokens`` × ``alternatives`` logprobs."""
    rnd = random.Random(7)
    content: list[dict[str, Any]] = []
    for i in range(tokens):
        logits = sorted((rnd.gauss(0, 3) for _ in range(alternatives + 30)), reverse=True)
        norm = math.log(sum(math.exp(x) for x in logits))
        alts = [
            {"token": f"t{i}_{k}", "logprob": logits[k] - norm, "bytes": [116, 48 + k % 10]}
            for k in range(alternatives)
        ]
        pick = alts[min(int(rnd.expovariate(1.0)), alternatives - 1)]
        content.append({**pick, "top_logprobs": alts})
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(c["token"] for c in content)},
                "finish_reason": "length",
                "logprobs": {"content": content},
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": tokens, "total_tokens": tokens + 10},
    }


def by_hand(raw: dict[str, Any]) -> Any:
    """The peer: one dict per token, computed in a plain loop, then a DataFrame."""
    import pandas as pd

    rows = []
    exp = math.exp
    for choice in raw["choices"]:
        for pos, item in enumerate(choice["logprobs"]["content"]):
            lp = item["logprob"]
            alts = item["top_logprobs"]
            tokens = [a["token"] for a in alts]
            lps = [a["logprob"] for a in alts]
            ps = [exp(x) for x in lps]
            mass = sum(ps)
            rank = 1 + sum(x > lp for x in lps) if item["token"] in tokens else None
            rows.append(
                {
                    "choice": choice["index"],
                    "position": pos,
                    "token": item["token"],
                    "token_id": item.get("token_id"),
                    "logprob": lp,
                    "prob": exp(lp),
                    "rank": rank,
                    "entropy": -sum(p * x for p, x in zip(ps, lps, strict=True) if p > 0),
                    "top_mass": mass,
                    "other_mass": min(max(1.0 - mass, 0.0), 1.0),
                    "top_tokens": tokens,
                    "top_logprobs": lps,
                }
            )
    return pd.DataFrame(rows)


def run(rounds: int = 7) -> list[Row]:
    """The frame of a result at hand, and parsing included, against the dict loop."""
    import numpy as np

    from tmlab.frames import logprobs_frame
    from tmlab.result import ChatResult

    raw = make_raw()
    res = ChatResult(raw)
    ours, theirs = logprobs_frame(res), by_hand(raw)
    assert len(ours) == len(theirs) == TOKENS
    for col in ("logprob", "prob", "entropy", "top_mass", "other_mass"):
        assert np.allclose(ours[col].to_numpy(float), theirs[col].to_numpy(float)), col
    assert (ours["rank"].to_numpy(float) == theirs["rank"].to_numpy(float)).all()
    assert ours["top_tokens"].tolist() == theirs["top_tokens"].tolist()

    med = interleaved(
        {
            "frame": lambda: logprobs_frame(res),
            "parse+frame": lambda: ChatResult(raw).logprobs_frame(),
            "dicts": lambda: by_hand(raw),
        },
        rounds,
        budget=20,
    )
    size = f"{TOKENS:,} tokens × {ALTERNATIVES} alternatives, median of {med.rounds}"
    return [
        Row(
            "logprobs_frame vs frame from a list of dicts",
            med["frame"] / med["dicts"],
            "<=",
            1.0,
            f"logprobs_frame(res) {fmt_time(med['frame'])} / dict loop + DataFrame "
            f"{fmt_time(med['dicts'])}, {size}",
        ),
        Row(
            "logprobs_frame, absolute",
            med["frame"],
            "<",
            0.2,
            f"logprobs_frame(res), {size}",
            " s",
        ),
        Row(
            "logprobs_frame incl. parsing vs frame from a list of dicts",
            med["parse+frame"] / med["dicts"],
            "",
            None,
            f"ChatResult(raw).logprobs_frame() {fmt_time(med['parse+frame'])} / dict loop + "
            f"DataFrame {fmt_time(med['dicts'])}, {size}",
        ),
    ]
