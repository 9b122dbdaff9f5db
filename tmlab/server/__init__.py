"""The embedded local server: an OpenAI-compatible chat API over a real small model.

``python -m tmlab.server`` (or ``tmlab serve``) serves SmolLM2-135M-Instruct, run by llama.cpp,
with the Tensormesh chat surface: every request parameter accepted, logprobs that are the
model's raw log-probabilities, SSE streams, and errors in the OpenAI envelope. From Python,
:func:`tmlab.client.local.start` runs it in a subprocess.

Modules: ``engine`` (llama.cpp: template, sampling loop, logprobs), ``protocol`` (request
validation), ``prompting`` (templating, tools, limits), ``chat`` (the generation loop: choices,
streams), ``text`` (incremental UTF-8, stop strings, tool calls), ``response`` (choices, usage,
timings and logprobs in the OpenAI shape), ``worker`` (the one model thread), ``limits``
(what one request may cost: body size, prompt length, ``n``, tokens, the queue), ``app``
(Starlette routes), ``__main__`` (the process).

Shared by a room, it stays responsive: a body over ``--max-body-bytes`` is a 413 without being
read, a prompt that cannot fit the context is refused from its length before it is tokenised,
``n`` and ``n × max_tokens`` are bounded (``--max-n``, ``--max-request-tokens``), and beyond
``--max-queue`` waiting requests the answer is a 503 with ``Retry-After``.
"""

from __future__ import annotations

from tmlab.meta import MODEL_NAME
from tmlab.server.engine import default_model_path

__all__ = ["MODEL_NAME", "default_model_path"]
