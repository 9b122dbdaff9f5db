"""Is batching exact on the loaded model? Is the prompt cache? Short self-tests at start.

(:func:`measure_prompt_cache`, with ``--prompt-cache``: the same prompts evaluated from
position 0 and after a cached prefix, compared bit for bit; see
:mod:`tmlab.server.prompt_cache`.)

Whether a sequence's numbers are those it gets alone is a property of llama.cpp's kernels for
this model file, quantisation, instruction set and build (see :mod:`tmlab.server.batch`), not a
promise of llama.cpp: it was measured for one GGUF on one build, and ``--model-path`` takes
any. So the server measures it on the model it loaded before it serves, and claims invariance
only if the measurement shows it.

:func:`measure` decodes a few fixed sequences (seeded sampling at temperature 1, the sampled
token's and the top alternatives' raw logprobs, end-of-generation ignored) in the batch engine,
first each alone, then arriving at three different moments: one alone, two together while it
generates, and a fourth with the second's prompt later. It compares the tokens and every
logprob bit for bit. About a second on 2 cores.

Each alone runs in the batch engine too, not on the one-slot context: using that context once
makes the batch context's decoding slower afterwards (measured: 82 → 52–64 tokens/s for one
stream on 8 slots; llama.cpp's CPU threads of two contexts). That a sequence alone in the batch
engine has the one-slot server's numbers holds by construction (the same pieces, the same
kernels) and is tested (``tests/test_parallel.py``).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from tmlab.server.prompt_cache import CacheCheck, CacheScope
from tmlab.server.sampler import Sampling

if TYPE_CHECKING:
    from tmlab.server.batch import BatchEngine
    from tmlab.server.engine import Engine

__all__ = ["PROMPTS", "Invariance", "measure", "measure_prompt_cache"]

PROMPTS: tuple[str, ...] = (
    "Name three colours.",
    "Write one sentence about the sea, please.",
    "What is two plus two? Answer in a few words, then explain why it is so.",
)
"""The self-test's user messages: three prompt lengths; the second is sent twice."""

TOKENS = 12
TOP = 5
SEED = 1234

# (prompt index, when it arrives: after how many tokens of the first sequence)
_ARRIVALS: tuple[tuple[int, int], ...] = ((0, 0), (1, 3), (2, 3), (1, 7))

Trace = list[tuple[int, float | None, list[tuple[int, float]]]]


@dataclass(frozen=True)
class Invariance:
    """What the self-test compared and found.

    ``equal``: every token and logprob of the sequences decoded together equals theirs decoded
    alone, bit for bit. ``compared``: what was compared, in words. ``difference``: the first
    difference found, in words (None when equal). ``seconds``: how long it took.
    """

    equal: bool
    compared: str
    difference: str | None
    seconds: float

    def describe(self) -> str:
        """One line: what was measured and what it showed."""
        if self.equal:
            return f"measured at start: {self.compared}: equal bit for bit"
        return f"measured at start: {self.compared}: they differ ({self.difference})"

    def as_json(self) -> dict[str, Any]:
        """For ``/v1/models`` and ``/v1/stats``."""
        return {**asdict(self), "seconds": round(self.seconds, 2)}


def _first_difference(alone: list[Trace], batched: list[Trace]) -> str | None:
    for i, (a, b) in enumerate(zip(alone, batched, strict=True)):
        if len(a) != len(b):
            return f"sequence {i}: {len(b)} tokens batched, {len(a)} alone"
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            if x[0] != y[0]:
                return f"sequence {i}, token {k}: token {y[0]} batched, {x[0]} alone"
            if x[1] != y[1]:
                return f"sequence {i}, token {k}: logprob {y[1]!r} batched, {x[1]!r} alone"
            if x[2] != y[2]:
                return f"sequence {i}, token {k}: its top {TOP} alternatives differ"
    return None


