"""What branching costs on the embedded server.

- ``res.branch()`` vs a fresh request with the same prompt + prefix tokens: the branch sends
  exactly one request (the continuation), so its wall time should be that of the same
  continuation sent by hand with ``client.chat`` (target ≤ 1.1). Both are greedy with the
  same token budget, so they generate the same tokens; calls are interleaved, medians taken.
- ``tmlab.continuations(depth=3, width=3)``: the requests it makes (target ≤ 1 + 3 + 9 = 13,
  none repeated; the server is started by this benchmark, not the process's embedded one, so
  the one continuation check counts too — it is made before timing, once per server) and its
  wall time, with the time of one one-token request for scale.

Run alone: ``python bench/run.py --only branch``.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from _common import Row, fmt_time, interleaved

import tmlab
import tmlab.local
from tmlab.probtree import continuations

PROMPT = "Write one sentence about the sea."
POSITION = 10
NEW_TOKENS = 16


def _fresh(client: tmlab.Client, res: tmlab.ChatResult) -> Any:
    """The branch's own request, sent by hand: the same prompt, the same prefix tokens."""
    entries = res.choices[0].logprobs or []
    alt = next(a for a in entries[POSITION].top if a.token_id != entries[POSITION].token_id)
    ids = [int(e.token_id) for e in entries[:POSITION]] + [int(alt.token_id)]  # type: ignore[arg-type]
    text = b"".join(bytes(e.bytes or []) for e in entries[:POSITION]) + bytes(alt.bytes or [])
    return client.chat(
        [
            {"role": "user", "content": PROMPT},
            {"role": "assistant", "content": text.decode("utf-8", "replace")},
        ],
        continue_final_message=True,
        add_generation_prompt=False,
        continue_token_ids=ids,
        temperature=0.0,
        max_tokens=NEW_TOKENS,
        logprobs=True,
        top_logprobs=5,
    )


def run(repeats: int = 11) -> list[Row]:
    """The branch ratio, and the requests and wall time of continuations(3, 3)."""
    rows = []
    with (
        tmlab.local.start(quiet=True) as server,
        tmlab.Client(base_url=server.base_url, timeout=600) as client,
    ):
        parent = client.chat(PROMPT, temperature=0.0, max_tokens=24, logprobs=True, top_logprobs=5)
        branch = partial(parent.branch, POSITION, client=client, max_tokens=NEW_TOKENS)
        first = branch()  # warms up, and makes the one continuation check of this server
        by_hand = _fresh(client, parent)
        assert first.choices[0].token_ids == by_hand.choices[0].token_ids or (
            [e.token_id for e in first.choices[0].logprobs or []]
            == [e.token_id for e in by_hand.choices[0].logprobs or []]
        ), "the branch and the request by hand generated different tokens"
        med = interleaved(
            {"branch": branch, "fresh": partial(_fresh, client, parent)}, repeats, budget=120
        )
        prompt_tokens = first.usage.prompt_tokens
        rows.append(
            Row(
                "branch vs a fresh request with the same prompt + prefix tokens",
                med["branch"] / med["fresh"],
                "<=",
                1.1,
                f"res.branch {fmt_time(med['branch'])} / client.chat of the same continuation "
                f"{fmt_time(med['fresh'])}; {prompt_tokens}-token prompt, "
                f"{first.usage.completion_tokens} new tokens, median of {med.rounds}",
            )
        )
        one = interleaved(
            {"one": lambda: client.chat(PROMPT, max_tokens=1, logprobs=True, top_logprobs=3)},
            5,
        )["one"]
        t0 = time.perf_counter()
        tree = continuations(PROMPT, depth=3, width=3, client=client)
        wall = time.perf_counter() - t0
        requests = int(tree.attrs["requests"])
        rows.append(
            Row(
                "continuations(depth=3, width=3): requests made",
                requests,
                "<=",
                13,
                f"{len(tree)} nodes, none asked twice; the server was checked before "
                "(a check costs 1 more, once per server)",
            )
        )
        rows.append(
            Row(
                "continuations(depth=3, width=3): wall time",
                wall,
                "",
                None,
                f"{requests} one-token requests; one such request alone takes "
                f"{fmt_time(one)} (median): {wall / one:.1f}×",
                unit=" s",
            )
        )
    return rows
