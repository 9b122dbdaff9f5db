"""Processed and prompt logprobs of the embedded server, against an independent computation.

An independent llama.cpp model, loaded here with ``logits_all=True``, evaluates the same
prompt and tokens (the prompt in one batch, then one token at a time, as the server does).
From its raw logits, numpy replays the server's sampler in llama.cpp's order — logit bias,
penalties over the tokens generated so far, then top_k, typical_p, top_p, min_p, the
temperature — and the log-softmax (float64) of what is left is the distribution the token
was drawn from. ``logprobs_mode="processed_logprobs"`` must return exactly that (≤ 1e-6), with
no entry for the tokens the sampler removed, and probability 1 for a greedy choice; the same
request in either mode must draw the same tokens. The truncation decisions are replayed in
float32, as llama.cpp makes them.

``echo`` with ``logprobs`` returns the prompt's tokens first, each with the log-softmax of the
previous position's raw logits (the first with none), and leaves the answer and the usage
exactly as without echo.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from _e2e import MODEL, STORY

from tmlab.server.engine import default_model_path

pytestmark = pytest.mark.slow

TOL = 1e-6
TOP = 20


@pytest.fixture(scope="module")
def reference() -> Iterator[Any]:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(default_model_path()), n_ctx=1024, logits_all=True, verbose=False
    )
    yield llm
    llm.close()


# The numpy replay between two requests can outlast the server's keep-alive (5 s): a new
# connection per request, so that none is reused just as the server closes it.
CLOSE = {"Connection": "close"}


def _post(http: Any, **params: Any) -> dict[str, Any]:
    body = {"model": MODEL, "messages": STORY, "return_token_ids": True, **params}
    res = http.post("/v1/chat/completions", json=body, headers=CLOSE)
    assert res.status_code == 200, res.text
    return dict(res.json())


def _raw_rows(reference: Any, prompt: list[int], generated: list[int]) -> np.ndarray:
    """The raw float32 logits before each generated token, as the server evaluated them."""
    reference.reset()
    reference.eval(prompt)
    for tok in generated[:-1]:
        reference.eval([tok])
    scores = np.asarray(reference.scores, dtype=np.float32)
    return scores[len(prompt) - 1 : len(prompt) - 1 + len(generated)].copy()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max()
    return x - (m + math.log(np.exp(x - m).sum()))


def _softmax32(logit: np.ndarray) -> np.ndarray:
    """llama.cpp's softmax: expf(l - max), summed in float32 in array order."""
    p = np.exp(logit - logit.max()).astype(np.float32)
    return (p / _cumsum32(p)[-1]).astype(np.float32)


def _cumsum32(p: np.ndarray) -> np.ndarray:
    """Running float32 sums, one addition after another (np.cumsum is sequential)."""
    return np.cumsum(p.astype(np.float32), dtype=np.float32)


def _replay(row: np.ndarray, history: list[int], s: dict[str, Any]) -> tuple[np.ndarray, Any]:
    """(ids kept, their logits after the temperature): the candidates the draw used."""
    logit = row.astype(np.float32).copy()
    for tok, bias in (s.get("logit_bias") or {}).items():
        logit[int(tok)] = np.float32(logit[int(tok)] + np.float32(bias))
    rep = np.float32(s.get("repetition_penalty", 1.0))
    freq = np.float32(s.get("frequency_penalty", 0.0))
    pres = np.float32(s.get("presence_penalty", 0.0))
    if (rep, freq, pres) != (1.0, 0.0, 0.0):
        counts: dict[int, int] = {}
        for tok in history[-256:]:
            counts[tok] = counts.get(tok, 0) + 1
        for tok, count in counts.items():
            v = logit[tok]
            v = np.float32(v * rep) if v <= 0 else np.float32(v / rep)
            logit[tok] = np.float32(v - np.float32(np.float32(count) * freq + pres))
    ids = np.arange(logit.size)
    # llama.cpp keeps candidates sorted by logit once a truncation sorted them
    order = np.argsort(-logit, kind="stable")
    ids, logit = ids[order], logit[order]
    if s.get("top_k", 0) > 0:
        ids, logit = ids[: s["top_k"]], logit[: s["top_k"]]
    if s.get("typical_p", 1.0) < 1.0:
        p = _softmax32(logit)
        entropy = _cumsum32((-p * np.log(p)).astype(np.float32))[-1]
        shifted = np.abs(-np.log(p) - entropy).astype(np.float32)
        idx = np.argsort(shifted, kind="stable")
        cum = _cumsum32(p[idx])
        n = (
            int(np.argmax(cum > np.float32(s["typical_p"]))) + 1
            if (cum > s["typical_p"]).any()
            else len(idx)
        )
        ids, logit = ids[idx[:n]], logit[idx[:n]]
        order = np.argsort(-logit, kind="stable")  # later steps only need the set
        ids, logit = ids[order], logit[order]
    if s.get("top_p", 1.0) < 1.0:
        cum = _cumsum32(_softmax32(logit))
        reach = np.flatnonzero(cum >= np.float32(s["top_p"]))
        n = int(reach[0]) + 1 if reach.size else len(ids)
        ids, logit = ids[:n], logit[:n]
    if s.get("min_p", 0.0) > 0.0:
        keep = logit >= np.float32(logit.max() + np.float32(math.log(np.float32(s["min_p"]))))
        keep[np.argmax(logit)] = True
        ids, logit = ids[keep], logit[keep]
    logit = (logit / np.float32(s.get("temperature", 1.0))).astype(np.float32)
    return ids, logit


