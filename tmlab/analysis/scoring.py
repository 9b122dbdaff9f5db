"""Scoring a given text: the log-probability of each of its tokens as the model's answer.

::

    s = tmlab.score("Paris is the capital of France.", context="Name a capital city.")
    s.total_logprob, s.mean_logprob, s.perplexity
    s.frame()          # one row per token: logprob, rank, surprisal (bits), entropy, alternatives
    s                  # the heatmap in Jupyter: the least likely tokens stand out
    s.plot()           # surprisal along the text

The text is scored as the assistant's answer to ``context`` (messages ``[user: context,
assistant: text]``; with no context, ``[assistant: text]``), so the numbers are those of the
model reading that exact turn. Two ways, chosen automatically (``method="auto"``):

* ``"echo"`` — one request with ``echo=True, logprobs=True, max_tokens=1``: the server returns
  the templated prompt's tokens with their log-probabilities (tmlab's embedded server; OpenAI
  completions-style servers). Where the text sits in the prompt is found by comparing with the
  same prompt around an empty answer (one more tiny request). Exact: the log-softmax of the
  model's raw logits at each position, the whole text in one evaluation.
* ``"continuation"`` — for servers that continue a final assistant message (vLLM's
  ``continue_final_message=True, add_generation_prompt=False``; llama.cpp's server, which
  always prefills; decided by the one continuation check, :mod:`tmlab.analysis.continuation_check`):
  one request per token, each
  continuing the text so far with ``temperature=1``; the next token is the returned
  alternative that the rest of the text starts with (the longest). A token outside the
  returned alternatives has no known log-probability: ``NaN``, with an upper bound (the
  smallest returned) in ``logprob_bound``; the walk then advances one character. The server
  tokenises each prefix itself, so the tokens are those of a left-to-right walk, which can
  differ from the tokenisation of the whole text at a few boundaries.

A server that does neither is a :class:`ScoreError` naming what is missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tmlab import capabilities
from tmlab.analysis.continuation_check import CONTINUE, acheck
from tmlab.analysis.runner import run_in_thread, sweep_client
from tmlab.errors import ParameterError, ScoreError
from tmlab.result import ChatResult, TokenLogprob, TopLogprob

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

    from tmlab.client import AsyncClient
    from tmlab.display import HTMLText

__all__ = [
    "SCORE_COLUMNS",
    "ScoreError",
    "ScoreResult",
    "ascore",
    "prompt_entries",
    "score",
    "score_echo",
]

LN2 = math.log(2.0)

SCORE_COLUMNS = [
    "position",
    "token",
    "token_id",
    "logprob",
    "prob",
    "surprisal_bits",
    "rank",
    "entropy_bits",
    "top_mass",
    "other_mass",
    "logprob_bound",
    "top_tokens",
    "top_logprobs",
]


@dataclass
class ScoreResult:
    """The tokens of a scored text, each with its log-probability as the model's answer.

    ``tokens`` are the text's tokens (``TokenLogprob``: token, logprob, bytes, token_id, the
    returned alternatives). ``total_logprob`` is their sum (natural log), ``mean_logprob``
    the mean, ``perplexity = exp(-mean_logprob)``; all NaN when a token's logprob is unknown
    (continuation, outside the alternatives). ``meaning`` says what the numbers are.
    """

    text: str
    context: str | None
    model: str | None
    tokens: list[TokenLogprob]
    method: str
    meaning: str
    top_logprobs: int
    requests: int
    bounds: list[float] = field(default_factory=list)  # continuation: NaN or an upper bound
    notes: list[str] = field(default_factory=list)
    response: ChatResult | None = field(default=None, repr=False)

    @property
    def n_tokens(self) -> int:
        """How many tokens the text has (as scored)."""
        return len(self.tokens)

    @property
    def total_logprob(self) -> float:
        """Sum of the tokens' log-probabilities (nats): log P(text | context)."""
        return math.fsum(t.logprob for t in self.tokens) if self.tokens else math.nan

    @property
    def mean_logprob(self) -> float:
        """Mean log-probability per token (nats)."""
        return self.total_logprob / len(self.tokens) if self.tokens else math.nan

    @property
    def perplexity(self) -> float:
        """``exp(-mean_logprob)``: the model's average branching factor on this text."""
        return math.exp(-self.mean_logprob)

    @property
    def perplexity_at_least(self) -> float:
        """A lower bound on :attr:`perplexity`: each token whose log-probability is unknown
        (outside the returned alternatives, a continuation walk) taken at its upper bound, the
        smallest returned alternative's. Equal to :attr:`perplexity` when every token is
        known; NaN when an unknown token has no bound either."""
        if not self.tokens:
            return math.nan
        bounds = self.bounds or [math.nan] * len(self.tokens)
        known = [
            t.logprob if not math.isnan(t.logprob) else b
            for t, b in zip(self.tokens, bounds, strict=True)
        ]
        return math.exp(-math.fsum(known) / len(known))

    @property
    def total_bits(self) -> float:
        """Total surprisal in bits: ``-total_logprob / ln 2``."""
        return -self.total_logprob / LN2

    def frame(self) -> pd.DataFrame:
        """One row per token; see ``df.attrs["notes"]`` for what each number describes.

        Columns: ``position, token, token_id, logprob, prob, surprisal_bits`` (−logprob / ln 2),
        ``rank`` (among the returned alternatives, 1 = most likely; <NA> outside them),
        ``entropy_bits`` (over the returned alternatives only: a lower bound), ``top_mass,
        other_mass`` (probability inside / outside the returned alternatives),
        ``logprob_bound`` (continuation: an upper bound where the logprob is unknown),
        ``top_tokens, top_logprobs``.
        """
        import numpy as np
        import pandas as pd

        from tmlab.frames import logprobs_frame

        inner = logprobs_frame(_as_result(self.tokens))
        df = pd.DataFrame(
            {
                "position": np.arange(len(self.tokens), dtype=np.int64),
                "token": inner["token"],
                "token_id": inner["token_id"],
                "logprob": inner["logprob"],
                "prob": inner["prob"],
                "surprisal_bits": -inner["logprob"] / LN2,
                "rank": inner["rank"],
                "entropy_bits": inner["entropy"] / LN2,
                "top_mass": inner["top_mass"],
                "other_mass": inner["other_mass"],
                "logprob_bound": np.asarray(
                    self.bounds or [math.nan] * len(self.tokens), dtype=float
                ),
                "top_tokens": inner["top_tokens"],
                "top_logprobs": inner["top_logprobs"],
            },
            columns=SCORE_COLUMNS,
        )
        df.attrs["notes"] = self.describe()
        df.attrs["meaning"] = self.meaning
        df.attrs["totals"] = {
            "total_logprob": self.total_logprob,
            "mean_logprob": self.mean_logprob,
            "perplexity": self.perplexity,
            "n_tokens": self.n_tokens,
        }
        return df

    def describe(self) -> str:
        """What the numbers are, in words."""
        parts = [
            f"log-probability of each token of the text as the model's answer"
            f"{' to the context' if self.context is not None else ' (no context)'}: "
            f"{self.meaning}. Method: {self.method} ({self.requests} request"
            f"{'s' if self.requests != 1 else ''}).",
            "surprisal_bits = -logprob / ln 2. rank, entropy_bits, top_mass, other_mass: over "
            f"the {self.top_logprobs} returned alternatives only; entropy_bits is a lower bound "
            "of the full distribution's entropy.",
        ]
        return " ".join(parts + self.notes)

    def html(self) -> HTMLText:
        """The heatmap: the text's tokens coloured by probability (low ones stand out)."""
        from tmlab.display import token_heatmap_html

        head = (
            f"total logprob {self.total_logprob:.3f} · mean {self.mean_logprob:.3f} · "
            f"perplexity {self.perplexity:.3f} · {self.n_tokens} tokens"
        )
        return token_heatmap_html(
            self.tokens,
            what=f"probability of each token of the given text ({self.meaning})",
            head=head,
        )

    def _repr_html_(self) -> str:
        return str(self.html())

    def plot(self, ax: Axes | None = None) -> Axes:
        """Surprisal (bits) of each token along the text; see
        :func:`tmlab.analysis.plots.plot_surprisal`."""
        from tmlab.analysis.plots import plot_surprisal

        return plot_surprisal(self, ax=ax)

    def __repr__(self) -> str:
        text = self.text if len(self.text) <= 40 else self.text[:37] + "..."
        return (
            f"ScoreResult(text={text!r}, n_tokens={self.n_tokens}, "
            f"total_logprob={self.total_logprob:.4f}, perplexity={self.perplexity:.4f}, "
            f"method={self.method!r})"
        )


