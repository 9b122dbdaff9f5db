"""The client layer: talking to an OpenAI-compatible server.

``Client`` and ``AsyncClient`` (:mod:`~tmlab.client.clients`, over :mod:`~tmlab.client.base`)
send requests; the stream is read (:mod:`~tmlab.client.reader`, :mod:`~tmlab.client.sse`) and
assembled (:mod:`~tmlab.client.stream`, :mod:`~tmlab.client.think`), failures retried
(:mod:`~tmlab.client.retry`); :mod:`~tmlab.client.settings` resolves the base URL, key and
model, :mod:`~tmlab.client.history` records every request, :mod:`~tmlab.client.reruns` sends
one again; :mod:`~tmlab.client.local` finds or starts the embedded server a user's kernels
share, :mod:`~tmlab.client.child` a private one in a child process.

Imports go down only: this layer uses the core (``tmlab.result``, ``tmlab.params``, …; the
server's ready line and state file are in ``tmlab.meta``), never the server, the analyses or
the Jupyter front ends.
"""

from tmlab.client.clients import AsyncClient, Client

__all__ = ["AsyncClient", "Client"]
