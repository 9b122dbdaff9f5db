"""The probability tree of an answer's first tokens: :func:`continuations`.

At each node (the prompt, then the prompt followed by a path of tokens), one request of one
token with ``top_logprobs=width`` returns the ``width`` most likely next tokens and their
probabilities; each of them is a child, and each child below ``depth`` is asked in turn, as
a continuation of a final assistant message holding its path (on the embedded server as
exact token ids, see :mod:`tmlab.analysis.branching`). Depth 3, width 3 costs at most
``1 + 3 + 9 = 13`` requests, none repeated; a path that ends the answer (an end-of-turn
token) has no children and costs none.

``path_prob`` is exact: the product of the probabilities along the path as the server
returned them, ``exp(Σ logprob)``. On the embedded server (and vLLM by default) these are the
model's raw probabilities, before temperature, penalties and truncation: the distribution a
sampler draws from at temperature 1 with every truncation off, so sampled frequencies of the
first tokens converge to these numbers. Siblings' probabilities do not sum to 1: the rest,
``1 - Σ`` (column ``other_mass`` of their parent), is outside the ``width`` returned.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from tmlab import capabilities
from tmlab.errors import ParameterError

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from tmlab.client import Client
    from tmlab.result import TopLogprob

__all__ = ["CONTINUATION_COLUMNS", "ContinuationTree", "continuations", "plot_continuations"]

CONTINUATION_COLUMNS = [
    "node",
    "parent",
    "depth",
    "rank",
    "token",
    "token_id",
    "logprob",
    "prob",
    "path",
    "text",
    "path_logprob",
    "path_prob",
    "other_mass",
    "ends",
]

# Tokens that end the answer (end of turn / of text): a path ending with one has no children.
_END = re.compile(r"^(<\|[A-Za-z_]*(end|eot|eos)[A-Za-z_]*\|>|</s>|<eos>|<end_of_turn>)$")
# What continuations() sets itself, per request.
_OWN = ("max_tokens", "max_completion_tokens", "logprobs", "top_logprobs", "n", "stream")
_MAX_REQUESTS = 400

_NOTES = {
    "prob": "probability of this token after its parent's path, as returned by the server "
    "(embedded server: the model's raw distribution, before temperature and truncation)",
    "path_prob": "exact: the product of prob along the path (exp of path_logprob)",
    "other_mass": "1 - the sum of this node's children's prob: the mass of the tokens "
    "outside the width returned (NaN for nodes that were not expanded)",
    "ends": "the token ends the answer (end of turn, named so or, as llama.cpp's server shows "
    "control tokens, empty): the path has no children, and the token adds nothing to text",
}


class ContinuationTree(pd.DataFrame):
    """A DataFrame of :data:`CONTINUATION_COLUMNS`, with :meth:`plot_tree`."""

    @property
    def _constructor(self) -> Any:  # slices and copies are plain DataFrames
        return pd.DataFrame

    def plot_tree(self, ax: Axes | None = None) -> Axes:
        """Same as :func:`plot_continuations`."""
        return plot_continuations(self, ax=ax)


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ParameterError(name, f"{name}={value!r}", f"an int in {lo}..{hi}")
    return value


def _bytes(alt: TopLogprob) -> bytes:
    return bytes(alt.bytes) if alt.bytes is not None else alt.token.encode("utf-8")


def continuations(
    prompt: str | Sequence[Mapping[str, Any]],
    *,
    depth: int = 3,
    width: int = 3,
    client: Client | None = None,
    model: str | None = None,
    system: str | None = None,
    **params: Any,
) -> ContinuationTree:
    """The probability tree of the first ``depth`` tokens of the answer to ``prompt``.

    Each node is one of the ``width`` most likely tokens after its parent's path, with its
    probability and its exact path probability (the product along the path). One request of
    one token per expanded node (≤ ``1 + width + … + width**(depth-1)``, none repeated); on a
    server other than the embedded one the continuation check costs one or two more, once
    (:func:`tmlab.analysis.branching.ensure_continues`). ``params`` go with every request (the
    prompt's settings; the probabilities returned do not depend on sampling settings on servers that
    return raw logprobs). ``df.attrs["requests"]`` is the number of requests made.
    """
    from tmlab.analysis.branching import continue_final, ensure_continues
    from tmlab.client import Client
    from tmlab.client.base import as_messages

    depth = _check_int("depth", depth, 1, 8)
    width = _check_int("width", width, 1, 20)
    for name in _OWN:
        if name in params:
            raise ParameterError(
                name,
                f"continuations() sets {name} itself (one token per request, top_logprobs=width)",
                "leave it out; choose width= and depth=",
            )
    bound = sum(width**d for d in range(depth))
    if bound > _MAX_REQUESTS:
        raise ParameterError(
            "width",
            f"depth={depth}, width={width} could take {bound} requests",
            f"at most {_MAX_REQUESTS}: a smaller width or depth",
        )
    messages = as_messages(prompt, system)
    ask = {"max_tokens": 1, "logprobs": True, "top_logprobs": width, **params}
    own = client is None
    c = Client() if client is None else client
    requests = 0
    try:
        root = c.chat(messages, model=model, **ask)
        requests += 1
        name = str(root.request.get("model") or model)
        if depth > 1 and not c.embedded:
            caps = capabilities.find(c.base_url, name)
            known = caps is not None and caps.continuation is not None
            checked = ensure_continues(c, name)
            requests += 0 if known else checked.requests
        rows: list[dict[str, Any]] = []
        # (row index of the parent or -1, token ids or None, bytes, path logprob, answer)
        frontier: list[tuple[int, list[int] | None, bytes, float, Any]] = [(-1, [], b"", 0.0, root)]
        for level in range(1, depth + 1):
            later = []
            for parent, ids, path_bytes, path_lp, res in frontier:
                entries = res.choices[0].logprobs if res.choices else None
                if not entries:
                    raise ParameterError(
                        "logprobs",
                        f"the server at {c.base_url} returned no logprobs",
                        "a server that returns logprobs and top_logprobs",
                    )
                alts = sorted(entries[0].top, key=lambda a: -a.logprob)[:width]
                if parent >= 0:
                    rows[parent]["other_mass"] = max(
                        0.0, 1.0 - math.fsum(math.exp(a.logprob) for a in alts)
                    )
                for rank, alt in enumerate(alts, 1):
                    # by its name, or (llama.cpp's server) an empty text: a control token
                    ends = bool(_END.match(alt.token)) or not _bytes(alt)
                    # an end-of-turn token adds nothing to the answer's text
                    child_bytes = path_bytes + (b"" if ends else _bytes(alt))
                    child_ids = (
                        [*ids, int(alt.token_id)]
                        if ids is not None and alt.token_id is not None
                        else None
                    )
                    lp = path_lp + alt.logprob
                    parent_path = rows[parent]["path"] if parent >= 0 else ()
                    rows.append(
                        {
                            "node": len(rows),
                            "parent": parent,
                            "depth": level,
                            "rank": rank,
                            "token": alt.token,
                            "token_id": alt.token_id,
                            "logprob": alt.logprob,
                            "prob": math.exp(alt.logprob),
                            "path": (*parent_path, alt.token),
                            "text": child_bytes.decode("utf-8", errors="replace"),
                            "path_logprob": lp,
                            "path_prob": math.exp(lp),
                            "other_mass": math.nan,
                            "ends": ends,
                        }
                    )
                    if level < depth and not ends:
                        nxt = continue_final(
                            c,
                            messages,
                            child_bytes.decode("utf-8", errors="replace"),
                            model=name,
                            token_ids=child_ids,
                            **ask,
                        )
                        requests += 1
                        later.append((len(rows) - 1, child_ids, child_bytes, lp, nxt))
            frontier = later
    finally:
        if own:
            c.close()
    df = ContinuationTree(pd.DataFrame.from_records(rows, columns=CONTINUATION_COLUMNS))
    df["token_id"] = pd.array(df["token_id"].tolist(), dtype="Int64")
    df.attrs["notes"] = dict(_NOTES)
    df.attrs["requests"] = requests
    df.attrs["root_other_mass"] = max(
        0.0, 1.0 - math.fsum(df.loc[df["depth"] == 1, "prob"].tolist())
    )
    return df


def plot_continuations(df: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """An icicle plot of a :func:`continuations` tree: one column per depth.

    Each node is a bar whose height is its exact path probability, stacked inside its
    parent's span (the whole column is probability 1), labelled with its token and its
    probability given the parent; the hatched grey rest of a span is the mass outside the
    width returned.
    """
    from tmlab.analysis.plots import axes_of
    from tmlab.display import token_shown

    depth = int(df["depth"].max()) if len(df) else 1
    ax = axes_of(ax, (2.6 * depth + 1.5, 5.5))
    start: dict[int, float] = {-1: 0.0}
    span: dict[int, float] = {-1: 1.0}
    filled: dict[int, float] = {}
    for row in df.to_dict("records"):
        parent = int(row["parent"])
        y0 = start[parent] + filled.get(parent, 0.0)
        height = float(row["path_prob"])
        filled[parent] = filled.get(parent, 0.0) + height
        node = int(row["node"])
        start[node], span[node] = y0, height
        x = int(row["depth"])
        ax.bar(x, height, bottom=y0, width=0.92, color="#7a9cc6", edgecolor="white")
        if height > 0.025:
            label = f"{token_shown(str(row['token']))} {row['prob']:.2f}"
            ax.text(x, y0 + height / 2, label, ha="center", va="center", fontsize=8)
    for parent, used in filled.items():
        rest = span[parent] - used
        if rest > 1e-9:
            x = 1 if parent < 0 else int(df.loc[df["node"] == parent, "depth"].iloc[0]) + 1
            y0 = start[parent] + used
            ax.bar(x, rest, bottom=y0, width=0.92, color="#dddddd", hatch="//", edgecolor="#999")
    ax.set_xticks(range(1, depth + 1))
    ax.set_xticklabels([f"token {d}" for d in range(1, depth + 1)])
    ax.set_ylim(0, 1)
    ax.set_ylabel("path probability (exact: product along the path)")
    ax.set_title(
        "Probability tree of the first tokens (as returned by the server)\n"
        "hatched grey: mass outside the tokens returned; label: probability given the parent",
        fontsize=10,
    )
    ax.invert_yaxis()
    return ax
