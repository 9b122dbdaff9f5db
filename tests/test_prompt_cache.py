"""The opt-in prompt cache of the embedded server (issue 24), over a real socket.

A server with ``--prompt-cache`` reuses the KV cells of a prompt's longest common prefix with
the prompt evaluated before it (in blocks of 16 tokens), reports them as
``usage.prompt_tokens_details.cached_tokens``, never across ``prompt_cache_isolation_key``
values, measures at start whether reuse changes the numbers, and gives the same tokens and
logprobs as the server without the cache. ``/tokenize`` with ``messages`` gives the prompt's
exact tokens (what ``prefix_diff`` compares).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import tmlab.local
from tmlab.local import LocalServer
from tmlab.meta import MODEL_NAME
from tmlab.server.prompt_cache import BLOCK

pytestmark = pytest.mark.slow

SYSTEM = " ".join(f"Rule {i}: answer questions about {i * 3} politely." for i in range(30))


@pytest.fixture(scope="module")
def cached() -> Iterator[LocalServer]:
    with tmlab.local.start(quiet=True, n_ctx=2048, prompt_cache=True, timeout=900) as server:
        yield server


@pytest.fixture(scope="module")
def cached_parallel() -> Iterator[LocalServer]:
    with tmlab.local.start(
        quiet=True, n_ctx=2048, parallel=2, prompt_cache=True, timeout=900
    ) as server:
        yield server


def _messages(question: str, system: str = SYSTEM) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def _chat(url: str, messages: list[dict[str, str]], key: str | None, **extra: Any) -> Any:
    body: dict[str, Any] = {
        "model": MODEL_NAME,
        "messages": messages,
        "max_tokens": 6,
        "temperature": 1.0,
        "seed": 7,
        "logprobs": True,
        "top_logprobs": 3,
        "return_token_ids": True,
        **extra,
    }
    if key is not None:
        body["prompt_cache_isolation_key"] = key
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
    r.raise_for_status()
    return r.json()


def _cached(body: Any) -> int:
    return int(body["usage"]["prompt_tokens_details"]["cached_tokens"])


def _model(url: str) -> Any:
    return httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]


def test_the_self_test_measured_reuse_and_the_server_says_what_it_compared(
    cached: LocalServer, local_server: LocalServer
) -> None:
    info = _model(cached.url)["prompt_cache"]
    assert info["enabled"] is True
    assert info["exact"] is True, info  # measured bit for bit on this build
    assert info["first_difference"] is None
    assert "against each evaluated from position 0" in info["compared"]
    assert info["self_test"]["reused"] > 0
    assert info["notice"].startswith("measured at start: ")
    stats = httpx.get(f"{cached.url}/v1/stats", timeout=30).json()
    assert stats["prompt_cache"]["exact"] is True
    assert _model(local_server.url)["prompt_cache"] == {"enabled": False}
    print(f"\nprompt cache self-test: {info['notice']} ({info['self_test']['seconds']} s)")


def test_cached_tokens_grow_with_a_shared_prefix_and_a_changed_first_character_misses(
    cached: LocalServer,
) -> None:
    key = secrets.token_hex(6)
    first = _chat(cached.url, _messages("Name three colours."), key)
    assert _cached(first) == 0  # a new key: nothing to reuse
    question = "What is two plus two? Explain how to add two numbers, step by step, to a child."
    second = _chat(cached.url, _messages(question), key)
    n = second["usage"]["prompt_tokens"]
    shared = next(
        i
        for i, (a, b) in enumerate(
            zip(first["prompt_token_ids"], second["prompt_token_ids"], strict=False)
        )
        if a != b
    )
    assert _cached(second) == shared // BLOCK * BLOCK > 300  # the system prompt, in blocks
    again = _chat(cached.url, _messages(question), key)
    assert _cached(again) == (n - 1) // BLOCK * BLOCK > _cached(second)  # all but the last
    changed = _chat(cached.url, _messages(question, "X" + SYSTEM[1:]), key)
    assert _cached(changed) == 0
    stats = httpx.get(f"{cached.url}/v1/stats", timeout=30).json()["prompt_cache"]
    assert stats["cached_tokens"] >= _cached(second) + _cached(again)


def test_the_numbers_are_those_of_the_server_without_the_cache(
    cached: LocalServer, local_server: LocalServer
) -> None:
    key = secrets.token_hex(6)
    messages = _messages("Tell me about rule 3.")
    _chat(cached.url, _messages("Tell me about rule 4."), key)  # caches the system prompt
    hit = _chat(cached.url, messages, key)
    assert _cached(hit) > 300
    plain = _chat(local_server.url, messages, None)
    assert _cached(plain) == 0
    assert hit["choices"][0]["token_ids"] == plain["choices"][0]["token_ids"]
    assert hit["choices"][0]["logprobs"] == plain["choices"][0]["logprobs"]  # bit for bit
    assert "cache_exact" not in hit["usage"]["prompt_tokens_details"]  # measured exact
    # without --prompt-cache nothing is ever reused
    assert _cached(_chat(local_server.url, messages, None)) == 0


def test_different_isolation_keys_never_share_a_prefix(cached: LocalServer) -> None:
    a, b = secrets.token_hex(6), secrets.token_hex(6)
    messages = _messages("Which rule is about 9?")
    _chat(cached.url, messages, a)
    assert _cached(_chat(cached.url, messages, a)) > 300  # the same key reuses it
    assert _cached(_chat(cached.url, messages, b)) == 0  # another key does not
    assert _cached(_chat(cached.url, messages, None)) == 0  # nor does no key
    assert _cached(_chat(cached.url, messages, None)) > 300  # no key reuses no key's
    assert _cached(_chat(cached.url, messages, a)) == 0  # a's entry is gone (one slot)


def test_slots_keep_their_prefixes_apart_and_the_numbers_equal(
    cached_parallel: LocalServer, local_server: LocalServer
) -> None:
    url = cached_parallel.url
    info = _model(url)
    assert info["prompt_cache"]["exact"] is True and info["batch_invariant"] is True
    a, b = secrets.token_hex(6), secrets.token_hex(6)
    messages = _messages("Which rule is about 12?")
    _chat(url, messages, a)
    assert _cached(_chat(url, messages, b)) == 0  # another slot, evaluated in full
    hit_a = _chat(url, messages, a)  # each key finds its own slot's prefix
    hit_b = _chat(url, messages, b)
    assert _cached(hit_a) > 300 and _cached(hit_b) > 300
    plain = _chat(local_server.url, messages, None)
    for hit in (hit_a, hit_b):
        assert hit["choices"][0]["token_ids"] == plain["choices"][0]["token_ids"]
        assert hit["choices"][0]["logprobs"] == plain["choices"][0]["logprobs"]


def test_tokenize_messages_gives_the_prompt_the_server_evaluated(cached: LocalServer) -> None:
    messages = _messages("Name a fruit.")
    r = httpx.post(
        f"{cached.url}/tokenize", json={"messages": messages, "model": MODEL_NAME}, timeout=60
    )
    r.raise_for_status()
    tok = r.json()
    body = _chat(cached.url, messages, secrets.token_hex(6))
    assert tok["tokens"] == body["prompt_token_ids"]
    assert tok["count"] == body["usage"]["prompt_tokens"] == len(tok["pieces"])
    assert tok["pieces"][0] == "<|im_start|>" and "".join(tok["pieces"]).endswith("assistant\n")
    # without the generation prompt: the same tokens up to the assistant header
    r = httpx.post(
        f"{cached.url}/tokenize",
        json={"messages": messages, "add_generation_prompt": False},
        timeout=60,
    )
    open_ = r.json()["tokens"]
    assert open_ == tok["tokens"][: len(open_)] and len(open_) < tok["count"]
    # a plain prompt keeps its shape, with pieces added
    plain = httpx.post(f"{cached.url}/tokenize", json={"prompt": "Hello there"}, timeout=60).json()
    assert "".join(plain["pieces"]) == "Hello there" and plain["count"] == len(plain["tokens"])
