"""The sampler trace (``sampler_trace``, ``logprobs_for``): true to an independent computation.

An independent llama.cpp model, loaded here with ``logits_all=True``, evaluates the same prompt
and tokens the server generated (prompt in one batch, then one token at a time, as the server
does). From its raw logits a numpy implementation of llama.cpp's chain (top_k, top_p, min_p,
then temperature: truncation first) gives every stage's kept set and distribution; the
server's trace must agree to 1e-6 at every stage, and its first and last stages must equal the
raw and processed logprobs of the same request.
"""

from __future__ import annotations

import math
from typing import Any

import httpx
import numpy as np
import pytest
from _e2e import MODEL

import tmlab

ASK = [{"role": "user", "content": "Name a colour and say why you like it."}]


def _post(http: httpx.Client, **body: Any) -> dict[str, Any]:
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, **body})
    assert r.status_code == 200, r.text
    return r.json()


def _rows(reference: Any, prompt: list[int], generated: list[int]) -> np.ndarray:
    """The raw logits (float32, as llama.cpp hands them to its samplers) before each token."""
    reference.reset()
    reference.eval(prompt)
    for tok in generated[:-1]:
        reference.eval([tok])
    scores = np.asarray(reference.scores, dtype=np.float32)
    return scores[len(prompt) - 1 : len(prompt) - 1 + len(generated)]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    out = np.full(x.shape, -np.inf)
    f = np.isfinite(x)
    m = x[f].max()
    out[f] = x[f] - (m + math.log(np.exp(x[f] - m).sum()))
    return out


def _chain(
    logits: np.ndarray, *, top_k: int, top_p: float, min_p: float, temperature: float
) -> dict[str, np.ndarray]:
    """llama.cpp's picker, written out: each stage's logits (-inf where removed)."""
    out = {"raw": logits.copy()}
    cur = logits.copy()
    if top_k > 0:
        keep = np.argsort(-cur, kind="stable")[:top_k]
        nxt = np.full_like(cur, -np.inf)
        nxt[keep] = cur[keep]
        cur = nxt
    out["top_k"] = cur.copy()
    if top_p < 1.0:
        p = np.exp(_log_softmax(cur))
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        last = int(np.argmax(cum >= top_p)) + 1 if (cum >= top_p).any() else len(order)
        nxt = np.full_like(cur, -np.inf)
        nxt[order[:last]] = cur[order[:last]]
        cur = nxt
    out["top_p"] = cur.copy()
    if min_p > 0.0:
        threshold = np.float32(cur.max() + np.float32(math.log(min_p)))
        cur = np.where(cur >= threshold, cur, np.float32(-np.inf)).astype(np.float32)
    out["min_p"] = cur.copy()
    out["temperature"] = (cur / np.float32(temperature)).astype(np.float32)
    return out


SETTINGS = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.02}


def test_every_stage_equals_an_independent_numpy_chain(http: httpx.Client, reference: Any) -> None:
    res = _post(
        http,
        **SETTINGS,
        seed=11,
        max_tokens=8,
        sampler_trace={"top": 100},
        return_token_ids=True,
    )
    trace = res["choices"][0]["sampler_trace"]
    assert trace["chain"][0] == "raw" and trace["chain"][-1] == "temperature"
    assert trace["chain"].index("top_k") < trace["chain"].index("temperature")
    positions = trace["positions"]
    generated = res["choices"][0]["token_ids"]
    assert [p["token_id"] for p in positions] == generated
    rows = _rows(reference, res["prompt_token_ids"], generated)
    for pos, row in zip(positions, rows, strict=True):
        mine = _chain(row, **SETTINGS)
        ids = [c["id"] for c in pos["candidates"]]
        prev = None
        for st in pos["stages"]:
            name = st["stage"]
            lp = _log_softmax(mine.get(name, mine["raw"] if prev is None else prev))
            kept = np.isfinite(lp)
            assert st["kept"] == int(kept.sum()), (pos["position"], name)
            assert st["p"] == pytest.approx(np.exp(lp[ids]).tolist(), abs=1e-6), name
            p = np.exp(lp)
            assert st["entropy"] == pytest.approx(float(-(p[kept] * lp[kept]).sum()), abs=1e-6)
            if prev is not None:
                before = np.exp(_log_softmax(prev))
                assert st["removed_mass"] == pytest.approx(float(before[~kept].sum()), abs=1e-6)
            prev = mine.get(name, prev)
        for c in pos["candidates"]:
            first_cut = next(
                (st["stage"] for st in pos["stages"] if st["p"][ids.index(c["id"])] == 0.0),
                None,
            )
            assert c["cut_by"] == first_cut
        raw_lp = _log_softmax(row)
        assert pos["rank"] == 1 + int((raw_lp > raw_lp[pos["token_id"]]).sum())


