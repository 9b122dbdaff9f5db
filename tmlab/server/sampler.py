"""The per-token sampling of the local server: sampler chains, one draw, and what it drew from.

Sampling itself (temperature, top-k/p, min-p, typical-p, penalties, mirostat v2, grammar,
logit bias, seed) is done by llama.cpp's own samplers, in two chains applied in turn: the
*filter* (logit bias, penalties, grammar) says which tokens are allowed, the *picker*
(truncation, temperature, the draw) chooses one. Between them the loop checks that some
token is allowed at all: llama.cpp aborts the whole process when a grammar is handed a token
it does not allow, and extreme settings (a grammar whose every continuation is penalised to
-inf, say) can leave none. A step with no allowed token ends the generation (the caller
reports ``finish_reason="stop"``); a picker that returns a disallowed token (NaN
probabilities from extreme floats) is overridden by the most likely allowed token.
A temperature below :data:`GREEDY_BELOW` is greedy (as in vLLM): logits ÷ 1e-45 overflow.

``ignore_eos`` and ``min_tokens`` ban end-of-generation only in free text: while a grammar is
active (JSON output, a forced tool call, or an auto tool call once ``<tool_call>`` appeared)
end-of-generation stays allowed, because a completed grammar allows nothing else.

:class:`Decoder` holds one generation's state (its chains, bans, lazy grammar and logprobs)
and turns each row of logits into the next :class:`Step`. :meth:`Engine.generate
<tmlab.server.engine.Engine.generate>` drives one on the engine's own context; the batch
engine (:mod:`tmlab.server.batch`) drives many, one row of a batch's logits each. Of the model
it needs only a :class:`Vocabulary`, not the engine.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from tmlab.server.trace import TraceSpec

__all__ = [
    "GREEDY_BELOW",
    "LOGPROBS_MODES",
    "PENALTY_LAST_N",
    "Decoder",
    "GrammarError",
    "Sampling",
    "Step",
    "chains",
    "draw",
    "load",
    "processed",
]

GREEDY_BELOW = 1e-5
"""Temperatures below this sample greedily (logits ÷ a tiny temperature overflow float32)."""

LOGPROBS_MODES = ("raw_logprobs", "processed_logprobs")
"""What a step's logprobs describe (vLLM's names): the model's raw distribution, or the one
the token was drawn from."""


class GrammarError(ValueError):
    """A grammar (from a JSON schema or GBNF) could not be compiled by llama.cpp."""


@dataclass
class Sampling:
    """Sampling settings of one generation; the defaults leave the distribution untouched."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    mirostat_target: float | None = None
    mirostat_lr: float = 0.1
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)


@dataclass
class Step:
    """One token with its log-probability when asked for (raw or processed, as asked).

    A prompt token scored by :meth:`Engine.prefill` is a Step too; the prompt's first token
    has ``logprob=None`` (nothing precedes it).
    """

    token_id: int
    piece: bytes  # the token's bytes in the text (empty for control tokens)
    eog: bool  # end of generation (EOS / EOT)
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None  # (token id, logprob), most likely first
    trace: dict[str, Any] | None = None  # its sampler_trace entry (tmlab.server.trace)
    watch: dict[str, Any] | None = None  # its logprobs_for entry


class Vocabulary(Protocol):
    """What the sampler needs of a model (:class:`~tmlab.server.engine.Engine` has it): the
    llama.cpp library and vocabulary (for grammars), the vocabulary's size, the ids that end
    generation, and each token's bytes."""

    @property
    def lib(self) -> Any:
        """The ``llama_cpp`` module (its low-level API)."""

    @property
    def vocab(self) -> Any:
        """The model's ``llama_vocab`` (grammars compile against it)."""

    @property
    def n_vocab(self) -> int:
        """How many tokens the vocabulary has."""

    @property
    def eog(self) -> np.ndarray:
        """The ids of the tokens that end generation."""

    def is_eog(self, token: int) -> bool:
        """Whether ``token`` ends generation."""

    def piece(self, token: int) -> bytes:
        """``token``'s bytes in the text (empty for control tokens)."""

    def token_bytes(self, token: int) -> bytes:
        """``token``'s bytes, control tokens spelled out (``<|im_end|>``)."""


# How many of the last generated tokens the penalties look at (llama.cpp reads -1 as 0: off).
PENALTY_LAST_N = 256


