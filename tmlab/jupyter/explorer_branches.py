"""The Explorer's branches: running a branch clicked in the token view, and the Branches tab.

:class:`BranchRunner` runs the branch that :class:`~tmlab.jupyter.tokenview.TokenView` asks
for as one of the Explorer's requests: in a worker thread, recorded with source
``explorer``, streamed into the token view (after the prefix) and the Answer tab, stopped by
Stop, superseded by Send. :class:`BranchesView` (an anywidget, ``branches.js``) is the tree of
this Explorer's runs: each prompt run a root, each branch under the answer it came from;
clicking a node shows that run in every tab.
"""

from __future__ import annotations

import html
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anywidget
import traitlets

from tmlab.jupyter.tokenview import Row, token_rows

if TYPE_CHECKING:
    from tmlab.client.stream import Delta
    from tmlab.jupyter.explorer import Explorer
    from tmlab.jupyter.job import ExplorerRequest
    from tmlab.result import ChatResult

__all__ = ["BranchRunner", "BranchesView", "prefix_rows"]


def prefix_rows(owner: ChatResult, position: int, token: int | str) -> list[Row]:
    """The tokens a branch of ``owner`` at ``position`` with ``token`` starts from."""
    rows = token_rows(owner)
    inherited = [r for r in rows if r.inherited]
    own = [r for r in rows if not r.inherited]
    out = [Row(r.owner, r.position, r.taken, r.alts, True) for r in inherited + own[:position]]
    if position < len(own):
        at = own[position]
        chosen = next(
            (
                a
                for a in (*at.alts, at.taken)
                if (a.token_id == token if isinstance(token, int) else a.token == token)
            ),
            at.taken,
        )
        out.append(Row(owner, position, chosen, at.alts, True))
    return out


def _short(text: str, n: int = 70) -> str:
    text = text.replace("\n", "\u21b5 ")
    return text if len(text) <= n else text[: n - 1] + "\u2026"


class BranchesView(anywidget.AnyWidget):
    """The tree of an Explorer's runs; a click on a node calls ``on_select(result)``."""

    _esm = Path(__file__).with_name("branches.js")

    nodes: traitlets.List[dict[str, Any]] = traitlets.List(
        help="the outline, root first, each branch under its parent"
    ).tag(sync=True)
    selected = traitlets.Int(-1, help="the node shown in the other tabs").tag(sync=True)

    def __init__(self, on_select: Callable[[ChatResult], Any] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.on_select = on_select
        self.results: list[ChatResult] = []  # in the order of ``nodes``
        self._parents: dict[int, int] = {}  # index in results -> parent's index (or -1)
        self._added: list[ChatResult] = []
        self.on_msg(self._on_message)
        self.add_class("tmlab-branches")

    def add(self, res: ChatResult) -> None:
        """Add a run (a no-op for one already there); it becomes the selected node."""
        if not any(r is res for r in self._added):
            self._added.append(res)
            self._layout()
        self.selected = next(i for i, r in enumerate(self.results) if r is res)

    def _layout(self) -> None:
        """Depth-first: each node followed by its branches, by position then age."""
        index = {id(r): i for i, r in enumerate(self._added)}
        children: dict[int, list[int]] = {}
        for i, res in enumerate(self._added):
            parent = res.parent.parent_result if res.parent is not None else None
            up = index.get(id(parent), -1) if parent is not None else -1
            children.setdefault(up, []).append(i)
        order: list[tuple[int, int]] = []

        def walk(up: int, depth: int) -> None:
            kids = children.get(up, [])
            kids.sort(key=lambda i: (self._position(i), i))
            for i in kids:
                order.append((i, depth))
                walk(i, depth + 1)

        walk(-1, 0)
        self.results = [self._added[i] for i, _ in order]
        self.nodes = [self._node(self._added[i], depth) for i, depth in order]

    def _position(self, i: int) -> int:
        parent = self._added[i].parent
        return parent.position if parent is not None else -1

    @staticmethod
    def _node(res: ChatResult, depth: int) -> dict[str, Any]:
        seq = res.sequence_logprob
        origin = res.parent
        prefix = origin.prefix_logprob if origin is not None else 0.0
        answer = seq + prefix if seq is not None and prefix is not None else None
        numbers = []
        if seq is not None:
            numbers.append(f"sequence logprob {seq:.3f}")
        if answer is not None and origin is not None:
            numbers.append(f"answer logprob {answer:.3f}")
        if res.finish_reason:
            numbers.append(f"finish: {res.finish_reason}")
        loop = res.loop
        if loop is not None:
            numbers.append(f"looping: {loop.describe()}")
        if not res.complete:
            numbers.append("partial")
        return {
            "depth": depth,
            "id": res.history_id,
            "position": origin.position if origin is not None else None,
            "token": origin.token if origin is not None else None,
            "before": _short(
                origin.prefix_text[: len(origin.prefix_text) - len(origin.token)][-30:]
            )
            if origin is not None
            else "",
            "text": _short(res.text),
            "numbers": " · ".join(numbers),
            "answer_logprob": None if answer is None or math.isnan(answer) else answer,
        }

    def _on_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict) or content.get("type") != "select":
            return
        node = content.get("node")
        if isinstance(node, int) and 0 <= node < len(self.results):
            self.selected = node
            if self.on_select is not None:
                self.on_select(self.results[node])

    def outline_html(self) -> str:
        """The outline as static HTML (what the tab shows, without the clicks)."""
        lines = []
        for n in self.nodes:
            token = "" if n["token"] is None else f"@{n['position']} [{n['token']}] "
            lines.append(
                f'<div style="margin-left: {1.6 * n["depth"]:.1f}em">'
                f"{html.escape(token + n['text'])} ({html.escape(n['numbers'])})</div>"
            )
        return "".join(lines)