SETTINGS: tuple[dict[str, Any], ...] = (
    {"temperature": 1.0},
    {"temperature": 0.7},
    {"temperature": 1.3, "top_k": 10},
    {"temperature": 0.8, "top_p": 0.8},
    {"temperature": 1.0, "min_p": 0.1},
    {"temperature": 1.0, "typical_p": 0.7},
    {
        "temperature": 0.9,
        "repetition_penalty": 1.3,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.25,
    },
    {"temperature": 1.0, "logit_bias": {"504": 4.0, "2705": -100}},
    {"temperature": 0.7, "top_k": 40, "top_p": 0.9, "min_p": 0.05, "repetition_penalty": 1.1},
)


def _name(s: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in s.items() if k != "logit_bias") + (
        ",logit_bias" if "logit_bias" in s else ""
    )


@pytest.mark.parametrize("settings", SETTINGS, ids=_name)
def test_processed_logprobs_are_the_distribution_drawn_from(
    http: Any, reference: Any, settings: dict[str, Any]
) -> None:
    common = {"seed": 17, "max_tokens": 14, "logprobs": True, "top_logprobs": TOP, **settings}
    processed = _post(http, logprobs_mode="processed_logprobs", **common)
    raw = _post(http, **common)
    assert processed["logprobs_mode"] == "processed_logprobs"
    assert raw["logprobs_mode"] == "raw_logprobs"
    lp = processed["choices"][0]["logprobs"]
    assert lp["logprobs_mode"] == "processed_logprobs"
    content = lp["content"]
    tokens = [e["token_id"] for e in content]
    # the mode changes what is reported, never what is drawn
    assert tokens == [e["token_id"] for e in raw["choices"][0]["logprobs"]["content"]]
    assert processed["choices"][0]["message"] == raw["choices"][0]["message"]

    rows = _raw_rows(reference, processed["prompt_token_ids"], tokens)
    removed_somewhere = False
    for step, entry in enumerate(content):
        ids, logit = _replay(rows[step], tokens[:step], settings)
        finite = np.isfinite(logit)
        ids, dist = ids[finite], _log_softmax(logit[finite])
        assert entry["token_id"] in set(ids.tolist()), "the token was drawn from what was kept"
        expected = dict(zip(ids.tolist(), dist.tolist(), strict=True))
        assert entry["logprob"] == pytest.approx(expected[entry["token_id"]], abs=TOL)
        alts = entry["top_logprobs"]
        assert len(alts) == min(TOP, len(ids))  # removed tokens have no entry
        best = np.argsort(-dist, kind="stable")[: len(alts)]
        got = {a["token_id"]: a["logprob"] for a in alts}
        for i in best:  # the top of the processed distribution (ties may swap order)
            assert got.get(int(ids[i])) == pytest.approx(float(dist[i]), abs=TOL)
        assert [a["logprob"] for a in alts] == sorted((a["logprob"] for a in alts), reverse=True)
        assert math.fsum(math.exp(v) for v in dist) == pytest.approx(1.0, abs=1e-9)
        removed_somewhere |= len(ids) < rows.shape[1]
        # and the raw numbers of the same step are the untouched log-softmax
        raw_entry = raw["choices"][0]["logprobs"]["content"][step]
        assert raw_entry["logprob"] == pytest.approx(
            float(_log_softmax(rows[step])[entry["token_id"]]), abs=TOL
        )
    truncating = any(k in settings for k in ("top_k", "top_p", "min_p", "typical_p"))
    assert removed_somewhere == truncating


