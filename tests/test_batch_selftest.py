"""Batch invariance is measured on the loaded model, not assumed (``tmlab.server.selftest``).

A server with ``--parallel N`` decodes a few sequences alone and batched before it serves and
claims that an answer's numbers are those it gets alone only if they came out equal, bit for
bit. Both outcomes, through the real server over a socket: separate KV caches (equal on this
build) and one KV cache shared by the slots (``--kv-unified``, known to differ), where the
server must say that answers may depend on the load.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

import tmlab.local
from tmlab.local import LocalServer
from tmlab.meta import MODEL_NAME
from tmlab.server import selftest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def unified() -> Iterator[LocalServer]:
    with tmlab.local.start(quiet=True, n_ctx=1024, parallel=2, kv_unified=True) as server:
        yield server


def _models(url: str) -> dict[str, object]:
    r = httpx.get(f"{url}/v1/models", timeout=30)
    r.raise_for_status()
    return r.json()["data"][0]


def _chat_header(url: str) -> str:
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    r.raise_for_status()
    return r.headers["X-Tmlab-Batch-Invariant"]


def test_separate_kv_caches_are_measured_equal_and_the_server_says_what_it_compared(
    parallel_server: LocalServer,
) -> None:
    model = _models(parallel_server.url)
    test = model["batch_self_test"]
    assert isinstance(test, dict), model
    assert test["equal"] is True and test["difference"] is None, test
    assert f"{len(selftest._ARRIVALS)} sequences" in test["compared"]
    assert "against each decoded alone" in test["compared"]
    assert model["batch_invariant"] is True
    assert "measured at start" in str(model["notice"]) and "equal bit for bit" in str(
        model["notice"]
    )
    assert _chat_header(parallel_server.url) == "true"
    print(f"\nself-test: {test['compared']}: equal, {test['seconds']} s")


def test_a_shared_kv_cache_is_measured_different_and_the_server_says_so(
    unified: LocalServer,
) -> None:
    model = _models(unified.url)
    test = model["batch_self_test"]
    assert isinstance(test, dict), model
    assert test["equal"] is False and "batched" in test["difference"], test
    assert model["batch_invariant"] is False
    notice = str(model["notice"])
    assert "may depend on what else the server is doing" in notice and "they differ" in notice
    assert _chat_header(unified.url) == "false"
    stats = httpx.get(f"{unified.url}/v1/stats", timeout=30).json()
    assert stats["batch_invariant"] is False and stats["batch_self_test"] == test
    print(f"\nself-test with --kv-unified: {test['difference']}")


def test_the_one_slot_server_claims_invariance_without_a_self_test(
    local_server: LocalServer,
) -> None:
    """One slot decodes one request at a time: nothing to measure, nothing batched."""
    model = _models(local_server.url)
    assert model["batch_invariant"] is True and "batch_self_test" not in model