@pytest.mark.parametrize("stream", [False, True])
def test_first_stage_is_the_raw_logprobs_and_last_the_processed(
    local_server: Any, stream: bool
) -> None:
    asked = dict(SETTINGS, seed=5, max_tokens=6, logprobs=True, top_logprobs=20, stream=stream)
    with tmlab.Client(base_url=local_server.base_url, model=MODEL) as client:
        raw = client.chat(ASK, **asked, sampler_trace={"top": 20}, logprobs_mode="raw_logprobs")
        done = client.chat(
            ASK, **asked, sampler_trace={"top": 20}, logprobs_mode="processed_logprobs"
        )
    assert raw.text == done.text  # the trace changes nothing about the draw
    for res, stage in ((raw, "raw"), (done, "temperature")):
        df = res.trace_frame()
        assert set(df["position"]) == set(range(len(res.choices[0].logprobs)))
        for i, tok in enumerate(res.choices[0].logprobs):
            at = df[(df["position"] == i) & (df["stage"] == stage)]
            p = dict(zip(at["candidate_id"], at["p"], strict=True))
            assert p[tok.token_id] == pytest.approx(math.exp(tok.logprob), abs=1e-9)
            for alt in tok.top:
                if alt.token_id in p:
                    assert p[alt.token_id] == pytest.approx(math.exp(alt.logprob), abs=1e-9)
    # the raw top 20 are the raw stage's 20 first candidates, in order
    first = raw.raw["choices"][0]["sampler_trace"]["positions"][0]
    assert [c["id"] for c in first["candidates"][:20]] == [
        a.token_id for a in raw.choices[0].logprobs[0].top
    ]


def test_logprobs_for_gives_a_token_outside_the_top_20_exactly(
    http: httpx.Client, reference: Any
) -> None:
    res = _post(
        http,
        **SETTINGS,
        seed=3,
        max_tokens=4,
        logprobs_for=[" purple", 0],
        return_token_ids=True,
    )
    lf = res["choices"][0]["logprobs_for"]
    purple = lf["tokens"][0]["id"]
    assert lf["tokens"][0]["token"] == " purple" and lf["tokens"][1]["id"] == 0
    generated = res["choices"][0]["token_ids"]
    rows = _rows(reference, res["prompt_token_ids"], generated)
    assert [p["position"] for p in lf["positions"]] == list(range(len(generated)))
    for pos, row in zip(lf["positions"], rows, strict=True):
        lp = _log_softmax(row)
        for i, tok in enumerate((purple, 0)):
            assert pos["raw_logprob"][i] == pytest.approx(lp[tok], abs=1e-6)
            assert pos["raw_rank"][i] == 1 + int((lp > lp[tok]).sum())
            final = _log_softmax(_chain(row, **SETTINGS)["temperature"])
            if np.isfinite(final[tok]):
                assert pos["logprob"][i] == pytest.approx(final[tok], abs=1e-6)
                assert pos["cut_by"][i] is None
            else:
                assert pos["logprob"][i] is None and pos["rank"][i] is None
                assert pos["cut_by"][i] in ("top_k", "top_p", "min_p")
    # at least one position shows a token far outside the 20 a server returns
    assert max(r for p in lf["positions"] for r in p["raw_rank"]) > 20
    df = tmlab.ChatResult(res).logprobs_for_frame()
    assert len(df) == 2 * len(generated) and df["raw_rank"].max() > 20


def test_greedy_and_json_mode_show_their_stages(http: httpx.Client) -> None:
    greedy = _post(http, temperature=0, max_tokens=3, sampler_trace=True)
    for pos in greedy["choices"][0]["sampler_trace"]["positions"]:
        last = pos["stages"][-1]
        assert pos["draw"] == "greedy" and last["kept"] == 1
        assert last["p"][[c["id"] for c in pos["candidates"]].index(pos["token_id"])] == 1.0
        assert pos["rank"] == 1
    js = _post(
        http,
        temperature=1.0,
        seed=1,
        max_tokens=3,
        response_format={"type": "json_object"},
        sampler_trace={"top": 10},
    )
    first = js["choices"][0]["sampler_trace"]["positions"][0]
    grammar = next(st for st in first["stages"] if st["stage"] == "grammar")
    assert grammar["active"] and grammar["setting"] == "json_object"
    assert grammar["kept"] < 1000 and grammar["removed_mass"] > 0.5
    assert first["token"].strip().startswith("{")


def test_chosen_positions_only(http: httpx.Client) -> None:
    res = _post(
        http, temperature=1.0, seed=2, max_tokens=6, sampler_trace={"top": 3, "positions": [1, 4]}
    )
    positions = res["choices"][0]["sampler_trace"]["positions"]
    assert [p["position"] for p in positions] == [1, 4]
    assert all(len(p["candidates"]) <= 7 for p in positions)  # 3 raw, 3 final, the drawn one


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("sampler_trace", {"top": 101}, "1..100"),
        ("sampler_trace", {"positions": [256]}, "0..255"),
        ("sampler_trace", {"depth": 2}, "top"),
        ("logprobs_for", ["hello world"], "logprobs_for"),
        ("logprobs_for", [10**6], "logprobs_for"),
    ],
)
def test_bounds_are_a_400_naming_the_parameter(
    http: httpx.Client, field: str, value: Any, says: str
) -> None:
    r = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": ASK, "max_tokens": 2, field: value},
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == field and says in err["message"]