def test_processed_at_temperature_one_without_truncation_is_raw(http: Any) -> None:
    common = {"seed": 5, "max_tokens": 8, "logprobs": True, "top_logprobs": 5, "temperature": 1}
    processed = _post(http, logprobs_mode="processed_logprobs", **common)
    raw = _post(http, logprobs_mode="raw_logprobs", **common)
    for a, b in zip(
        processed["choices"][0]["logprobs"]["content"],
        raw["choices"][0]["logprobs"]["content"],
        strict=True,
    ):
        assert a["logprob"] == pytest.approx(b["logprob"], abs=TOL)
        assert [t["token_id"] for t in a["top_logprobs"]] == [
            t["token_id"] for t in b["top_logprobs"]
        ]


def test_greedy_processed_gives_the_chosen_token_probability_one(http: Any) -> None:
    res = _post(
        http,
        temperature=0,
        max_tokens=6,
        logprobs=True,
        top_logprobs=5,
        logprobs_mode="processed_logprobs",
    )
    for entry in res["choices"][0]["logprobs"]["content"]:
        assert entry["logprob"] == 0.0
        assert [(t["token_id"], t["logprob"]) for t in entry["top_logprobs"]] == [
            (entry["token_id"], 0.0)
        ]


def test_processed_stream_carries_what_the_response_has(http: Any) -> None:
    import json

    common = {"seed": 3, "max_tokens": 10, "logprobs": True, "top_logprobs": 3}
    common |= {"temperature": 0.8, "top_p": 0.9, "logprobs_mode": "processed_logprobs"}
    whole = _post(http, **common)
    body = {"model": MODEL, "messages": STORY, "stream": True, **common}
    entries: list[dict[str, Any]] = []
    modes = set()
    with http.stream("POST", "/v1/chat/completions", json=body, headers=CLOSE) as res:
        for line in res.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if "logprobs_mode" in chunk:
                modes.add(chunk["logprobs_mode"])
            for c in chunk["choices"]:
                if c.get("logprobs"):
                    entries += c["logprobs"]["content"]
                    modes.add(c["logprobs"]["logprobs_mode"])
    assert modes == {"processed_logprobs"}
    assert entries == whole["choices"][0]["logprobs"]["content"]


def test_mirostat_processed_is_the_truncated_distribution(http: Any) -> None:
    """Mirostat v2 truncates by surprise and draws; its candidates are read after the draw."""
    common = {"seed": 2, "max_tokens": 10, "logprobs": True, "top_logprobs": TOP}
    common |= {"temperature": 1.0, "mirostat_target": 2.0}
    res = _post(http, logprobs_mode="processed_logprobs", **common)
    raw = _post(http, **common)
    content = res["choices"][0]["logprobs"]["content"]
    assert [e["token_id"] for e in content] == [
        e["token_id"] for e in raw["choices"][0]["logprobs"]["content"]
    ]
    for entry in content:
        probs = [math.exp(t["logprob"]) for t in entry["top_logprobs"]]
        # what is kept sums to 1 (at most TOP are shown); the chosen one is among them
        # whenever fewer than TOP were kept
        if len(probs) < TOP:
            assert math.fsum(probs) == pytest.approx(1.0, abs=1e-9)
            assert entry["token_id"] in {t["token_id"] for t in entry["top_logprobs"]}


# --- prompt logprobs (echo) -------------------------------------------------------------


def _prompt_reference(reference: Any, prompt: list[int]) -> np.ndarray:
    reference.reset()
    reference.eval(prompt)
    return np.asarray(reference.scores[: len(prompt)], dtype=np.float32).copy()