def chains(
    words: Vocabulary, s: Sampling, *, grammar: str | None, lazy_trigger: str | None
) -> tuple[Any, Any]:
    """The filter chain (bias, penalties, grammar) and the picker chain (the draw)."""
    from llama_cpp._internals import LlamaSampler

    lib = words.lib
    filt = LlamaSampler()
    if s.logit_bias:
        filt.add_logit_bias(words.n_vocab, dict(s.logit_bias))
    if (s.repetition_penalty, s.frequency_penalty, s.presence_penalty) != (1.0, 0.0, 0.0):
        filt.add_penalties(
            words.n_vocab,
            PENALTY_LAST_N,
            s.repetition_penalty,
            s.frequency_penalty,
            s.presence_penalty,
        )
    if grammar is not None:
        if lazy_trigger is None:
            smpl = lib.llama_sampler_init_grammar(words.vocab, grammar.encode(), b"root")
        else:
            pattern = rf"[\s\S]*?({_regex_escape(lazy_trigger)}[\s\S]*)".encode()
            pats = (ctypes.c_char_p * 1)(pattern)
            no_tokens = (lib.llama_token * 0)()
            smpl = lib.llama_sampler_init_grammar_lazy_patterns(
                words.vocab, grammar.encode(), b"root", pats, 1, no_tokens, 0
            )
        if not smpl:
            filt.close()
            raise GrammarError("the grammar could not be compiled")
        lib.llama_sampler_chain_add(filt.sampler, smpl)
    pick = LlamaSampler()
    seed = lib.LLAMA_DEFAULT_SEED if s.seed is None else s.seed % 0xFFFFFFFF
    if s.temperature < GREEDY_BELOW:
        pick.add_greedy()
    elif s.mirostat_target is not None:
        pick.add_temp(s.temperature)
        pick.add_mirostat_v2(seed, s.mirostat_target, s.mirostat_lr)
    else:
        if s.top_k > 0:
            pick.add_top_k(s.top_k)
        if s.typical_p < 1.0:
            pick.add_typical(s.typical_p, 1)
        if s.top_p < 1.0:
            pick.add_top_p(s.top_p, 1)
        if s.min_p > 0.0:
            pick.add_min_p(s.min_p, 1)
        pick.add_temp(s.temperature)
        pick.add_dist(seed)
    return filt, pick


def draw(
    words: Vocabulary,
    filt: Any,
    pick: Any,
    cand: Any,
    ban: bool,
    observe: Callable[[str], None] | None = None,
) -> tuple[int, bool] | None:
    """One token from the candidates (logits loaded); None when no token is allowed.

    Returns ``(token, drawn)``: ``drawn`` is False when the picker's choice was overridden
    (a disallowed token from NaN probabilities). After it, the candidates array holds what
    the picker left: the truncated candidates, their logits divided by the temperature.

    The usual step (nothing banned, biased away or refused: every logit finite) costs two
    copies and one check over the vocabulary besides llama.cpp's own samplers; the work
    that non-finite logits need (which tokens are allowed, NaN cleared for the picker) is
    done only when there are some.

    ``observe`` (the sampler trace, :mod:`tmlab.server.trace`): the chains' samplers are
    applied one at a time, as a chain applies them, and ``observe`` is called after each
    with its llama.cpp name (and first with ``"raw"``, then ``"eos_ban"`` when banning).
    """
    lib = words.lib
    data = cand.candidates_data
    arr = cand.candidates
    if observe is not None:
        observe("raw")
    if ban:
        data.logit[words.eog] = -np.inf
        if observe is not None:
            observe("eos_ban")
    arr.selected = -1
    _apply(lib, filt.sampler, arr, observe)
    size = arr.size
    ids = np.array(data.id[:size])
    logits = np.array(data.logit[:size])
    finite = np.isfinite(logits)
    every = bool(finite.all())
    if not every:
        if not finite.any():
            return None
        if np.isnan(logits).any() or np.isposinf(logits).any():
            data.logit[:size] = np.where(finite, logits, -np.inf)  # no NaN for the picker
    _apply(lib, pick.sampler, arr, observe)
    token = int(data.id[arr.selected]) if 0 <= arr.selected < arr.size else -1
    # every candidate left is allowed when every logit was finite: the picker only
    # truncates, reorders and rescales the candidates the filter left
    drawn = token >= 0 and (every or _allowed(ids, finite, token))
    if not drawn:
        token = int(ids[finite][np.argmax(logits[finite])])
    lib.llama_sampler_accept(filt.sampler, token)
    lib.llama_sampler_accept(pick.sampler, token)
    return token, drawn


