"""The What-if tab starts in the order of the server that answered: truncation first for the
embedded server (and llama.cpp's), temperature first where the server is not known."""

from __future__ import annotations

import tmlab
from tmlab.jupyter.whatif import WhatIfPanel, server_order
from tmlab.local import LocalServer
from tmlab.result import ChatResult


def _raw(**extra: object) -> dict:
    content = [{"token": "A", "logprob": -0.1, "top_logprobs": [{"token": "A", "logprob": -0.1}]}]
    choice = {"index": 0, "message": {"content": "A"}, "logprobs": {"content": content}}
    return {"choices": [choice], **extra}


def test_order_from_the_answer() -> None:
    assert server_order(ChatResult(_raw())) is None  # vLLM-like: not known
    assert server_order(ChatResult(_raw(timings={"predicted_n": 1}))) == "truncate_first"
    panel = WhatIfPanel()
    assert panel.order.value == "temperature_first"
    panel.set_result(ChatResult(_raw(timings={})))
    assert panel.order.value == "truncate_first"
    panel.set_result(ChatResult(_raw()))  # unknown server: the order stays as it was
    assert panel.order.value == "truncate_first"


def test_the_embedded_server_is_recognised(local_server: LocalServer) -> None:
    with tmlab.Client(base_url=local_server.base_url) as client:
        res = client.chat("Hi", max_tokens=2, logprobs=True, top_logprobs=2)
    assert server_order(res) == "truncate_first"
    panel = WhatIfPanel()
    panel.set_result(res, res.request)
    assert panel.order.value == "truncate_first"
