"""What-if sampling against the exact full-vocabulary answer of the embedded model.

The server answers with ``top_logprobs=20``; an independent llama.cpp model, loaded here, gives
the full logits for the same prefixes. For every position and setting the *exact* what-if is
``softmax(logprobs / T)`` over the whole vocabulary, then top_k / top_p / min_p over the whole
vocabulary, renormalised; the *approximation* is :func:`tmlab.sampling.whatif` over the 20
returned alternatives. The error is the total variation ``TV = ½ Σ |approx − exact|`` over the
whole vocabulary (the approximation gives 0 outside the returned alternatives).

The bounds asserted, with S the returned alternatives (the true top 20), ``p_i`` their raw
probabilities, ``m = other_mass = 1 − Σ_S p_i``, ``q = min_S p_i`` (every unseen token has
p ≤ q), ``p_max`` the largest, ``ε_T`` the exact tempered mass outside S, and for the kept
returned alternatives K̂ ``r = (m / q) / Σ_K̂ (p_i / q)^(1/T)``, ``ε̄ = r / (1 + r)``:

* no truncation: the approximation is the exact distribution restricted to S and renormalised,
  so ``TV = ε_T`` exactly. For T ≤ 1 every unseen token's tempered weight is
  ``p^(1/T) = p · p^(1/T−1) ≤ p · q^(1/T−1)``, so the unseen weight is ≤ ``m · q^(1/T−1)`` and
  ``ε_T ≤ ε̄``; at T = 1, ``ε̄ = m``: the error is exactly the mass outside.
  Above T = 1 the unseen tail gains weight and no bound follows from ``m`` and ``q`` alone
  (it needs the vocabulary size): the error is measured and printed, not bounded.
* ``top_k = 5`` ≤ 20: the kept set is the true top 5 in both, so ``TV = 0``.
* ``min_p``: the rule compares ``(p_i / p_max)^(1/T)`` with min_p, the same for both on S; if
  ``(q / p_max)^(1/T) < min_p`` no unseen token passes and ``TV = 0``; otherwise, T ≤ 1,
  ``TV ≤ ε̄`` (the same argument over the kept set).
* ``top_p``: the approximate prefix K̂ overstates the mass of S by ``1/(1 − ε_T)``. If
  ``mass(K̂) · (1 − ε_T) ≥ top_p`` the exact rule keeps the same prefix and ``TV = 0``;
  otherwise the exact rule keeps more: its tokens past K̂ weigh less than ``top_p · ε_T`` plus
  one more token (at most ``g``, the approximate probability of the first alternative after
  K̂, or ``ε_T`` when K̂ is all of S), so ``TV ≤ ε_T + max(g, ε_T) / top_p``.

The package's own per-position bound (``tv_bound`` of :func:`tmlab.sampling.whatif`, computed
from the returned numbers alone) is checked too: the measured error never exceeds it.

Run with ``-s`` to see the table of measured errors (max and mean TV per temperature and
setting, and the mean of the package's bound where it is defined).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _e2e import MODEL

import tmlab
from tmlab.result import ChatResult
from tmlab.sampling import whatif
from tmlab.server.engine import default_model_path

pytestmark = pytest.mark.slow

TEMPERATURES = (0.5, 0.7, 1.0, 1.5)
SETTINGS: tuple[dict[str, Any], ...] = (
    {},
    {"top_k": 5},
    {"top_k": 20},
    {"top_p": 0.9},
    {"min_p": 0.1},
)
EXACT_TOL = 1e-9


@pytest.fixture(scope="module")
def reference() -> Iterator[Any]:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(default_model_path()), n_ctx=512, logits_all=True, verbose=False
    )
    yield llm
    llm.close()


def _full_logprobs(res: ChatResult, reference: Any) -> np.ndarray:
    """log-softmax of the reference model's logits at every generated position (float64)."""
    prompt_ids = res.prompt_token_ids
    assert prompt_ids, "the server returns prompt_token_ids with return_token_ids=True"
    generated = [t.token_id for t in res.choices[0].logprobs or []]
    # Evaluated as the server does (prompt in one batch, then token by token): another
    # batching changes the rounding of the quantised kernels.
    reference.reset()
    reference.eval(prompt_ids)
    for tok in generated[:-1]:
        reference.eval([tok])
    scores = np.asarray(reference.scores, dtype=np.float64)
    rows = scores[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(generated)]
    top = rows.max(axis=1, keepdims=True)
    return rows - (top + np.log(np.exp(rows - top).sum(axis=1, keepdims=True)))