def _as_result(tokens: list[TokenLogprob]) -> ChatResult:
    """A ChatResult holding ``tokens`` as one choice's logprobs (for the frame's arithmetic)."""
    content = [
        {
            "token": t.token,
            "logprob": None if math.isnan(t.logprob) else t.logprob,
            "bytes": t.bytes,
            "token_id": t.token_id,
            "top_logprobs": [
                {"token": a.token, "logprob": a.logprob, "bytes": a.bytes, "token_id": a.token_id}
                for a in t.top
            ],
        }
        for t in tokens
    ]
    return ChatResult({"choices": [{"index": 0, "message": {}, "logprobs": {"content": content}}]})


def messages_for(text: str, context: str | None) -> list[dict[str, str]]:
    """The conversation in which ``text`` is the model's answer."""
    msgs = [] if context is None else [{"role": "user", "content": context}]
    return [*msgs, {"role": "assistant", "content": text}]


def _check_text(name: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, str) or not value:
        raise ParameterError(name, f"{name}={value!r} is not a non-empty string", "a str")


# --- echo ---------------------------------------------------------------------------------


def prompt_entries(res: ChatResult) -> list[TokenLogprob]:
    """The echoed prompt tokens of the first choice (empty when the server echoed none)."""
    if not res.choices:
        return []
    choice = res.choices[0]
    lp = choice.raw.get("logprobs") if isinstance(choice.raw, dict) else None
    tokens = choice.logprobs or []
    if isinstance(lp, dict) and isinstance(lp.get("echo_tokens"), int):
        k = lp["echo_tokens"]
    else:  # OpenAI completions echo: the prompt's tokens, then the generated ones
        generated = res.usage.completion_tokens
        k = len(tokens) - generated if generated is not None else 0
    return list(tokens[: max(0, k)])