def _apply(lib: Any, chain: Any, arr: Any, observe: Callable[[str], None] | None) -> None:
    """Apply a sampler chain to ``arr``; with ``observe``, member by member."""
    if observe is None:
        lib.llama_sampler_apply(chain, ctypes.byref(arr))
        return
    for i in range(lib.llama_sampler_chain_n(chain)):
        member = lib.llama_sampler_chain_get(chain, i)
        lib.llama_sampler_apply(member, ctypes.byref(arr))
        observe(lib.llama_sampler_name(member).decode())


def _allowed(ids: np.ndarray, finite: np.ndarray, token: int) -> bool:
    """Whether ``token`` had a finite logit among the candidates ``ids`` (``finite``)."""
    if token < ids.shape[0] and ids[token] == token:  # the filter kept llama.cpp's id order
        return bool(finite[token])
    hit = np.flatnonzero(ids == token)
    return bool(hit.size) and bool(finite[hit[0]])


@functools.lru_cache(maxsize=4)
def _fresh(n_vocab: int) -> np.ndarray:
    """A candidates array as ``copy_logits`` leaves it, logits aside: ids 0..n-1, p 0.

    Rows of (id, logit, p) as float32 triples (the ids' bits as they are), read-only.
    """
    rows = np.zeros((n_vocab, 3), dtype=np.float32)
    rows[:, 0] = np.arange(n_vocab, dtype=np.intc).view(np.float32)
    rows.flags.writeable = False
    return rows


def load(cand: Any, row: np.ndarray) -> None:
    """Load a row of logits into ``cand`` as ``LlamaTokenDataArray.copy_logits`` does (ids in
    order, the logits, p 0, unsorted, the whole vocabulary), in two copies instead of three."""
    n = cand.n_vocab
    data = cand.candidates_data
    if data.dtype.itemsize != 12 or not data.flags.c_contiguous:  # pragma: no cover
        cand.copy_logits(row)  # another layout of llama_token_data: the library's own way
        return
    view = np.ndarray((n, 3), dtype=np.float32, buffer=data)
    np.copyto(view, _fresh(n))
    view[:, 1] = row
    cand.candidates.sorted = False
    cand.candidates.size = n


def processed(
    cand: Any, token: int, top_logprobs: int
) -> tuple[float | None, list[tuple[int, float]]]:
    """The distribution the draw used: log-softmax of the candidates the picker left.

    Read after the picker ran: llama.cpp's truncation samplers shrink the array in place
    and the temperature divides the logits in place; the draw (``dist``, mirostat) only
    sets probabilities and picks one, so the (id, logit) pairs are those it drew from.
    Tokens with a -inf logit (banned, biased away, refused by a grammar) have no entry.
    When the temperature overflowed a logit to +inf (or made a NaN), the draw had no
    distribution to speak of: the log-probability is None (null) and no alternatives.
    """
    arr = cand.candidates
    size = int(arr.size)
    ids = np.array(cand.candidates_data.id[:size], dtype=np.int64)
    logits = np.array(cand.candidates_data.logit[:size], dtype=np.float64)
    if np.isnan(logits).any() or np.isposinf(logits).any():
        return None, []
    finite = np.isfinite(logits)
    ids, lp = ids[finite], _log_softmax(logits[finite])
    hit = np.flatnonzero(ids == token)
    logprob = float(lp[hit[0]]) if hit.size else None
    top: list[tuple[int, float]] = []
    if top_logprobs > 0:
        top = [(int(ids[i]), v) for i, v in _top_items(lp, top_logprobs)]
    return logprob, top