class BranchRunner:
    """Runs branches for an Explorer, as its requests (Stop, supersede, history, tabs)."""

    def __init__(self, explorer: Explorer) -> None:
        self.ex = explorer
        # a new request starts: the tokens shown are the previous answer's, dimmed until the
        # new one is shown (a branch shows its prefix instead)
        explorer.stop_button.observe(self._on_busy, names="disabled")

    def _on_busy(self, change: Any) -> None:
        view = self.ex.token_view
        if change["new"] is False and not view.busy and view.tokens:
            view.stale = True

    def branch(self, owner: ChatResult, position: int, token: int | str) -> bool:
        """Branch ``owner`` at ``position`` with ``token`` in a worker thread; False if the
        branch cannot even start (the error line says why)."""
        from tmlab.errors import ParameterError
        from tmlab.jupyter.explain import error_line
        from tmlab.jupyter.job import ExplorerRequest

        ex = self.ex
        try:
            rows = prefix_rows(owner, position, token)
        except (ParameterError, IndexError) as exc:
            ex._show_error(error_line(exc))
            return False
        with ex._lock:
            if ex._job is not None:
                ex._job.cancel()
            job = ExplorerRequest(
                client=ex.client, prompt="", system=None, model=owner.model, params={}
            )
            job.thread = threading.Thread(
                target=self._work,
                args=(job, owner, position, token),
                name="tmlab-explorer-branch",
                daemon=True,
            )
            ex._job = job
            ex._jobs = [j for j in ex._jobs if j.thread and j.thread.is_alive()] + [job]
            ex._show_error("")
            ex.result = None
            ex.stop_button.disabled = False
            ex.pin_button.disabled = True
            view = ex.token_view
            view.busy = True
            taken = rows[-1].taken.token if rows else str(token)
            view.show_prefix(rows, f"branching at position {position} with {taken!r} …")
            ex.answer.value = '<i style="opacity: 0.6">branching …</i>'
            ex.status.value = "branching …"
            job.thread.start()
            return True

    def _work(
        self, job: ExplorerRequest, owner: ChatResult, position: int, token: int | str
    ) -> None:
        from tmlab.client.history import request_source
        from tmlab.jupyter.explain import error_line
        from tmlab.jupyter.job import StoppedByUser
        from tmlab.jupyter.live import Throttle
        from tmlab.result import ChatResult

        ex = self.ex
        view = ex.token_view

        def live() -> None:
            if job is ex._job:
                ex._show_live(job)
                view.streaming = "".join(job.text)

        throttle = Throttle(live, interval=0.1)

        def on_delta(delta: Delta) -> None:
            if job.stop.is_set():
                raise StoppedByUser
            job.add(delta)
            throttle.poke()

        res: ChatResult | None = None
        problem: BaseException | None = None
        stopped = False
        try:
            with request_source("explorer"):
                res = owner.branch(
                    position, token, client=ex.client, stream=True, on_delta=on_delta
                )
        except StoppedByUser as exc:
            stopped = True
            partial = getattr(exc, "partial", None)
            res = partial if isinstance(partial, ChatResult) else None
        except Exception as exc:  # one line in the widget; the next click works
            problem = exc
            partial = getattr(exc, "partial", None)
            res = partial if isinstance(partial, ChatResult) else None
        finally:
            view.busy = False
        try:
            ex._finish(job, res, problem, stopped)
            if res is None and job is ex._job:
                view.show(owner)  # nothing came back: the answer branched from again
        except Exception as exc:  # a view that failed to render must not kill the thread
            ex._show_error(f"could not show the branch: {error_line(exc)}")