def _meaning_of_echo(res: ChatResult) -> str:
    lp = res.choices[0].raw.get("logprobs") if res.choices else None
    if isinstance(lp, dict) and "echo_tokens" in lp:
        return (
            "raw_logprobs (the log-softmax of the model's logits at each prompt position; "
            "no sampler is involved)"
        )
    return "as returned by the server for the echoed prompt (meaning not stated)"


def _span(with_text: list[TokenLogprob], empty: list[TokenLogprob]) -> tuple[int, int, bool]:
    """Token indices ``[a, b)`` of the text in ``with_text``; True if a token straddles.

    The two prompts differ only by the answer's text: the common byte prefix and suffix
    bound it.
    """
    full = b"".join(bytes(t.bytes or t.token.encode()) for t in with_text)
    other = b"".join(bytes(t.bytes or t.token.encode()) for t in empty)
    pre = 0
    limit = min(len(full), len(other))
    while pre < limit and full[pre] == other[pre]:
        pre += 1
    suf = 0
    while suf < limit - pre and full[len(full) - 1 - suf] == other[len(other) - 1 - suf]:
        suf += 1
    return _token_span(with_text, pre, len(full) - suf)


def _token_span(entries: list[TokenLogprob], start: int, end: int) -> tuple[int, int, bool]:
    """The tokens covering bytes ``[start, end)``; True if one reaches outside them."""
    a = b = None
    pos = 0
    straddle = False
    for i, t in enumerate(entries):
        lo, hi = pos, pos + len(bytes(t.bytes or t.token.encode()))
        if hi > start and lo < end:
            if a is None:
                a = i
                straddle |= lo < start
            b = i + 1
            straddle |= hi > end
        pos = hi
    if a is None or b is None:
        return 0, 0, False
    return a, b, straddle


def _text_end(entries: list[TokenLogprob], a: int, b: int, text: str) -> int:
    """The byte offset where the text ends in the echoed prompt (tokens [a, b) hold it)."""
    full = b"".join(bytes(t.bytes or t.token.encode()) for t in entries)
    start = sum(len(bytes(t.bytes or t.token.encode())) for t in entries[:a])
    stop = sum(len(bytes(t.bytes or t.token.encode())) for t in entries[:b])
    found = full.rfind(text.encode(), start, stop)
    return found + len(text.encode()) if found >= 0 else stop


_ECHO: dict[str, Any] = {"echo": True, "logprobs": True, "max_tokens": 1, "temperature": 0}


async def _empty_prompt(ac: AsyncClient, context: str | None, model: str | None) -> Any:
    """The echoed prompt around an empty answer (where the text goes)."""
    res = await ac.chat(messages_for("", context), model=model, top_logprobs=0, **_ECHO)
    return prompt_entries(res)