def _exact(lp: np.ndarray, temperature: float, s: dict[str, Any]) -> np.ndarray:
    """The what-if over the whole vocabulary: temperature, then the truncation, renormalised."""
    z = lp / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    keep = np.ones_like(p, dtype=bool)
    if "top_k" in s:
        keep &= p >= np.sort(p)[::-1][s["top_k"] - 1]
    if "top_p" in s:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        n = int(np.searchsorted(cum, s["top_p"] - EXACT_TOL)) + 1
        keep[:] = False
        keep[order[:n]] = True
    if "min_p" in s:
        keep &= p >= s["min_p"] * p.max()
    out = np.where(keep, p, 0.0)
    return out / out.sum()


def _bound_terms(raw: np.ndarray, kept: np.ndarray, temperature: float) -> float:
    """ε̄ for T ≤ 1 from the returned data only (see the module docstring)."""
    q = raw.min()
    m = max(0.0, 1.0 - raw.sum())
    r = (m / q) / np.sum((raw[kept] / q) ** (1.0 / temperature))
    return float(r / (1.0 + r))


# The README's what-if paragraph, figure by figure, as written there: (max, mean) TV over the
# positions, per answer, temperature and setting. Each is checked to the digits written (a
# figure "0.11" holds for a measured 0.105 ≤ TV ≤ 0.115), and the README must say exactly these.
README_FIGURES: dict[str, dict[tuple[float, str], tuple[str, str]]] = {
    "factual": {
        (0.5, "no truncation"): ("4e-4", "5e-5"),
        (1.0, "no truncation"): ("0.11", "0.02"),
    },
    "story": {
        (0.5, "no truncation"): ("0.11", "0.014"),
        (1.0, "no truncation"): ("0.62", "0.24"),
        (1.5, "no truncation"): ("0.88", "0.66"),
        (1.0, "min_p=0.1"): ("0.05", "0.002"),
    },
}
README_EXACT = 1e-15  # "exact to 1e-15"
# where the README says the what-if was exact to 1e-15: (temperatures, setting) per answer
README_EXACT_CASES: dict[str, list[tuple[tuple[float, ...], str]]] = {
    "factual": [(TEMPERATURES, "top_k=5"), (TEMPERATURES, "top_k=20"), (TEMPERATURES, "min_p=0.1")],
    "story": [(TEMPERATURES, "top_k=5"), (TEMPERATURES, "top_k=20"), ((0.5, 0.7), "min_p=0.1")],
}
README = Path(__file__).parent.parent / "README.md"


def _agrees(measured: float, written: str) -> bool:
    """``measured`` rounds to ``written`` at the digits written ("4e-4": 3.5e-4 … 4.5e-4)."""
    figure = Decimal(written)
    half_unit = float(Decimal(1).scaleb(int(figure.as_tuple().exponent))) / 2
    return abs(measured - float(figure)) <= half_unit * (1 + 1e-9)


def _readme_whatif_text() -> str:
    text = " ".join(README.read_text(encoding="utf-8").split())
    start = text.index("**What-if sampling is an approximation")
    return text[start : text.index("###", start)]


def test_readme_states_the_figures_checked_here() -> None:
    """The figures checked below are the README's, word for word."""
    text = _readme_whatif_text()
    for figures in README_FIGURES.values():
        for (temperature, _), (top, mean) in figures.items():
            assert f"{top} / {mean} at T={temperature:g}" in text, (temperature, top, mean)
    assert "exact to 1e-15" in text


PROMPTS = (
    # (prompt, temperature of the answer): a peaked path, greedy; a flat one, sampled, with
    # much mass outside the top 20.
    ("What is the capital of France? Answer in one sentence.", 0.0),
    ("Tell me a short story about a dragon.", 1.0),
)


@pytest.fixture(scope="module", params=PROMPTS, ids=["factual", "story"])
def answer(request: pytest.FixtureRequest, local_server: Any) -> ChatResult:
    with tmlab.Client(base_url=local_server.base_url, model=MODEL, timeout=300.0) as client:
        return client.chat(
            request.param[0],
            temperature=request.param[1],
            seed=11,
            max_tokens=48,
            logprobs=True,
            top_logprobs=20,
            return_token_ids=True,
        )


