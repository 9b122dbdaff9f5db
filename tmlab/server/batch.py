"""Continuous batching (opt-in, ``--parallel N``): up to N sequences decoded together.

:class:`BatchEngine` owns a second llama.cpp context with N sequence slots and one thread, the
scheduler, that is the only one to touch it. Requests keep their own threads (each runs a
:class:`~tmlab.server.chat.ChatRun` as with one slot) and call :meth:`BatchEngine.generate`,
which has the contract of :meth:`Engine.generate <tmlab.server.engine.Engine.generate>`: it
yields one :class:`~tmlab.server.sampler.Step` per token. Behind it, each step of the
scheduler decodes the next token of every generating sequence in ONE llama.cpp call, then up
to ``n_batch`` tokens of the prompts of newly arrived sequences (one call per piece, cut where
the one-slot path cuts it), and samples every sequence whose logits came out, each with its
own :class:`~tmlab.server.sampler.Decoder` (sampler chain, seed, grammar, bans, logprobs). A
new request joins at the next step; a finished, stopped or disconnected one frees its slot at
once.

The numbers. Each slot has its own KV stream of ``n_ctx`` cells (llama.cpp's non-unified
KV cache), so a sequence's attention reads only its own cells, laid out as when it runs
alone; its prompt is evaluated in the same pieces as on the one-slot path, each alone in its
call; its generated tokens go one per sequence, as there; and llama.cpp's CPU kernels compute
each row of the other matrix products on its own. So a sequence's numbers do not depend on
what else is in the batch: measured here (SmolLM2 Q4_1, AVX2), up to 8 sequences arriving at
random moments give the same tokens and logprobs, bit for bit, as the one-slot server
(``tests/test_parallel.py`` holds it to that). It is a property of these kernels, not a promise
of llama.cpp (other backends, quantisations or builds may round the rows of a batch together),
so the server measures it on the model it loaded before it serves
(:mod:`tmlab.server.selftest`) and claims it only where it holds. Each piece of it
matters: with ``unified=True`` the sequences share one KV cache, interleaved, and each one's
attention sums over cells in an order set by its neighbours (measured: up to ~0.2 nats, and
greedy answers flip at near-ties: ``bench/parallel.py`` prints it); a prompt token evaluated
alone (as llama.cpp does with the last tokens of the longer of two prompts in one call)
takes another kernel than one evaluated with others (~0.01 nats).

Shared prompts. A sequence admitted while another with the same prompt is still evaluating
it waits, and when that evaluation ends it gets a copy of the other's KV stream
(``llama_memory_seq_cp``) and samples from the same logits row. The ``n`` choices of one
request are admitted together (a :class:`Group`), so they evaluate it once; separate requests
with the same prompt share it only when one arrives while another still evaluates it (a
class sending a preset with a short prompt rarely does: that takes milliseconds). The copy
holds the
same bits that evaluating the prompt again would, so the numbers are unchanged.

Prompt cache (``--prompt-cache``, :mod:`tmlab.server.prompt_cache`): a finished sequence's
slot keeps its prompt's cells and isolation key; a new sequence takes the free slot holding
the longest prefix of its prompt under its key (else an empty one, else the one idle longest)
and evaluates the rest in the usual pieces.

Cost: llama.cpp splits one call into a forward pass per run of consecutive slot numbers
(with one KV stream per slot), so generating sequences in slots 0, 1 and 3 take two passes;
a new request takes the lowest free slot, which fills such gaps first. With one slot (the
default) the server never uses this module.
"""

from __future__ import annotations

import ctypes
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tmlab.server.engine import Engine
from tmlab.server.prompt_cache import CacheScope, reusable, scope_of
from tmlab.server.sampler import Decoder, Step

if TYPE_CHECKING:
    from tmlab.server.selftest import Invariance

__all__ = ["BatchEngine", "Group", "SlotState"]

_END = object()


@dataclass
class SlotState:
    """What one slot is doing, for ``/v1/stats``."""

    slot: int
    state: str  # "idle" | "prompt" | "generating"
    prompt_tokens: int = 0
    generated: int = 0