def _span_from_suffix(entries: list[TokenLogprob], text: str, suffix: int) -> tuple[int, int, bool]:
    """The text's tokens when ``suffix`` bytes follow it; (0, 0, False) if they do not fit."""
    full = b"".join(bytes(t.bytes or t.token.encode()) for t in entries)
    data = text.encode()
    end = len(full) - suffix
    if end < len(data) or full[end - len(data) : end] != data:
        return 0, 0, False
    return _token_span(entries, end - len(data), end)


async def score_echo(
    ac: AsyncClient,
    text: str,
    context: str | None,
    model: str | None,
    top: int,
) -> ScoreResult | None:
    """Score by echo; None when the server echoed no prompt logprobs.

    Where the text sits in the echoed prompt: after it come the end of the assistant turn and
    the next turn's opening, the same bytes for every text; their length is learned once per
    server and model from the prompt around an empty answer (one more request) and checked
    against the text's own bytes each time.
    """
    res = await ac.chat(messages_for(text, context), model=model, top_logprobs=top, **_ECHO)
    entries = prompt_entries(res)
    if not entries:
        return None
    requests = 1
    # how many bytes of the echoed prompt follow the answer (the end of the assistant turn
    # and the next turn's opening): the same for every text with a given template
    caps = capabilities.of(ac.base_url, model or ac.model)
    a = b = 0
    straddle = False
    if caps.echo_suffix is not None:
        a, b, straddle = _span_from_suffix(entries, text, caps.echo_suffix)
    if b <= a:
        empty = await _empty_prompt(ac, context, model)
        requests += 1
        a, b, straddle = _span(entries, empty)
        if b <= a:
            raise ScoreError(
                "the echoed prompt does not contain the text where an answer goes; "
                "the server's chat template may rewrite the assistant turn"
            )
        full = sum(len(bytes(t.bytes or t.token.encode())) for t in entries)
        caps.echo_suffix = full - _text_end(entries, a, b, text)
    notes = []
    if straddle:
        notes.append(
            "The first or last token also carries characters of the chat template around the "
            "answer (they share a token with the text)."
        )
    if any(math.isnan(t.logprob) for t in entries[a:b]):
        notes.append("The text starts the prompt: its first token has no log-probability.")
    return ScoreResult(
        text=text,
        context=context,
        model=res.model,
        tokens=entries[a:b],
        method="echo",
        meaning=_meaning_of_echo(res),
        top_logprobs=top,
        requests=requests,
        notes=notes,
        response=res,
    )


# --- continuation -------------------------------------------------------------------------


def _next_token(rest: str, tok: TokenLogprob) -> TopLogprob | None:
    """The returned alternative that ``rest`` starts with (the longest), if any."""
    best: TopLogprob | None = None
    for alt in (*tok.top, TopLogprob(tok.token, tok.logprob, tok.bytes, tok.token_id)):
        piece = bytes(alt.bytes).decode("utf-8", "replace") if alt.bytes else alt.token
        if piece and rest.startswith(piece) and (best is None or len(piece) > len(best.token)):
            best = TopLogprob(piece, alt.logprob, alt.bytes, alt.token_id)
    return best


