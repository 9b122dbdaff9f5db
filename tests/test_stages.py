"""The sampler chain stage by stage (tmlab.analysis.stages): hand-computed distributions, the
two orders, exactness and bounds over partial candidates, and llama.cpp's own samplers."""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest

from tmlab.analysis.stages import cut_by, run_chain
from tmlab.errors import ParameterError

P3 = np.log([0.5, 0.3, 0.2])  # a whole vocabulary of three tokens


def by_name(stages):
    return {s.stage: s for s in stages}


def test_top_k_keeps_k_and_renormalises():
    st = by_name(run_chain(P3, top_k=2))
    assert st["input"].exact and np.allclose(st["input"].p, [0.5, 0.3, 0.2])
    assert np.allclose(st["top_k"].p, [0.625, 0.375, 0.0])
    assert st["top_k"].removed_mass == pytest.approx(0.2)
    assert st["top_k"].n_kept == 2 and st["top_k"].label == "exact"
    assert not st["top_p"].active and st["top_p"].setting is None
    h = -(0.625 * math.log(0.625) + 0.375 * math.log(0.375))
    assert st["temperature"].entropy == pytest.approx(h)


def test_order_matters_for_top_p_at_t2():
    # llama.cpp: top_p=0.75 on the raw distribution keeps 0.5 and 0.3 (0.5 + 0.3 >= 0.75),
    # then T=2 flattens what is kept: sqrt(0.5) : sqrt(0.3).
    llama = run_chain(P3, top_p=0.75, temperature=2.0, order="llama.cpp")
    a, b = math.sqrt(0.5), math.sqrt(0.3)
    assert [s.stage for s in llama] == [
        "input",
        "top_k",
        "typical_p",
        "top_p",
        "min_p",
        "temperature",
    ]
    assert np.allclose(llama[-1].p, [a / (a + b), b / (a + b), 0.0])
    assert cut_by(llama) == [None, None, "top_p"]
    # transformers: T=2 first gives 0.416, 0.322, 0.263; the first two hold 0.739 < 0.75,
    # so top_p keeps all three.
    hf = run_chain(P3, top_p=0.75, temperature=2.0, order="transformers")
    c = math.sqrt(0.2)
    assert [s.stage for s in hf] == ["input", "temperature", "top_k", "top_p", "min_p", "typical_p"]
    assert np.allclose(hf[-1].p, np.array([a, b, c]) / (a + b + c))
    assert cut_by(hf) == [None, None, None]


def test_min_p_is_relative_to_the_top_and_before_temperature_in_llama_order():
    st = by_name(run_chain(P3, min_p=0.5, temperature=0.5))
    assert list(st["min_p"].kept) == [True, True, False]  # 0.2 < 0.5 * 0.5
    assert np.allclose(st["temperature"].p, [0.25 / 0.34, 0.09 / 0.34, 0.0])
    # transformers applies min_p after T=0.5: 0.09/0.25 = 0.36 < 0.5 cuts 0.3 too
    hf = by_name(run_chain(P3, min_p=0.5, temperature=0.5, order="transformers"))
    assert list(hf["min_p"].kept) == [True, False, False]


def test_typical_can_remove_the_most_likely_token():
    # H = 1.0297 nats; |-log p - H|: 0.337 (0.5), 0.174 (0.3), 0.580 (0.2)
    st = by_name(run_chain(P3, typical_p=0.25))
    assert list(st["typical_p"].kept) == [False, True, False]
    assert np.allclose(st["temperature"].p, [0.0, 1.0, 0.0])
    st = by_name(run_chain(P3, typical_p=0.5))
    assert np.allclose(st["typical_p"].p, [0.625, 0.375, 0.0])


def test_cut_by_names_the_stage_that_removed_each_candidate():
    stages = run_chain(P3, top_k=2, min_p=0.7)
    assert cut_by(stages) == [None, "min_p", "top_k"]


def test_greedy_is_the_limit_and_has_no_truncation_in_llama_order():
    stages = run_chain(P3, temperature=0.0, top_k=1, top_p=0.1)
    assert np.allclose(stages[-1].p, [1.0, 0.0, 0.0])
    assert not by_name(stages)["top_k"].active and by_name(stages)["temperature"].active


# --- partial candidates: exact when the tail is known to be cut, else a bound --------------

PART = np.log([0.5, 0.2, 0.1])  # the top three; 0.2 of the mass is elsewhere


def test_partial_input_is_exact_and_shows_the_other_mass():
    st = run_chain(PART, other_mass=0.2)[0]
    assert st.exact and np.allclose(st.p, [0.5, 0.2, 0.1]) and st.other == pytest.approx(0.2)


def test_partial_top_k_within_candidates_is_exact():
    st = by_name(run_chain(PART, other_mass=0.2, top_k=2, temperature=0.5))
    assert st["top_k"].exact and st["temperature"].exact
    assert np.allclose(st["temperature"].p, [0.25 / 0.29, 0.04 / 0.29, 0.0])
    assert st["top_k"].removed_mass == pytest.approx(0.3)  # 0.1 and the unseen 0.2


def test_partial_top_p_reached_within_candidates_is_exact():
    st = by_name(run_chain(PART, other_mass=0.2, top_p=0.6))
    assert st["top_p"].exact and np.allclose(st["top_p"].p, [5 / 7, 2 / 7, 0.0])