@pytest.mark.parametrize("mode", ["raw_logprobs", "processed_logprobs"])
def test_echo_returns_the_prompt_tokens_with_their_logprobs(
    http: Any, reference: Any, mode: str
) -> None:
    common = {"temperature": 0.8, "seed": 4, "max_tokens": 6, "logprobs_mode": mode}
    plain = _post(http, logprobs=True, top_logprobs=3, **common)
    res = _post(http, echo=True, logprobs=True, top_logprobs=3, **common)
    prompt = res["prompt_token_ids"]
    lp = res["choices"][0]["logprobs"]
    content = lp["content"]
    assert lp["echo_tokens"] == len(prompt)
    assert [e["token_id"] for e in content[: len(prompt)]] == prompt
    assert content[0]["logprob"] is None and content[0]["top_logprobs"] == []
    # the answer after the echo is the plain request's, number for number; usage unchanged
    assert content[len(prompt) :] == plain["choices"][0]["logprobs"]["content"]
    assert res["usage"] == plain["usage"]
    text = "".join(e["token"] for e in content)
    assert res["choices"][0]["message"]["content"] == text

    scores = _prompt_reference(reference, prompt)
    for j in range(1, len(prompt)):
        lsm = _log_softmax(scores[j - 1])
        entry = content[j]
        assert entry["logprob"] == pytest.approx(float(lsm[prompt[j]]), abs=TOL)
        best = np.argsort(-lsm, kind="stable")[:3]
        assert [t["token_id"] for t in entry["top_logprobs"]] == [int(i) for i in best]
        assert [t["logprob"] for t in entry["top_logprobs"]] == pytest.approx(
            lsm[best].tolist(), abs=TOL
        )

    last = _post(http, echo_last=5, logprobs=True, top_logprobs=3, **common)
    lp5 = last["choices"][0]["logprobs"]
    assert lp5["echo_tokens"] == 5
    assert lp5["content"][:5] == content[len(prompt) - 5 : len(prompt)]
    assert lp5["content"][5:] == plain["choices"][0]["logprobs"]["content"]


def test_echo_last_longer_than_the_prompt_starts_with_a_null(http: Any) -> None:
    res = _post(http, temperature=0, max_tokens=1, echo_last=10_000, logprobs=True)
    n = len(res["prompt_token_ids"])
    lp = res["choices"][0]["logprobs"]
    assert lp["echo_tokens"] == n
    assert lp["content"][0]["logprob"] is None
    assert all(e["logprob"] is not None for e in lp["content"][1:])


def test_echo_without_logprobs_is_unchanged(http: Any) -> None:
    res = _post(http, temperature=0, max_tokens=3, echo=True)
    assert res["choices"][0]["logprobs"] is None
    assert "logprobs_mode" not in res


def test_bad_logprobs_mode_is_a_400_naming_it(http: Any) -> None:
    body = {"model": MODEL, "messages": STORY, "logprobs": True, "logprobs_mode": "logits"}
    res = http.post("/v1/chat/completions", json=body, headers=CLOSE)
    assert res.status_code == 400
    err = res.json()["error"]
    assert err["param"] == "logprobs_mode" and "processed_logprobs" in err["message"]


def test_extreme_temperature_processed_stays_valid_json(http: Any) -> None:
    # logits ÷ 1e-5 overflow float32: the draw had no distribution; the number says so (null)
    res = _post(
        http,
        temperature=1e-5,
        seed=1,
        max_tokens=3,
        logprobs=True,
        top_logprobs=3,
        logprobs_mode="processed_logprobs",
    )
    for entry in res["choices"][0]["logprobs"]["content"]:
        assert entry["logprob"] is None or entry["logprob"] <= 0.0


def test_echo_logprobs_stream_reassembles_to_the_response(local_server: Any) -> None:
    import tmlab

    common = {"temperature": 0.8, "seed": 6, "max_tokens": 5, "logprobs": True}
    common |= {"top_logprobs": 2, "echo": True, "n": 2}
    with tmlab.Client(base_url=local_server.base_url, model=MODEL, timeout=300.0) as c:
        whole = c.chat(STORY, **common)
        streamed = c.chat(STORY, stream=True, **common)
    for a, b in zip(whole.raw["choices"], streamed.raw["choices"], strict=True):
        assert a["logprobs"]["content"] == b["logprobs"]["content"]
        assert a["logprobs"]["echo_tokens"] == b["logprobs"]["echo_tokens"] > 0
        assert a["message"]["content"] == b["message"]["content"]
    assert streamed.raw["logprobs_mode"] == "raw_logprobs"