def _step(prefix: str, context: str | None) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The messages and extra fields of one step of the walk: continue ``prefix``.

    The first token of an answer is that of a new turn: sent as one (an empty final
    assistant message is not a prefix to every server: llama.cpp's renders it as a closed
    turn).
    """
    if not prefix and context is not None:
        return [{"role": "user", "content": context}], {}
    return messages_for(prefix, context), {"extra_body": CONTINUE}


async def _score_continuation(
    ac: AsyncClient, text: str, context: str | None, model: str | None, top: int, before: int
) -> ScoreResult:
    """Score by a continuation walk; ``before``: requests already sent to decide on it."""
    tokens: list[TokenLogprob] = []
    bounds: list[float] = []
    done = 0
    requests = 0
    unknown = 0
    mode = None
    while done < len(text):
        msgs, extra = _step(text[:done], context)
        res = await ac.chat(
            msgs,
            model=model,
            max_tokens=1,
            temperature=1.0,
            logprobs=True,
            top_logprobs=top,
            **extra,
        )
        requests += 1
        mode = mode or res.raw.get("logprobs_mode")
        got = res.choices[0].logprobs if res.choices else None
        if not got:
            raise ScoreError("the server returned no logprobs for a continuation request")
        step = got[0]
        rest = text[done:]
        hit = _next_token(rest, step)
        alts = tuple(sorted(step.top, key=lambda a: -a.logprob))
        if hit is None:
            unknown += 1
            bound = min((a.logprob for a in alts), default=math.nan)
            tokens.append(TokenLogprob(rest[0], math.nan, list(rest[0].encode()), None, alts))
            bounds.append(bound)
            done += 1
            continue
        tokens.append(TokenLogprob(hit.token, hit.logprob, hit.bytes, hit.token_id, alts))
        bounds.append(math.nan)
        done += len(hit.token)
    notes = [
        "Tokens come from a left-to-right walk: each prefix is tokenised by the server, which "
        "can differ from the whole text's tokenisation at a few boundaries."
    ]
    if unknown:
        notes.append(
            f"{unknown} token(s) were outside the returned alternatives: their logprob is "
            "unknown (NaN, upper bound in logprob_bound) and they advanced one character."
        )
    meaning = (
        f"{mode}, as the response says"
        if mode
        else "as returned by the server for the next token at temperature 1 without "
        "truncation (raw unless the server applies more processing)"
    )
    return ScoreResult(
        text=text,
        context=context,
        model=model,
        tokens=tokens,
        method="continuation",
        meaning=meaning,
        top_logprobs=top,
        requests=requests + before,
        bounds=bounds,
        notes=notes,
    )


# --- entry points -------------------------------------------------------------------------

METHODS = ("auto", "echo", "continuation")


async def ascore(
    text: str,
    *,
    context: str | None = None,
    client: AsyncClient,
    model: str | None = None,
    top_logprobs: int = 20,
    method: str = "auto",
) -> ScoreResult:
    """Async :func:`score` on an :class:`~tmlab.AsyncClient` (used by ``classify``)."""
    _check_text("text", text)
    _check_text("context", context, optional=True)
    if method not in METHODS:
        raise ParameterError("method", f"method={method!r} is not known", " | ".join(METHODS))
    if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int):
        raise ParameterError("top_logprobs", f"top_logprobs={top_logprobs!r}", "an int 0..20")
    if method in ("auto", "echo"):
        out = await score_echo(client, text, context, model, top_logprobs)
        if out is not None:
            return out
        if method == "echo":
            raise ScoreError(
                "this server returned no prompt logprobs for echo=True with logprobs=True "
                "(it does not echo the prompt's tokens); try method='continuation'"
            )
    name = model or client.model
    caps = capabilities.find(client.base_url, name)
    known = caps is not None and caps.continuation is not None
    cont = await acheck(client, name)
    if cont.continues is None and cont.error is not None:
        raise cont.error  # the check could not be made (a timeout, a 5xx): not an answer
    if not cont.continues:
        raise ScoreError(
            "this server cannot score a given text: it returns no prompt logprobs for "
            "echo=True with logprobs=True, and it does not continue a final assistant message "
            f"(continue_final_message=True, add_generation_prompt=False: {cont.came_back})"
        )
    # the echo attempt, the check (when it was asked now)
    before = (1 if method == "auto" else 0) + (0 if known else cont.requests)
    return await _score_continuation(client, text, context, model, top_logprobs, before)


def score(
    text: str,
    *,
    context: str | None = None,
    client: Any = None,
    model: str | None = None,
    top_logprobs: int = 20,
    method: str = "auto",
) -> ScoreResult:
    """The log-probability of every token of ``text`` as the model's answer to ``context``.

    ``context`` is the user's message (None: the text alone, as an assistant turn);
    ``client`` a :class:`~tmlab.Client` (None: the session's), ``model`` its model by default;
    ``top_logprobs`` how many alternatives to return per token; ``method`` ``"auto"``,
    ``"echo"`` or ``"continuation"`` (see the module docstring). Returns a
    :class:`ScoreResult`: ``total_logprob``, ``mean_logprob``, ``perplexity``, ``.frame()``,
    the heatmap (its HTML display) and ``.plot()``. Raises :class:`ScoreError` when the
    server can do neither.
    """
    _check_text("text", text)
    _check_text("context", context, optional=True)
    ac = sweep_client(client)

    async def run() -> ScoreResult:
        try:
            return await ascore(
                text,
                context=context,
                client=ac,
                model=model,
                top_logprobs=top_logprobs,
                method=method,
            )
        finally:
            await ac.aclose()

    return run_in_thread(run())