def test_whatif_error_against_the_full_vocabulary(answer: ChatResult, reference: Any) -> None:
    full = _full_logprobs(answer, reference)
    tokens = answer.choices[0].logprobs or []
    assert len(tokens) >= 5
    table: dict[tuple[float, str], list[float]] = {}
    bounds: dict[tuple[float, str], list[float]] = {}
    exact_cases = 0
    for pos, tok in enumerate(tokens):
        ids = np.array([a.token_id for a in tok.top])
        returned = np.array([a.logprob for a in tok.top])
        assert len(ids) == 20
        # The alternatives are the reference's own numbers: any error below is the method's.
        np.testing.assert_allclose(returned, full[pos][ids], atol=1e-6)
        raw = np.exp(returned)
        q, p_max = raw.min(), raw.max()
        for temperature in TEMPERATURES:
            tempered = np.exp(full[pos] / temperature - (full[pos] / temperature).max())
            tempered /= tempered.sum()
            eps = 1.0 - tempered[ids].sum()  # exact tempered mass outside S
            for s in SETTINGS:
                df = whatif(answer, position=pos, temperature=temperature, **s)
                approx = np.zeros_like(full[pos])
                approx[df["token_id"].to_numpy(dtype=np.int64)] = df["whatif_prob"].to_numpy()
                exact = _exact(full[pos], temperature, s)
                tv = 0.5 * float(np.abs(approx - exact).sum())
                bound = float(df["tv_bound"].iloc[0])  # the package's own bound
                if not math.isnan(bound):
                    assert tv <= bound + 1e-9
                table.setdefault((temperature, _name(s)), []).append(tv)
                bounds.setdefault((temperature, _name(s)), []).append(bound)
                kept = df["kept"].to_numpy()
                raw_sorted = df["raw_prob"].to_numpy()
                small_t = temperature <= 1.0
                if not s:
                    assert tv == pytest.approx(eps, abs=1e-9)
                    if small_t:
                        assert eps <= _bound_terms(raw_sorted, kept, temperature) + 1e-12
                    if temperature == 1.0:
                        assert tv == pytest.approx(df["other_mass"].iloc[0], abs=1e-6)
                elif "top_k" in s:
                    assert tv <= EXACT_TOL
                    exact_cases += 1
                elif "min_p" in s:
                    if (q / p_max) ** (1.0 / temperature) < s["min_p"]:
                        assert tv <= EXACT_TOL
                        exact_cases += 1
                    elif small_t:
                        assert tv <= _bound_terms(raw_sorted, kept, temperature) + 1e-12
                else:  # top_p
                    # the untruncated what-if over S, aligned with df (same rank order)
                    full_s = whatif(answer, position=pos, temperature=temperature)
                    untruncated = full_s["whatif_prob"].to_numpy()
                    if untruncated[kept].sum() * (1 - eps) >= s["top_p"]:
                        # the exact rule keeps the same prefix
                        assert tv <= EXACT_TOL
                        exact_cases += 1
                    else:
                        after = untruncated[~kept]
                        g = float(after.max()) if after.size else eps
                        assert tv <= eps + max(g, eps) / s["top_p"] + 1e-9
    other = [1.0 - float(np.exp([a.logprob for a in t.top]).sum()) for t in tokens]
    _print_table(table, bounds, len(tokens), other)
    assert exact_cases > 0
    # the README's figures for this answer, at the digits it writes them
    name = "factual" if answer.request.get("temperature") == 0.0 else "story"
    for key, (top, mean) in README_FIGURES[name].items():
        errors = table[key]
        assert _agrees(max(errors), top), (name, key, "max", max(errors), top)
        assert _agrees(float(np.mean(errors)), mean), (name, key, "mean", np.mean(errors), mean)
    for temperatures, setting in README_EXACT_CASES[name]:
        for temperature in temperatures:
            worst = max(table[(temperature, setting)])
            assert worst <= README_EXACT, (name, temperature, setting, worst)


def _name(s: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in s.items()) or "no truncation"


def _print_table(
    table: dict[tuple[float, str], list[float]],
    bounds: dict[tuple[float, str], list[float]],
    n: int,
    other: list[float],
) -> None:
    print(
        f"\nwhat-if TV error vs the exact full-vocabulary answer, {n} positions, top 20; raw "
        f"other_mass mean {np.mean(other):.3f}, max {max(other):.3f}:"
    )
    print(f"{'T':>5}  {'setting':<14} {'max TV':>10} {'mean TV':>10} {'mean tv_bound':>14}")
    for key, errors in table.items():
        known = [b for b in bounds[key] if not math.isnan(b)]
        mean_bound = f"{np.mean(known):.2e}" if len(known) == len(errors) else "n/a"
        print(
            f"{key[0]:>5}  {key[1]:<14} {max(errors):>10.2e} {float(np.mean(errors)):>10.2e} "
            f"{mean_bound:>14}"
        )
    assert all(math.isfinite(e) for errors in table.values() for e in errors)