@dataclass
class Group:
    """Sequences sent together (the ``n`` choices of a request): none is admitted before all
    have arrived (or ``wait_s`` passed), so that the first evaluates the prompt and the others
    copy it (:meth:`BatchEngine._follow`) instead of racing it. Measured before: with a short
    prompt the last choices often arrived after its evaluation had started, and evaluated it
    again."""

    size: int
    wait_s: float = 2.0
    arrived: int = 0
    since: float = field(default_factory=time.monotonic)

    def ready(self) -> bool:
        """Whether its sequences may be admitted now."""
        return self.arrived >= self.size or time.monotonic() - self.since >= self.wait_s


@dataclass
class _Seq:
    prompt: list[int]
    make_decoder: Callable[[], Decoder]
    cancel: threading.Event
    out: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    slot: int = -1
    decoder: Decoder | None = None
    fed: int = 0  # prompt tokens in the KV cache
    pos: int = 0  # next position
    next_token: int | None = None  # sampled, not yet in the KV cache
    generated: int = 0
    left: bool = False  # the consumer stopped iterating
    leader: _Seq | None = None  # evaluating the same prompt: this one waits and copies it
    followers: list[_Seq] = field(default_factory=list)
    group: Group | None = None
    scope: CacheScope | None = None  # the request's prompt-cache scope (its key)


@dataclass
class _Held:
    """What an idle slot's cells hold (prompt cache): a prompt's first ``len(prompt)`` tokens,
    evaluated for ``key``, since ``since``."""

    prompt: list[int]
    key: str | None
    since: float = field(default_factory=time.monotonic)


