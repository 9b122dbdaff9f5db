"""Building a :class:`~tmlab.ChatResult` from a long logprobs response, against ``json.loads``.

The response: 8,000 generated tokens × 20 alternatives each (``top_logprobs=20``, the largest
the API allows), the same body as ``bench/frames_speed.py`` (about 12 MB of JSON). Three
contenders, interleaved:

- ``ChatResult(raw)``: what the client does with the decoded body. The logprobs are read when
  first used, so this is the cost of a result whose tokens are never looked at;
- ``ChatResult(raw).choices[0].logprobs``: the same, then every ``TokenLogprob`` and
  ``TopLogprob`` object made (the first access pays it once);
- ``json.loads(body)``: decoding the body, the peer that every client pays before.

Run alone: ``python bench/run.py --only parse``.
"""

from __future__ import annotations

import json

from _common import Row, fmt_time, interleaved
from frames_speed import ALTERNATIVES, TOKENS, make_raw

TARGET_S = 0.1


def run(rounds: int = 7) -> list[Row]:
    """ChatResult of 8,000 × 20, absolute and against json.loads of the same body."""
    from tmlab.result import ChatResult

    raw = make_raw()
    body = json.dumps(raw)
    # the objects made on first access are exactly those the raw JSON holds
    got = ChatResult(raw).choices[0].logprobs or []
    assert len(got) == TOKENS and all(len(t.top) == ALTERNATIVES for t in got)
    first = raw["choices"][0]["logprobs"]["content"][0]
    assert (
        got[0].logprob == first["logprob"]
        and got[0].top[3].token == first["top_logprobs"][3]["token"]
    )
    del got

    med = interleaved(
        {
            "result": lambda: ChatResult(raw),
            "objects": lambda: ChatResult(raw).choices[0].logprobs,
            "loads": lambda: json.loads(body),
        },
        rounds,
        budget=20,
    )
    size = (
        f"{TOKENS:,} tokens × {ALTERNATIVES} alternatives ({len(body) / 1e6:.1f} MB), {med.samples}"
    )
    return [
        Row(
            "ChatResult from a logprobs response, absolute",
            med["result"],
            "<=",
            TARGET_S,
            f"ChatResult(raw) {fmt_time(med['result'])} (logprobs read on first use), {size}",
            " s",
        ),
        Row(
            "ChatResult vs json.loads of the same body",
            med["result"] / med["loads"],
            "<=",
            1.0,
            f"ChatResult(raw) {fmt_time(med['result'])} / json.loads(body) "
            f"{fmt_time(med['loads'])}, {size}",
        ),
        Row(
            "ChatResult + every TokenLogprob object vs json.loads",
            med["objects"] / med["loads"],
            "",
            None,
            f"ChatResult(raw).choices[0].logprobs {fmt_time(med['objects'])} / json.loads(body) "
            f"{fmt_time(med['loads'])}, {size}",
        ),
    ]


if __name__ == "__main__":
    from _common import table

    print(table(run()))