def test_the_client_rejects_a_bad_trace_before_sending(local_server: Any) -> None:
    with tmlab.Client(base_url=local_server.base_url, model=MODEL) as client:
        with pytest.raises(tmlab.ParameterError, match="sampler_trace"):
            client.chat("Hi", sampler_trace={"top": 500})
        with pytest.raises(tmlab.ParameterError, match="logprobs_for"):
            client.chat("Hi", logprobs_for=[])


def test_stage_summary_and_plot(local_server: Any) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from tmlab.frames import stage_summary
    from tmlab.plots import plot_stages

    with tmlab.Client(base_url=local_server.base_url, model=MODEL) as client:
        res = client.chat(ASK, top_k=5, temperature=0.7, seed=4, max_tokens=3, sampler_trace=True)
    summary = stage_summary(res)
    # raw, top_k and temperature acted at each of the 3 positions
    assert list(summary["stage"]) == ["raw", "top_k", "temperature"] * 3
    assert (summary[summary["stage"] == "top_k"]["kept"] == 5).all()
    fig = plot_stages(res, 1)
    assert len(fig.axes) == 3
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles[1].startswith("top_k = 5") and "kept 5" in titles[1]
    with pytest.raises(tmlab.ParameterError, match="position 9"):
        plot_stages(res, 9)
    import matplotlib.pyplot as plt

    plt.close("all")


def test_a_server_without_a_trace_says_so(llamacpp_server: str) -> None:
    with tmlab.Client(base_url=llamacpp_server, timeout=120) as client:
        res = client.chat("Hi", max_tokens=2, sampler_trace=True)
    df = res.trace_frame()
    assert df.empty and "No sampler trace" in df.attrs["notes"]


def test_token_probs_exact_on_the_embedded_server_bounded_elsewhere(
    local_server: Any, llamacpp_server: str
) -> None:
    with tmlab.Client(base_url=local_server.base_url, model=MODEL) as client:
        here = client.chat(ASK, **SETTINGS, seed=3, max_tokens=4, logprobs_for=[" purple"])
    exact = tmlab.token_probs(here, [" purple"])
    assert len(exact) == 4 and exact["exact"].all() and exact["source"].eq("logprobs_for").all()
    lf = here.logprobs_for_frame()
    assert exact["prob"].tolist() == pytest.approx(lf["prob"].tolist())

    with tmlab.Client(base_url=llamacpp_server, timeout=120) as client:
        res = client.chat(ASK, temperature=0, max_tokens=4, logprobs=True, top_logprobs=5)
    first = res.choices[0].logprobs[0]
    best = max(first.top, key=lambda a: a.logprob)
    far = tmlab.token_probs(res, [best.token, " purple"])
    at0 = far[far["position"] == 0].set_index("token")
    # among the alternatives: exact, rank 1; outside: a bound no larger than the 5th's p
    assert at0.loc[best.token, "exact"] and at0.loc[best.token, "rank"] == 1
    assert at0.loc[best.token, "prob"] == pytest.approx(math.exp(best.logprob))
    outside = at0.loc[" purple"]
    assert not outside["exact"] and math.isnan(outside["prob"])
    least = min(math.exp(a.logprob) for a in first.top)
    assert 0 < outside["bound"] <= least
    assert "not among them" in outside["source"] and "p ≤ bound" in far.attrs["notes"]
    with tmlab.Client(base_url=llamacpp_server, timeout=120) as client:
        plain = client.chat("Hi", max_tokens=2)
    with pytest.raises(tmlab.ParameterError, match="no logprobs"):
        tmlab.token_probs(plain, ["x"])


def test_a_stage_that_allows_nothing_is_an_empty_distribution_not_a_crash() -> None:
    # a grammar under extreme penalties can leave no token: the draw then ends the answer, and
    # the trace's reading of that stage must not raise (it runs inside the server's draw)
    from tmlab.server.trace import _Dist

    none = _Dist(np.array([1, 2]), np.array([-np.inf, -np.inf], dtype=np.float32), 10)
    assert (none.kept, none.entropy(), none.rank(1), none.top(3)) == (0, 0.0, None, [])
    assert np.isneginf(none.at(np.array([1, 5]))).all()
    some = _Dist(np.array([7, 2, 9]), np.array([1.0, 2.0, -np.inf], dtype=np.float32), 10)
    assert (some.kept, some.rank(2), some.rank(7), some.rank(9), some.top(5)) == (
        2,
        1,
        2,
        None,
        [2, 7],
    )
    assert some.at(np.array([2, 7, 9, 0])) == pytest.approx(
        [-math.log1p(math.exp(-1)), -1 - math.log1p(math.exp(-1)), -np.inf, -np.inf]
    )
