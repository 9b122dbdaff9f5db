"""The determinism audit: send the same request several times and see what ``seed`` holds.

::

    report = tmlab.audit("Tell me a joke.", repeats=8, seed=7, temperature=1.0, max_tokens=32)
    report                  # identical? where did the answers first differ? how far apart
                            # were the probabilities of the tokens they shared?
    report.frame()          # one row per run
    tmlab.diff(res_a, res_b)  # two answers aligned token by token, the divergence marked

Answers are compared token by token when the results carry logprobs (the audit asks for
them), else by pieces of text (words, spaces and punctuation). Run 0 is the reference: each
other run is compared with it. ``max |Δ logprob|`` is taken over the generated tokens that
two runs share before they diverge, so it shows whether the server computed the same
probabilities, not only the same words.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tmlab.client import Client
from tmlab.client.base import BaseClient, Messages
from tmlab.errors import ParameterError
from tmlab.params import validate_params

if TYPE_CHECKING:
    import pandas as pd

    from tmlab.result import ChatResult

from tmlab.analysis.align import Diff, Units, diff, diff_units, max_dlogprob, unit_of, units_of

__all__ = ["AuditReport", "Diff", "Divergence", "audit", "diff"]

SEED_PROMISE = (
    "What seed promises: the random draws of sampling start from the same state, so the same "
    "request to the same model on the same server software and hardware samples the same "
    "tokens. What it does not promise: the same answer on another server version, on other "
    "hardware, or when other requests share the batch with yours. The probabilities "
    "themselves can then differ in the last digits, and where two tokens are nearly tied such "
    "a difference can pick the other one; from there on the answers part ways. Providers call "
    "seeded sampling 'best effort' for this reason."
)


# -- the audit -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Divergence:
    """Where the earliest difference between run 0 and another run happens."""

    run: int
    position: int
    unit: str
    token_ref: str | None  # run 0's token there (None: run 0 had ended)
    token_other: str | None
    logprob_ref: float | None
    logprob_other: float | None
    alternatives_ref: list[tuple[str, float]]
    alternatives_other: list[tuple[str, float]]
    prefix: str  # the text both share before it


@dataclass(frozen=True, repr=False)
class AuditReport:
    """What an :func:`audit` found: identical or not, the first divergence, logprob drift.

    ``max_abs_dlogprob`` is the largest |Δ logprob| between run 0 and any other run over the
    generated tokens they share before diverging (``None`` without logprobs); 0 means the
    server computed bit-for-bit the same probabilities. ``str(report)`` explains it in words.
    """

    identical: bool
    runs: int
    seed: int | None
    params: dict[str, Any]
    model: str | None
    unit: str
    distinct_answers: int
    answers: dict[str, int]
    divergence: Divergence | None
    max_abs_dlogprob: float | None
    max_abs_dlogprob_at: tuple[int, int] | None  # (run, position)
    shared_prefix: int  # positions every run shares with run 0
    results: list[ChatResult] = field(repr=False)
    diffs: list[Diff] = field(repr=False)  # run i vs run 0, for i = 1..runs-1

    @classmethod
    def from_results(
        cls,
        results: Sequence[ChatResult],
        *,
        seed: int | None = None,
        params: dict[str, Any] | None = None,
    ) -> AuditReport:
        """Analyse results of the same request (run 0 is the reference)."""
        results = list(results)
        if len(results) < 2:
            raise ParameterError("repeats", "an audit needs at least 2 results", "≥ 2")
        unit = unit_of(results)
        seqs = [units_of(r, unit) for r in results]
        diffs = [diff_units(seqs[0], s, unit) for s in seqs[1:]]
        counts = Counter(r.text for r in results)
        div = None
        drift: tuple[float, int, int] | None = None
        for run, (d, seq) in enumerate(zip(diffs, seqs[1:], strict=True), start=1):
            if d.position is not None and (div is None or d.position < div.position):
                div = _divergence(run, d, seqs[0], seq)
            found = max_dlogprob(seqs[0], seq, d.shared)
            if found is not None and (drift is None or found[0] > drift[0]):
                drift = (found[0], run, found[1])
        sent = dict(params if params is not None else _params_of(results[0]))
        return cls(
            identical=all(d.identical for d in diffs) and len(counts) == 1,
            runs=len(results),
            seed=seed if seed is not None else sent.get("seed"),
            params=sent,
            model=results[0].model,
            unit=unit,
            distinct_answers=len(counts),
            answers=dict(counts.most_common()),
            divergence=div,
            max_abs_dlogprob=None if drift is None else drift[0],
            max_abs_dlogprob_at=None if drift is None else (drift[1], drift[2]),
            shared_prefix=min(d.shared for d in diffs),
            results=results,
            diffs=diffs,
        )

    def frame(self) -> pd.DataFrame:
        """One row per run: its answer, how it compares with run 0, tokens, latency, history id."""
        import pandas as pd

        rows = []
        for i, res in enumerate(self.results):
            d = self.diffs[i - 1] if i else None
            rows.append(
                {
                    "run": i,
                    "text": res.text,
                    "identical_to_run0": True if d is None else d.identical,
                    "first_divergence": None if d is None else d.position,
                    "shared_with_run0": len(units_of(res, self.unit).tokens)
                    if d is None
                    else d.shared,
                    "max_abs_dlogprob": 0.0 if d is None else d.max_abs_dlogprob,
                    "finish_reason": res.finish_reason,
                    "completion_tokens": res.usage.completion_tokens,
                    "latency_s": res.timing.latency_s,
                    "history_id": getattr(res, "history_id", None),
                }
            )
        df = pd.DataFrame.from_records(rows)
        for col in ("first_divergence", "shared_with_run0", "completion_tokens", "history_id"):
            df[col] = pd.array(df[col].tolist(), dtype="Int64")
        for col in ("max_abs_dlogprob", "latency_s"):
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
        df.attrs["notes"] = (
            f"run 0 is the reference. first_divergence: the first {self.unit} position "
            f"(0-based) where the run differs from run 0 (<NA>: identical). max_abs_dlogprob: "
            f"the largest |Δ logprob| between the run's and run 0's generated tokens over the "
            f"{self.unit}s they share (NaN without logprobs)."
        )
        return df

    # -- explaining ---------------------------------------------------------------------

    def __repr__(self) -> str:
        verdict = "identical" if self.identical else f"{self.distinct_answers} distinct answers"
        parts = [f"{self.runs} runs ({self._setting()}): {verdict}"]
        if self.divergence is not None:
            d = self.divergence
            parts.append(f"first divergence at {d.unit} {d.position} (run {d.run})")
        if self.max_abs_dlogprob is not None:
            parts.append(f"max |Δ logprob| {self.max_abs_dlogprob:.3g}")
        return "<AuditReport " + "; ".join(parts) + "; print() it for the explanation>"

    def _setting(self) -> str:
        temp = self.params.get("temperature")
        parts = [f"seed={self.seed}" if self.seed is not None else "no seed"]
        parts.append(f"temperature={temp}" if temp is not None else "the server's temperature")
        if self.model:
            parts.append(f"model {self.model}")
        return ", ".join(parts)

    def _verdict(self) -> str:
        if self.identical:
            n = len(self.diffs[0].tokens_a) if self.diffs else 0
            u = self.unit
            return f"IDENTICAL: all {self.runs} answers are the same, {u} for {u} ({n} {u}s)."
        return (
            f"NOT IDENTICAL: {self.distinct_answers} different answers among {self.runs} runs; "
            f"every run shares at least its first {self.shared_prefix} {self.unit}s with run 0."
        )

    def _divergence_lines(self) -> list[str]:
        from tmlab.display import token_shown

        d = self.divergence
        if d is None:
            return []

        def tok(t: str | None, lp: float | None) -> str:
            if t is None:
                return "nothing (it had ended)"
            return token_shown(t) + (
                f" (logprob {lp:.3f}, p={math.exp(lp):.3f})" if lp is not None else ""
            )

        lines = [
            f"First divergence: {d.unit} {d.position} (0-based), between run 0 and run {d.run}: "
            f"run 0 has {tok(d.token_ref, d.logprob_ref)}, run {d.run} has "
            f"{tok(d.token_other, d.logprob_other)}.",
            f"Shared text before it: {token_shown(d.prefix[-80:])}",
        ]
        if d.alternatives_ref:
            alts = ", ".join(f"{token_shown(t)} {lp:.3f}" for t, lp in d.alternatives_ref)
            lines.append(f"Alternatives run 0 was offered there (token logprob): {alts}")
        return lines

    def _drift_line(self) -> str:
        if self.max_abs_dlogprob is None:
            if self.unit == "token":
                return "No run shares a first token with run 0: no probabilities to compare."
            return "No logprobs: the probabilities could not be compared."
        where = ""
        if self.max_abs_dlogprob_at is not None and self.max_abs_dlogprob > 0:
            run, pos = self.max_abs_dlogprob_at
            where = f" (run {run}, {self.unit} {pos})"
        line = (
            f"Over the tokens the runs share with run 0, max |Δ logprob| = "
            f"{self.max_abs_dlogprob:.3g}{where} (logprobs as the server returned them; the "
            f"embedded server's are the model's raw ones, before temperature)"
        )
        if self.max_abs_dlogprob == 0:
            return line + ": the server computed exactly the same probabilities every time."
        return line + (
            ": the same tokens came with slightly different probabilities, so the server's "
            "arithmetic differed between runs (batching, kernels). A seed fixes the random "
            "draws, not the arithmetic."
        )

    def _meaning(self) -> str:
        temp = self.params.get("temperature")
        if temp == 0:
            return (
                "temperature=0 is greedy decoding: there is no random draw, so seed plays no "
                "role. Any difference comes from the arithmetic: where two tokens are nearly "
                "tied, a tiny numerical difference can pick the other one."
            )
        if self.seed is None:
            return (
                "No seed was sent, so every run drew its own random numbers: with temperature "
                "> 0 different answers are expected. This shows the spread of the sampling, "
                "not a fault. " + SEED_PROMISE
            )
        return SEED_PROMISE

    def __str__(self) -> str:
        lines = [
            f"Determinism audit: {self.runs} runs of the same request ({self._setting()}).",
            self._verdict(),
            *self._divergence_lines(),
            self._drift_line(),
            "",
            self._meaning(),
        ]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        colour = "#2b8a3e" if self.identical else "#e8590c"
        parts = [
            f'<div style="border-left:4px solid {colour};padding:4px 10px">',
            f"<p><b>Determinism audit</b>: {self.runs} runs of the same request "
            f"({html.escape(self._setting())}).</p>",
            f'<p style="color:{colour}"><b>{html.escape(self._verdict())}</b></p>',
        ]
        parts.extend(f"<p>{html.escape(line)}</p>" for line in self._divergence_lines())
        if self.divergence is not None:
            parts.append(self.diffs[self.divergence.run - 1]._repr_html_())
        parts.append(f"<p>{html.escape(self._drift_line())}</p>")
        parts.append(f'<p style="font-size:90%">{html.escape(self._meaning())}</p>')
        parts.append("<p><code>report.frame()</code> has one row per run.</p></div>")
        return "".join(parts)


def _divergence(run: int, d: Diff, ref: Units, other: Units) -> Divergence:
    p = d.position
    assert p is not None

    def get(values: list[Any] | None, i: int) -> Any:
        return values[i] if values is not None and i < len(values) else None

    return Divergence(
        run=run,
        position=p,
        unit=d.unit,
        token_ref=get(ref.tokens, p),
        token_other=get(other.tokens, p),
        logprob_ref=get(ref.logprobs, p),
        logprob_other=get(other.logprobs, p),
        alternatives_ref=get(ref.alternatives, p) or [],
        alternatives_other=get(other.alternatives, p) or [],
        prefix="".join(ref.tokens[:p]),
    )


def _params_of(res: ChatResult) -> dict[str, Any]:
    return {k: v for k, v in res.request.items() if k not in ("model", "messages", "stream")}


def audit(
    prompt: Messages,
    repeats: int = 8,
    seed: int | None = 7,
    client: Any = None,
    *,
    model: str | None = None,
    system: str | None = None,
    **params: Any,
) -> AuditReport:
    """Send the same request ``repeats`` times and report whether the answers are identical.

    Sent with ``seed`` (``None``: no seed) and ``logprobs=True, top_logprobs=5`` unless given,
    plus ``params``. The report says where the first divergence is (position, tokens,
    alternatives) and how much the logprobs of the shared tokens differ (max |Δ logprob|),
    and explains what a seed does and does not promise. Requests are sent one after another.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 2:
        raise ParameterError(
            "repeats", f"repeats={repeats!r}: an audit compares runs", "an int ≥ 2"
        )
    params = dict(params)
    if seed is not None:
        params["seed"] = seed
    params.setdefault("logprobs", True)
    if params["logprobs"]:
        params.setdefault("top_logprobs", 5)
    sent = validate_params(params)  # before anything is sent
    owned = client is None or not isinstance(client, Client)
    if client is None:
        sync = Client()
    elif isinstance(client, Client):
        sync = client
    elif isinstance(client, BaseClient):  # an AsyncClient: the same settings, sync
        from tmlab.analysis.runner import client_kwargs

        sync = Client(**client_kwargs(client))
    else:
        raise ParameterError("client", f"client={type(client).__name__}", "a tmlab.Client")
    try:
        results = [sync.chat(prompt, model=model, system=system, **sent) for _ in range(repeats)]
    finally:
        if owned:
            sync.close()
    return AuditReport.from_results(results, seed=seed, params=sent)