class BatchEngine:
    """N sequence slots over one llama.cpp context, decoded together by one thread.

    ``unified``: one KV cache shared by the slots instead of one stream each (the numbers
    then depend on the batch; see the module docstring).
    """

    def __init__(
        self, engine: Engine, parallel: int, *, n_batch: int = 512, unified: bool = False
    ) -> None:
        import llama_cpp
        from llama_cpp import _internals

        if parallel < 2:
            raise ValueError("BatchEngine is for parallel >= 2; one slot uses the Engine")
        self.engine = engine
        self.parallel = parallel
        self.n_batch = n_batch
        self.unified = unified
        # prompts are cut where Llama.eval cuts them on the one-slot path
        self._piece = engine.llm.n_batch
        n_batch = max(n_batch, self._piece, parallel)
        self._lib = llama_cpp
        # The single path's settings (flash attention off, the same rope and threads), with
        # N sequences of n_ctx tokens each: one KV stream per slot unless ``unified``.
        params = llama_cpp.llama_context_params()
        ctypes.pointer(params)[0] = engine.llm.context_params
        params.n_ctx = engine.n_ctx * parallel
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = parallel
        params.kv_unified = unified
        self._ctx = _internals.LlamaContext(model=engine.llm._model, params=params, verbose=False)
        self._batch = _internals.LlamaBatch(
            n_tokens=n_batch, embd=0, n_seq_max=parallel, verbose=False
        )
        self._mem = llama_cpp.llama_get_memory(self._ctx.ctx)
        self.on_step: Callable[[int], None] | None = None
        """Called with the number of sequences each step decodes together (``/v1/stats``)."""
        self.invariance: Invariance | None = None
        """The batching self-test's result (:func:`tmlab.server.selftest.measure`), once run."""
        self.prompt_tokens_shared = 0
        """Prompt tokens not evaluated again: copied from a sequence with the same prompt."""
        self._waiting: deque[_Seq] = deque()
        self._slots: list[_Seq | None] = [None] * parallel
        self._held: list[_Held | None] = [None] * parallel  # with the prompt cache
        self._cond = threading.Condition()
        self._closed = False
        # samples half of a step's sequences while the scheduler samples the other half when
        # they follow grammars: the cores are idle between two decodes, and a grammar costs
        # about as much per token as the model
        self._sampler = ThreadPoolExecutor(1, thread_name_prefix="tmlab-batch-sample")
        self._thread = threading.Thread(target=self._loop, name="tmlab-batch", daemon=True)
        self._thread.start()

    @property
    def batch_invariant(self) -> bool:
        """Whether a sequence's numbers are those it would get alone (see the module), as
        measured on the loaded model by :mod:`tmlab.server.selftest` (``invariance``); False
        until measured."""
        return self.invariance is not None and self.invariance.equal

    # --- the request side --------------------------------------------------------------

    def generate(
        self,
        prompt: Sequence[int],
        make_decoder: Callable[[], Decoder],
        cancel: threading.Event | None = None,
        group: Group | None = None,
    ) -> Iterator[Step]:
        """Generate after ``prompt`` in a slot; one :class:`Step` per token (see the module).

        ``make_decoder`` builds the sequence's decoder (it runs in the scheduler thread).
        Stops when the decoder is done, when ``cancel`` is set, or when the caller stops
        iterating; the slot is freed then. ``group``: sent together with others (:class:`Group`).
        """
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) >= self.engine.n_ctx:
            raise ValueError(
                f"prompt of {len(prompt)} tokens leaves no room in {self.engine.n_ctx}"
            )
        seq = _Seq(list(prompt), make_decoder, cancel or threading.Event(), group=group)
        seq.scope = scope_of(cancel)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batch engine is closed")
            if group is not None:
                group.arrived += 1
            self._waiting.append(seq)
            self._cond.notify()
        try:
            while True:
                item = seq.out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            seq.left = True
            with self._cond:
                self._cond.notify()

    def slots(self) -> list[SlotState]:
        """What each slot is doing now."""
        out = []
        with self._cond:
            for i, seq in enumerate(self._slots):
                if seq is None:
                    out.append(SlotState(i, "idle"))
                else:
                    state = "prompt" if seq.fed < len(seq.prompt) else "generating"
                    out.append(SlotState(i, state, len(seq.prompt), seq.generated))
        return out

    def forget_prompts(self) -> None:
        """Empty the prompt cache of the idle slots."""
        with self._cond:
            for slot, held in enumerate(self._held):
                if held is not None and self._slots[slot] is None:
                    self._lib.llama_memory_seq_rm(self._mem, slot, -1, -1)
                    self._held[slot] = None

    def close(self, timeout: float | None = 5.0) -> bool:
        """Stop the scheduler (sequences still running end); True once it has stopped."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
        stopped = not self._thread.is_alive()
        if stopped:
            self._sampler.shutdown()
            self._batch.close()
            self._ctx.close()
        return stopped

    # --- the scheduler -----------------------------------------------------------------

    def _finish(self, seq: _Seq, error: BaseException | None = None) -> None:
        """Free ``seq``'s slot and end its stream (scheduler thread, lock held)."""
        if seq.leader is not None:
            seq.leader.followers.remove(seq)
            seq.leader = None
        if seq.followers:  # the first one evaluates the prompt now, for itself and the rest
            head, *rest = seq.followers
            head.leader, head.followers = None, rest
            for other in rest:
                other.leader = head
            seq.followers = []
        if seq.slot >= 0:
            if self.engine.prompt_cache is not None and error is None:
                # kept for the next prompts: the cells of its prompt evaluated so far
                key = seq.scope.key if seq.scope is not None else None
                self._held[seq.slot] = _Held(seq.prompt[: seq.fed], key)
            else:
                self._lib.llama_memory_seq_rm(self._mem, seq.slot, -1, -1)
                self._held[seq.slot] = None
            self._slots[seq.slot] = None
            seq.slot = -1
        if seq.decoder is not None:
            seq.decoder.close()
            seq.decoder = None
        seq.out.put(error if error is not None else _END)

    def _admit(self) -> None:
        """Drop sequences whose client left; give free slots to waiting ones (lock held)."""
        for seq in [s for s in self._slots if s is not None]:
            if seq.left or seq.cancel.is_set():
                self._finish(seq)
        for seq in list(self._waiting):
            if seq.left or seq.cancel.is_set():
                self._waiting.remove(seq)
                self._finish(seq)
        for seq in [s for s in self._waiting if s.group is None or s.group.ready()]:
            if None not in self._slots:
                break
            self._waiting.remove(seq)
            seq.slot = self._free_slot(seq)
            self._slots[seq.slot] = seq
            try:
                seq.decoder = seq.make_decoder()
            except BaseException as exc:  # a grammar that does not compile, say
                self._finish(seq, exc)
                continue
            if seq.decoder.done:  # no budget at all: nothing to evaluate
                self._finish(seq)
            else:
                self._follow(seq)
                self._reuse(seq)

    def _free_slot(self, seq: _Seq) -> int:
        """The slot for ``seq`` (lock held): the lowest free one; with the prompt cache, the
        free one holding the longest prefix of its prompt for its key, else an empty one,
        else the one idle longest."""
        free = [i for i, s in enumerate(self._slots) if s is None]
        if self.engine.prompt_cache is None:
            return free[0]
        key = seq.scope.key if seq.scope is not None else None

        def rank(i: int) -> tuple[int, int, float]:
            held = self._held[i]
            if held is None:
                return (0, 1, 0.0)
            same = reusable(held.prompt, seq.prompt) if held.key == key else 0
            return (same, 0, -held.since)

        return max(free, key=rank)

    def _reuse(self, seq: _Seq) -> None:
        """Keep the cells of the prompt prefix ``seq``'s slot holds, drop the rest (lock held);
        a follower's slot is emptied (it copies its leader's stream)."""
        held, self._held[seq.slot] = self._held[seq.slot], None
        cache = self.engine.prompt_cache
        if cache is None:
            return
        key = seq.scope.key if seq.scope is not None else None
        start = 0
        if held is not None:
            if seq.leader is None and held.key == key:
                start = reusable(held.prompt, seq.prompt)
            self._lib.llama_memory_seq_rm(self._mem, seq.slot, start, -1)
        if seq.leader is None:
            cache.used(seq.scope, len(seq.prompt), start)
            seq.fed = seq.pos = start

    def _follow(self, seq: _Seq) -> None:
        """Let ``seq`` share the evaluation of its prompt with a sequence that has the same
        prompt and has not finished evaluating it (lock held): the ``n`` choices of a
        request (admitted together), or a request that arrives while another with the same
        prompt is still evaluating it."""
        for other in self._slots:
            if (
                other is not None
                and other is not seq
                and other.leader is None
                and other.fed < len(other.prompt)
                and other.prompt == seq.prompt
            ):
                seq.leader = other
                other.followers.append(seq)
                return

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._admit()
                while not self._closed and not any(self._slots):
                    # nothing to decode: sleep until a request comes (or, while a group is
                    # held back, until the rest of it comes or it may go)
                    self._cond.wait(0.01 if self._waiting else None)
                    self._admit()
                if self._closed:
                    for seq in [s for s in self._slots if s is not None]:
                        self._finish(seq, RuntimeError("the server is shutting down"))
                    for seq in self._waiting:
                        self._finish(seq, RuntimeError("the server is shutting down"))
                    self._waiting.clear()
                    return
                active = [s for s in self._slots if s is not None]
            if active:
                try:
                    self._step(active)
                except BaseException as exc:
                    with self._cond:
                        for seq in active:
                            if seq.slot >= 0:
                                self._finish(seq, exc)

    def _step(self, active: list[_Seq]) -> None:
        """One step: the next token of every generating sequence, in ONE llama.cpp call, then
        up to ``n_batch`` tokens of prompts, one call per piece (see :meth:`_prompt_chunk`)."""
        generating = [(s, [s.next_token]) for s in active if s.next_token is not None]
        if generating:
            if self.on_step is not None:
                self.on_step(len(generating))
            # in slot order: llama.cpp puts a run of consecutive sequence ids in one ubatch
            self._decode(generating)
        budget = self.n_batch
        for seq in active:
            while budget > 0 and seq.fed < len(seq.prompt) and seq.slot >= 0 and not seq.leader:
                chunk = self._prompt_chunk(seq)
                budget -= len(chunk)
                self._decode([(seq, chunk)])
        if not generating and budget == self.n_batch:
            time.sleep(0.001)  # nothing to decode (every sequence finished this step)

    def _prompt_chunk(self, seq: _Seq) -> list[int]:
        """The next piece of ``seq``'s prompt: cut where the one-slot path cuts it.

        The one-slot path evaluates a prompt in pieces of ``llm.n_batch`` tokens from position
        0; the same pieces here, each alone in its llama.cpp call, go through the same kernels
        with the same shapes, hence the same numbers. A piece beside other sequences would not:
        llama.cpp would split it (it takes as many tokens from each sequence of a ubatch), and
        a prompt token evaluated alone takes another kernel than one evaluated with others.
        """
        end = min(len(seq.prompt), (seq.fed // self._piece + 1) * self._piece)
        return seq.prompt[seq.fed : end]

    def _decode(self, work: list[tuple[_Seq, list[int]]]) -> None:
        """Evaluate each sequence's tokens in one llama.cpp call; sample those that are due."""
        b = self._batch.batch
        b.n_tokens = 0
        outputs: list[tuple[_Seq, int]] = []
        for seq, tokens in work:
            for token in tokens:
                j = b.n_tokens
                b.token[j] = token
                b.pos[j] = seq.pos
                b.seq_id[j][0] = seq.slot
                b.n_seq_id[j] = 1
                b.logits[j] = False
                b.n_tokens = j + 1
                seq.pos += 1
            if seq.fed < len(seq.prompt):
                seq.fed += len(tokens)
            else:
                seq.next_token = None
            if seq.fed == len(seq.prompt):  # generating, or its prompt is complete
                b.logits[b.n_tokens - 1] = True
                outputs.append((seq, b.n_tokens - 1))
        rc = self._lib.llama_decode(self._ctx.ctx, b)
        if rc != 0:
            raise RuntimeError(
                f"llama_decode returned {rc}: the KV cache of the {self.parallel} slots is full"
            )
        n_vocab = self.engine.n_vocab
        due: list[tuple[_Seq, np.ndarray]] = []
        for seq, j in outputs:
            row = np.ctypeslib.as_array(
                self._lib.llama_get_logits_ith(self._ctx.ctx, j), shape=(n_vocab,)
            )
            for other in seq.followers:  # their prompt is complete too: a copy of this one
                self._lib.llama_memory_seq_cp(self._mem, seq.slot, other.slot, -1, -1)
                other.leader = None
                other.fed, other.pos = len(other.prompt), seq.pos
                self.prompt_tokens_shared += len(other.prompt)
                due.append((other, row))
            seq.followers = []
            due.append((seq, row))
        due = [(seq, row) for seq, row in due if seq.decoder is not None]
        # Each decoder samples from its own row with its own chains: which thread runs it
        # changes nothing. The rows stay valid until the next decode, after this returns.
        # Worth a second thread only for grammars (~5 ms a token against ~0.3 ms without).
        grammars = sum(seq.decoder.grammar_on for seq, _ in due if seq.decoder is not None)
        half = len(due) // 2 if grammars >= 2 else 0
        other_half = self._sampler.submit(self._sample_each, due[:half]) if half else None
        steps = self._sample_each(due[half:])
        if other_half is not None:
            steps = other_half.result() + steps
        for (seq, _), step in zip(due, steps, strict=True):
            self._deliver(seq, step)

    @staticmethod
    def _sample_each(due: list[tuple[_Seq, np.ndarray]]) -> list[Step | None]:
        return [seq.decoder.step(row) if seq.decoder is not None else None for seq, row in due]

    def _deliver(self, seq: _Seq, step: Step | None) -> None:
        """Hand ``seq``'s next token to its consumer (None: no token was allowed)."""
        decoder = seq.decoder
        if decoder is None:
            return
        with self._cond:
            if step is None:
                self._finish(seq)
                return
            seq.generated += 1
            self.engine.tokens_generated += 1
            seq.out.put(step)
            if decoder.done:
                self._finish(seq)
            else:
                seq.next_token = step.token_id
