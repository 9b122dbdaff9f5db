"""A real Jupyter kernel for tests: started with ``jupyter_client``, driven by messages.

The kernel's stop button is :meth:`jupyter_client.KernelManager.interrupt_kernel`, which sends
SIGINT to the kernel's whole process group, as JupyterLab does: tests that press it here press
the real button.
"""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.manager import KernelManager


@dataclass
class Execution:
    """One cell run: its reply and the iopub messages that belong to it."""

    msg_id: str
    outputs: list[dict[str, Any]] = field(default_factory=list)
    reply: dict[str, Any] | None = None

    @property
    def status(self) -> str | None:
        """``ok``, ``error`` or ``aborted`` once the reply arrived."""
        return None if self.reply is None else self.reply["content"]["status"]

    @property
    def text(self) -> str:
        """Everything the cell showed as text (streams, text/plain of displays, errors)."""
        parts = []
        for msg in self.outputs:
            content = msg["content"]
            kind = msg["header"]["msg_type"]
            if kind == "stream":
                parts.append(content["text"])
            elif kind in ("display_data", "update_display_data", "execute_result"):
                parts.append(content.get("data", {}).get("text/plain", ""))
            elif kind == "error":
                parts.append(f"{content['ename']}: {content['evalue']}")
        return "\n".join(parts)


class Kernel:
    """A started kernel with its client; ``run`` a cell, or ``start`` one and ``interrupt``."""

    def __init__(self, km: KernelManager) -> None:
        self.km = km
        self.kc = km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self._runs: dict[str, Execution] = {}

    def start(self, code: str) -> Execution:
        """Send ``code`` to run; returns at once."""
        run = Execution(self.kc.execute(code, store_history=True, allow_stdin=False))
        self._runs[run.msg_id] = run
        return run

    def pump(self, timeout: float = 0.05) -> None:
        """Read the messages that arrived, filing each under its cell."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            try:
                msg = self.kc.get_iopub_msg(timeout=left)
            except queue.Empty:
                break
            run = self._runs.get(msg["parent_header"].get("msg_id"))
            if run is not None and msg["header"]["msg_type"] != "status":
                run.outputs.append(msg)
        while True:
            try:
                reply = self.kc.get_shell_msg(timeout=0)
            except queue.Empty:
                return
            run = self._runs.get(reply["parent_header"].get("msg_id"))
            if run is not None:
                run.reply = reply

    def wait_until(self, cond: Callable[[], bool], timeout: float, what: str) -> float:
        """Pump messages until ``cond()``; return the seconds it took (AssertionError if not)."""
        t0 = time.monotonic()
        while not cond():
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
            self.pump()
        return time.monotonic() - t0

    def finish(self, run: Execution, timeout: float = 120.0) -> Execution:
        """Wait for ``run``'s reply (and the outputs sent before it)."""
        self.wait_until(lambda: run.reply is not None, timeout, "the cell to finish")
        self.pump(0.2)  # iopub may trail the shell reply
        return run

    def run(self, code: str, timeout: float = 120.0) -> Execution:
        """Run a cell to its end; raises with the cell's output when it failed."""
        run = self.finish(self.start(code), timeout)
        if run.status != "ok":
            raise AssertionError(f"cell failed ({run.status}):\n{code}\n---\n{run.text}")
        return run

    def value(self, expr: str, timeout: float = 120.0) -> Any:
        """Evaluate ``expr`` in the kernel; its ``repr`` parsed back as a Python literal."""
        import ast

        run = self.run(f"print(repr({expr}))", timeout)
        try:
            return ast.literal_eval(run.text.strip())
        except (ValueError, SyntaxError):
            raise AssertionError(f"{expr} gave {run.text.strip()[:500]!r}") from None

    def interrupt(self) -> None:
        """Press the stop button (SIGINT to the kernel's process group)."""
        self.km.interrupt_kernel()


@contextmanager
def kernel(env: dict[str, str] | None = None, cwd: str | None = None) -> Iterator[Kernel]:
    """A fresh kernel of this Python (with tmlab), stopped afterwards."""
    km = KernelManager(kernel_name="python3")
    full = {**os.environ, **(env or {})}
    for name in ("TENSORMESH_INFERENCE_API_KEY", "TENSORMESH_SERVERLESS_BASE_URL"):
        full.pop(name, None)  # the embedded server: the kernel has no key
    km.start_kernel(env=full, cwd=cwd)
    k = None
    try:
        k = Kernel(km)
        yield k
    finally:
        if k is not None:
            k.kc.stop_channels()
        km.shutdown_kernel(now=True)