def test_partial_top_p_not_reached_is_an_approximation_with_its_bound():
    st = by_name(run_chain(PART, other_mass=0.2, top_p=0.85))
    assert not st["top_p"].exact
    assert np.allclose(st["top_p"].p, [0.625, 0.25, 0.125])  # as if the tail did not exist
    assert st["top_p"].bound == pytest.approx(0.2)  # x / (S + x), x ≤ 0.2, S = 0.8
    assert st["top_p"].label == "approximate (TV ≤ 0.2)"


def test_partial_min_p_above_the_tail_is_exact_below_it_is_not():
    st = by_name(run_chain(PART, other_mass=0.2, min_p=0.3))  # threshold 0.15 > 0.1
    assert st["min_p"].exact and np.allclose(st["min_p"].p, [5 / 7, 2 / 7, 0.0])
    st = by_name(run_chain(PART, other_mass=0.2, min_p=0.1))  # threshold 0.05 ≤ 0.1
    assert not st["min_p"].exact


def test_partial_temperature_bound_follows_tv_bound_reasoning():
    # T = 0.5: weights 0.25, 0.04, 0.01; an unseen token ≤ 0.1 weighs ≤ p·0.1, so the tail
    # weighs ≤ 0.02: TV ≤ 0.02 / 0.32
    st = by_name(run_chain(PART, other_mass=0.2, temperature=0.5))
    assert st["temperature"].bound == pytest.approx(0.02 / 0.32)
    assert np.allclose(st["temperature"].p, [0.25 / 0.3, 0.04 / 0.3, 0.01 / 0.3])
    # above T = 1 no bound without the vocabulary's size
    assert math.isnan(
        by_name(run_chain(PART, other_mass=0.2, temperature=1.5))["temperature"].bound
    )


def test_unknown_other_mass_and_typical_give_no_bound():
    st = by_name(run_chain(PART, other_mass=None, top_p=0.5))
    assert not st["top_p"].exact and math.isnan(st["top_p"].bound)
    assert by_name(run_chain(PART, other_mass=None, top_k=2))["top_k"].exact
    assert math.isnan(by_name(run_chain(PART, other_mass=0.2, typical_p=0.9))["typical_p"].bound)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"top_p": 1.5}, "top_p"),
        ({"min_p": -0.1}, "min_p"),
        ({"typical_p": 0.0}, "typical_p"),
        ({"temperature": 3}, "temperature"),
        ({"top_k": 2.5}, "top_k"),
        ({"order": "vllm"}, "order"),
        ({"other_mass": 2.0}, "other_mass"),
    ],
)
def test_bad_settings_name_the_parameter(kwargs, name):
    with pytest.raises(ParameterError) as err:
        run_chain(P3, **kwargs)
    assert err.value.param == name


def test_bad_logits():
    with pytest.raises(ParameterError, match="logits"):
        run_chain(np.array([np.nan, 1.0]))
    with pytest.raises(ParameterError, match="logits"):
        run_chain(np.zeros((2, 2)))


# --- the whole vocabulary against llama.cpp's own samplers -----------------------------------


def _llama(row: np.ndarray, **kw: float) -> tuple[np.ndarray, np.ndarray]:
    llama_cpp = pytest.importorskip("llama_cpp")
    from llama_cpp._internals import LlamaSampler, LlamaTokenDataArray

    cand = LlamaTokenDataArray(n_vocab=row.shape[0])
    cand.copy_logits(row)
    pick = LlamaSampler()
    try:
        if kw["top_k"] > 0:
            pick.add_top_k(int(kw["top_k"]))
        if kw["typical_p"] < 1:
            pick.add_typical(kw["typical_p"], 1)
        if kw["top_p"] < 1:
            pick.add_top_p(kw["top_p"], 1)
        if kw["min_p"] > 0:
            pick.add_min_p(kw["min_p"], 1)
        pick.add_temp(kw["temperature"])
        llama_cpp.llama_sampler_apply(pick.sampler, ctypes.byref(cand.candidates))
        size = cand.candidates.size
        ids = np.array(cand.candidates_data.id[:size])
        lg = np.array(cand.candidates_data.logit[:size], dtype=np.float64)
    finally:
        pick.close()
    p = np.exp(lg - lg.max())
    return ids, p / p.sum()


def test_whole_vocabulary_matches_llama_cpp_samplers():
    rng = np.random.default_rng(7)
    for _ in range(40):
        n = int(rng.choice([60, 3000, 49152]))
        row = (rng.standard_normal(n) * rng.uniform(1, 4)).astype(np.float32)
        kw = {
            "top_k": int(rng.choice([0, 5, 40, 300])),
            "typical_p": float(rng.choice([1.0, 1.0, 0.9, 0.5])),
            "top_p": float(rng.choice([1.0, 0.9, 0.5, 0.95])),
            "min_p": float(rng.choice([0.0, 0.05, 0.2])),
            "temperature": float(rng.choice([1.0, 0.7, 1.5])),
        }
        ids, p = _llama(row, **kw)
        last = run_chain(row, **kw)[-1]
        assert set(np.flatnonzero(last.kept).tolist()) == set(ids.tolist()), kw
        assert np.abs(last.p[ids] - p).max() <= 1e-6, kw
        assert last.p.sum() == pytest.approx(1.0)
