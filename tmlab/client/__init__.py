"""The client layer: talking to an OpenAI-compatible server.

``Client`` and ``AsyncClient`` (:mod:`~tmlab.client.clients`, over :mod:`~tmlab.client.base`)
send requests; the stream is read (:mod:`~tmlab.client.reader`, :mod:`~tmlab.client.sse`) and
assembled (:mod:`~tmlab.client.stream`, :mod:`~tmlab.client.think`), failures retried
(:mod:`~tmlab.client.retry`); :mod:`~tmlab.client.settings` resolves the base URL, key and
model, :mod:`~tmlab.client.history` records every request, :mod:`~tmlab.client.reruns` sends
one again, and :mod:`~tmlab.client.local` starts the embedded server (a private child, or the
one shared by a user's kernels).

Imports go down only: this layer uses the core (``tmlab.result``, ``tmlab.params``, …) and,
to launch it, the server's handshake; never the analyses or the Jupyter front ends.
"""

from tmlab.client.clients import AsyncClient, Client

__all__ = ["AsyncClient", "Client"]
