"""The branch tree of a history row: :func:`tree` → a DataFrame shown as an indented outline.

Each row of the tree is one request of the history: the root (an answer) and the branches
made from it (:meth:`tmlab.ChatResult.branch`), and their branches. Columns:

- ``id``, ``depth`` (0 = root), ``parent`` (the row branched from), ``position`` and
  ``token`` (where in the parent's answer, and with which token, the branch starts);
- ``text`` (what the model said in that request), ``full_text`` (the whole answer: for a
  branch, the prefix it continued from, then ``text``);
- ``sequence_logprob``: sum of the logprobs of the tokens generated in that request (as
  returned by the server: on the embedded server the model's raw distribution);
  ``answer_logprob``: of the whole answer, the prefix's (by the parent's numbers) included;
- ``finish``: the finish reason.
"""

from __future__ import annotations

import html
import math
from typing import Any

import pandas as pd

from tmlab.display import visible_html
from tmlab.errors import ParameterError

__all__ = ["TREE_COLUMNS", "BranchTree", "tree", "tree_html"]

TREE_COLUMNS = [
    "id",
    "depth",
    "parent",
    "position",
    "token",
    "text",
    "full_text",
    "sequence_logprob",
    "answer_logprob",
    "finish",
]

_NOTES = {
    "sequence_logprob": "sum of the logprobs of the tokens generated in that request, as "
    "returned by the server (embedded server: raw, before temperature and truncation)",
    "answer_logprob": "log-probability of the whole answer: the branch prefix's (parent's "
    "tokens before the position, then the chosen token, by the parent's numbers) plus "
    "sequence_logprob; NaN where unknown (no logprobs, or a prefill text)",
}


class BranchTree(pd.DataFrame):
    """A DataFrame of :data:`TREE_COLUMNS` that displays as an indented outline."""

    @property
    def _constructor(self) -> Any:  # slices and copies are plain DataFrames
        return pd.DataFrame

    def _repr_html_(self) -> str:
        return tree_html(self)


def _full_text(row: dict[str, Any]) -> str:
    text = row.get("text") or ""
    params = row.get("params") or {}
    messages = row.get("messages") or []
    if params.get("continue_final_message") and messages:
        content = messages[-1].get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return (content or "") + text
    return text


def _num(value: Any) -> float:
    return float(value) if value is not None else math.nan


def tree(id: int) -> BranchTree:
    """The branch tree that holds history row ``id``, one row per request, root first.

    Rows come depth first (each branch under its parent, by position), so the frame reads
    as the outline it displays. See the module docstring for the columns.
    """
    from tmlab.client.history import history_path, tree_rows

    if isinstance(id, bool) or not isinstance(id, int):
        raise ParameterError("id", f"id={id!r}", "a history row id (an int)")
    rows = tree_rows(id)
    if not rows:
        where = history_path()
        raise ParameterError(
            "id",
            f"no request {id} in the history" + ("" if where else " (the history is off)"),
            "an id of tmlab.history()",
        )
    children: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        children.setdefault(row["parent_id"] if row["depth"] else None, []).append(row)
    ordered: list[dict[str, Any]] = []

    def walk(parent: Any) -> None:
        kids = sorted(
            children.get(parent, []),
            key=lambda r: (
                r["branch_position"] if r["branch_position"] is not None else -1,
                r["id"],
            ),
        )
        for row in kids:
            ordered.append(row)
            walk(row["id"])

    walk(None)
    records = []
    for row in ordered:
        seq = _num(row.get("sequence_logprob"))
        prefix = row.get("prefix_logprob")
        if row["depth"] == 0 or row.get("parent_id") is None:
            answer = seq if not row.get("params", {}).get("continue_final_message") else math.nan
        else:
            answer = seq + _num(prefix)
        records.append(
            {
                "id": row["id"],
                "depth": row["depth"],
                "parent": row["parent_id"] if row["depth"] else None,
                "position": row["branch_position"] if row["depth"] else None,
                "token": row["branch_token"] if row["depth"] else None,
                "text": row.get("text") or "",
                "full_text": _full_text(row),
                "sequence_logprob": seq,
                "answer_logprob": answer,
                "finish": row.get("finish_reason"),
            }
        )
    df = BranchTree(pd.DataFrame.from_records(records, columns=TREE_COLUMNS))
    for col in ("parent", "position"):
        df[col] = pd.array(df[col].tolist(), dtype="Int64")
    df.attrs["notes"] = dict(_NOTES)
    return df


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def tree_html(df: pd.DataFrame, *, highlight: int | None = None) -> str:
    """The tree as an indented outline: each branch under its parent, its token marked.

    A branch shows the end of the prefix it continued from (dimmed), the branching token
    (highlighted), then what the model said; each line ends with its numbers.
    """
    lines = [
        '<div class="tmlab-tree" style="font-family: var(--jp-code-font-family, monospace); '
        'font-size: 12px; line-height: 1.6">'
    ]
    for row in df.to_dict("records"):
        depth = int(row["depth"])
        text = str(row["text"])
        full = str(row["full_text"])
        parts = [f"<b>#{int(row['id'])}</b> "]
        if depth:
            token = str(row["token"]) if row["token"] is not None else ""
            prefix = full[: len(full) - len(text)]
            before = prefix[: len(prefix) - len(token)] if prefix.endswith(token) else prefix
            parts.append(
                f'<span style="opacity: 0.6">@{int(row["position"])} '
                f"\u2026{visible_html(before[-30:])}</span>"
                f'<mark class="tmlab-branch-token" style="background: #ffd54f; '
                f'border-radius: 3px; padding: 0 2px">{visible_html(token)}</mark>'
            )
        parts.append(html.escape(_short(text, 200)).replace("\n", "\u21b5 "))
        numbers = []
        seq, answer = float(row["sequence_logprob"]), float(row["answer_logprob"])
        if not math.isnan(seq):
            numbers.append(f"sequence logprob {seq:.3f}")
        if not math.isnan(answer):
            numbers.append(f"answer logprob {answer:.3f}")
        if row["finish"]:
            numbers.append(f"finish: {html.escape(str(row['finish']))}")
        if numbers:
            parts.append(f' <span style="opacity: 0.6">({" · ".join(numbers)})</span>')
        style = f"margin-left: {depth * 1.6:.1f}em"
        if highlight is not None and int(row["id"]) == highlight:
            style += "; background: #eef3f7"
        marker = "\u2514 " if depth else ""
        lines.append(
            f'<div class="tmlab-tree-node" data-id="{int(row["id"])}" style="{style}">'
            f"{marker}{''.join(parts)}</div>"
        )
    lines.append(
        '<div style="opacity: 0.6; margin-top: 4px">logprobs as returned by the server '
        "(embedded server: the model's raw distribution); answer logprob includes the "
        "branch prefix</div></div>"
    )
    return "".join(lines)