def measure(engine: Engine, batch: BatchEngine) -> Invariance:
    """Decode the self-test's sequences alone, then together, in ``batch``; compare them bit
    for bit.

    Call it before the server takes requests (it uses ``batch`` through ``engine``); it leaves
    ``engine.batch`` as it found it.
    """
    started = time.perf_counter()
    prompts = [engine.tokenize(engine.render([{"role": "user", "content": p}])) for p in PROMPTS]
    saved = engine.batch

    def run(k: int, on_token: Callable[[int], None] | None = None) -> Trace:
        index = _ARRIVALS[k][0]
        steps = engine.generate(
            prompts[index],
            Sampling(temperature=1.0, seed=SEED + index),
            max_tokens=TOKENS,
            top_logprobs=TOP,
            ignore_eos=True,
        )
        out: Trace = []
        for step in steps:
            out.append((step.token_id, step.logprob, list(step.top or [])))
            if on_token is not None:
                on_token(len(out))
        return out

    try:
        engine.batch = batch
        alone = [run(k) for k in range(len(_ARRIVALS))]
        batched: list[Trace] = [[] for _ in _ARRIVALS]
        errors: list[BaseException] = []
        threads: list[threading.Thread] = []

        def later(k: int) -> None:
            try:
                batched[k] = run(k)
            except BaseException as exc:  # reported below, never lost in a thread
                errors.append(exc)

        def arrive(generated: int) -> None:
            for k, (_, after) in enumerate(_ARRIVALS):
                if k and after == generated:
                    t = threading.Thread(target=later, args=(k,), name="tmlab-selftest")
                    t.start()
                    threads.append(t)

        batched[0] = run(0, arrive)
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
    finally:
        engine.batch = saved
    moments = len({after for _, after in _ARRIVALS})
    compared = (
        f"{len(_ARRIVALS)} sequences ({len(PROMPTS)} prompts of "
        f"{min(map(len, prompts))}–{max(map(len, prompts))} tokens, {TOKENS} sampled tokens "
        f"each, seeded, their logprobs and top {TOP}) arriving at {moments} moments in "
        f"{batch.parallel} slots, against each decoded alone"
    )
    difference = _first_difference(alone, batched)
    return Invariance(difference is None, compared, difference, time.perf_counter() - started)


# --- the prompt cache ------------------------------------------------------------------

_SYSTEM = " ".join(
    f"Rule {i}: when asked about the number {i * 7}, answer kindly and briefly." for i in range(28)
)
"""The self-test's long system prompt (~600 tokens: the cached prefix crosses a piece)."""

_QUESTIONS = ("Name three colours.", "What is two plus two?")


def measure_prompt_cache(engine: Engine) -> CacheCheck:
    """Evaluate the self-test's prompts from position 0, then after a cached prefix; compare
    the sampled tokens and their logprobs bit for bit.

    Three reuses, as a class meets them: a second question after the same long system prompt
    (the system prompt reused), the same prompt again (all but its last token reused), and the
    next turn of a conversation (the previous prompt reused, the answer evaluated again). Each
    is decoded with seeded sampling at temperature 1, its top alternatives' raw logprobs too.
    Call it before the server takes requests, with ``engine.prompt_cache`` set: it uses the
    engine (and its batch engine, if any) and leaves the cache empty.
    """
    assert engine.prompt_cache is not None, "turn the prompt cache on first"
    started = time.perf_counter()
    tag = secrets.token_hex(8)
    first = [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _QUESTIONS[0]}]
    second = [first[0], {"role": "user", "content": _QUESTIONS[1]}]

    def run(messages: list[dict[str, str]], key: str) -> tuple[Trace, list[int], int]:
        prompt = engine.tokenize(engine.render(messages))
        scope = CacheScope(key)
        steps = engine.generate(
            prompt,
            Sampling(temperature=1.0, seed=SEED),
            max_tokens=TOKENS,
            top_logprobs=TOP,
            ignore_eos=True,
            cancel=scope,
        )
        trace: Trace = [(s.token_id, s.logprob, list(s.top or [])) for s in steps]
        return trace, [t for t, _, _ in trace], scope.cached_tokens or 0

    def turn(answer: list[int]) -> list[dict[str, str]]:
        said = engine.detokenize([t for t in answer if not engine.is_eog(t)])
        return [*first, {"role": "assistant", "content": said}, {"role": "user", "content": "Why?"}]

    engine.forget_prompts()
    try:
        # from position 0: a fresh isolation key each, which nothing cached shares
        scratch_first, answer, _ = run(first, f"{tag}-a")
        conversation = turn(answer)
        order = (conversation, second, second)  # each reuses a prefix of the one before
        alone = [run(m, f"{tag}-{i}")[0] for i, m in enumerate(order[:2])]
        alone.append(alone[1])  # the same prompt: the same trace from position 0
        engine.forget_prompts()
        key = f"{tag}-cached"
        cached_first, _, _ = run(first, key)
        reruns = [run(m, key) for m in order]
    finally:
        engine.forget_prompts()
    cached = [cached_first, *(r[0] for r in reruns)]
    difference = _first_difference([scratch_first, *alone], cached)
    lengths = [len(engine.tokenize(engine.render(m))) for m in order]
    reused = sum(r[2] for r in reruns)
    compared = (
        f"3 prompts of {min(lengths)}–{max(lengths)} tokens evaluated after a cached prefix "
        f"({reused} of {sum(lengths)} prompt tokens reused: the next turn of a conversation, "
        f"a shared system prompt, the same prompt again), {TOKENS} sampled tokens each, "
        f"seeded, their logprobs and top {TOP}, against each evaluated from position 0"
    )
    if difference is not None:
        difference = difference.replace("batched", "cached").replace("alone", "from scratch")
    return CacheCheck(
        difference is None,
        compared,
        difference,
        reused,
        sum(lengths),
        time.perf_counter() - started,
    )
