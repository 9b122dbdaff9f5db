"""The server's load, live in the Explorer: requests running and queued, tokens/s, slots.

Only for a server that says (the embedded server's ``GET /v1/stats``): a teacher projecting the
Explorer sees the room's load. A thread asks every :data:`INTERVAL_S` seconds while the panel
is open; a server without ``/stats`` is asked once, and the line stays hidden.
"""

from __future__ import annotations

import html
import threading
from typing import TYPE_CHECKING

import ipywidgets as widgets

from tmlab.display import stats_line

if TYPE_CHECKING:
    from tmlab.client import Client

__all__ = ["INTERVAL_S", "LoadLine"]

INTERVAL_S = 2.0


class LoadLine:
    """An HTML line with the server's load, refreshed by a thread until :meth:`close`."""

    def __init__(self, client: Client, interval: float = INTERVAL_S) -> None:
        self.client = client
        self.interval = interval
        self.widget = widgets.HTML(layout=widgets.Layout(display="none"))
        self.widget.add_class("tmlab-load")
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tmlab-load", daemon=True)
        self._thread.start()

    def refresh(self) -> bool:
        """Ask the server now; False when it does not say (the line then stays hidden)."""
        try:
            stats = self.client.server_stats()
        except Exception:  # not reachable now: keep the last line, try again later
            return True
        if stats is None:
            self.widget.layout.display = "none"
            return False
        text = html.escape(stats_line(stats))
        self.widget.value = f'<span style="font-size: smaller; opacity: 0.75">server: {text}</span>'
        self.widget.layout.display = None
        return True

    def _loop(self) -> None:
        while not self._closed.is_set():
            if not self.refresh():
                return
            self._closed.wait(self.interval)

    def close(self) -> None:
        """Stop asking."""
        self._closed.set()
        self.widget.close()