class Decoder:
    """The per-token state of one generation: sampler chains, bans, lazy grammar, logprobs.

    :meth:`step` turns the logits that follow the last evaluated token into the next
    :class:`Step`; the caller evaluates that token and calls it again until :attr:`done`.
    :meth:`Engine.generate` drives one on its own context; the batch engine
    (:mod:`tmlab.server.batch`) drives many, one row of a batch's logits each.
    """

    def __init__(
        self,
        words: Vocabulary,
        room: int,
        sampling: Sampling,
        *,
        max_tokens: int,
        top_logprobs: int | None = None,
        logprobs_mode: str = "raw_logprobs",
        grammar: str | None = None,
        lazy_trigger: str | None = None,
        ignore_eos: bool = False,
        min_tokens: int = 0,
        trace: TraceSpec | None = None,
    ) -> None:
        from llama_cpp._internals import LlamaTokenDataArray

        self.words = words
        self.top_logprobs = top_logprobs
        self.processed = logprobs_mode == "processed_logprobs" and top_logprobs is not None
        self.greedy = sampling.temperature < GREEDY_BELOW
        self.filt, self.pick = chains(words, sampling, grammar=grammar, lazy_trigger=lazy_trigger)
        self.cand = LlamaTokenDataArray(n_vocab=words.n_vocab)
        self.trigger = lazy_trigger.encode() if grammar is not None and lazy_trigger else None
        self.grammar_on = grammar is not None and self.trigger is None
        self.seen = bytearray()  # generated text, while waiting for the lazy grammar's trigger
        self.ignore_eos = ignore_eos
        self.min_tokens = min_tokens
        self.limit = min(max_tokens, room)
        self.count = 0
        self.trace = trace
        self.settings = _settings(sampling, trace, ignore_eos=ignore_eos, min_tokens=min_tokens)
        self.done = self.limit <= 0
        """No more tokens: end of generation, the budget, or nothing allowed."""

    def step(self, row: np.ndarray) -> Step | None:
        """The next token from ``row`` (the logits after the last token); None when no token
        is allowed any more (then :attr:`done`)."""
        words = self.words
        top_logprobs = self.top_logprobs
        want_raw = top_logprobs is not None and not self.processed
        lp = _log_softmax(row) if want_raw else None
        load(self.cand, row)
        ban = not self.grammar_on and (self.ignore_eos or self.count < self.min_tokens)
        spec = self.trace
        observer = None
        if spec is not None and (spec.watch or spec.covers(self.count)):
            from tmlab.server.trace import Observer

            observer = Observer(self.cand, words.n_vocab)
        picked = draw(words, self.filt, self.pick, self.cand, ban, observer)
        if picked is None:
            self.done = True
            return None
        token, drawn = picked
        trace = watch = None
        if observer is not None and spec is not None:
            trace, watch = observer.report(
                words, settings=self.settings, spec=spec, token=token, position=self.count
            )
        logprob = top = None
        if lp is not None and top_logprobs is not None:
            logprob = float(lp[token])
            top = _top(lp, top_logprobs) if top_logprobs > 0 else []
        elif self.processed and top_logprobs is not None:
            if self.greedy or not drawn:  # nothing was drawn: the token was certain
                logprob, top = 0.0, [(token, 0.0)] if top_logprobs > 0 else []
            else:
                logprob, top = processed(self.cand, token, top_logprobs)
        eog = words.is_eog(token)
        self.count += 1
        if eog or self.count >= self.limit:
            self.done = True
        elif self.trigger is not None and not self.grammar_on:
            self.seen += words.piece(token)
            self.grammar_on = self.trigger in self.seen
        return Step(token, b"" if eog else words.piece(token), eog, logprob, top, trace, watch)

    def close(self) -> None:
        """Free the sampler chains."""
        self.filt.close()
        self.pick.close()


def _settings(
    s: Sampling, trace: TraceSpec | None, *, ignore_eos: bool, min_tokens: int
) -> dict[str, Any]:
    """Each stage's setting as the sampler trace reports it (stages not in the chain have
    none)."""
    if trace is None:
        return {}
    out: dict[str, Any] = {
        "eos_ban": "ignore_eos" if ignore_eos else f"min_tokens={min_tokens}",
        "logit_bias": {str(k): v for k, v in s.logit_bias.items()},
        "penalties": {
            "repetition_penalty": s.repetition_penalty,
            "frequency_penalty": s.frequency_penalty,
            "presence_penalty": s.presence_penalty,
        },
        "grammar": trace.grammar,
        "top_k": s.top_k,
        "typical_p": s.typical_p,
        "top_p": s.top_p,
        "min_p": s.min_p,
        "temperature": s.temperature,
    }
    return out


def _log_softmax(row: np.ndarray) -> np.ndarray:
    x = row.astype(np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def _top(lp: np.ndarray, n: int) -> list[tuple[int, float]]:
    """(index, value) of the ``n`` largest, most likely first; of tied values the lower index
    first (as the sampler trace lists its candidates)."""
    n = min(n, lp.shape[0])
    kth = np.partition(lp, lp.size - n)[lp.size - n]  # cheaper than an argpartition
    idx = np.flatnonzero(lp >= kth)
    idx = idx[np.argsort(-lp[idx], kind="stable")][:n]
    return [(int(i), float(lp[i])) for i in idx]


def _top_items(lp: np.ndarray, n: int) -> list[tuple[int, float]]:
    """(index into ``lp``, value) of the ``n`` largest, most likely first."""
    return _top(lp, n) if lp.size else []


def _regex_escape(text: str) -> str:
    return "".join("\\" + c if c in r"\^$.|?*+()[]{}" else c for c in text)
