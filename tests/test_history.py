"""The request history: what every request leaves behind in SQLite, and that nothing is lost."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import tmlab
from tmlab.history import COLUMNS, SCHEMA_VERSION, get_row, record, request_source
from tmlab.local import LocalServer
from tmlab.result import ChatResult, Timing

KEY = "tm-sk-HISTORYSECRET-0123456789"


def _result(text: str = "Hello there", complete: bool = True) -> ChatResult:
    raw = {
        "model": "m",
        "choices": [
            {"index": 0, "message": {"content": text}, "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }
    return ChatResult(raw, timing=Timing(0.5, 0.1, 40.0), complete=complete)


BODY = {
    "model": "m",
    "messages": [{"role": "user", "content": "hi"}],
    "temperature": 0.7,
    "stream": True,
    "stream_options": {"include_usage": True},
}


def test_columns_are_in_the_documented_order(history_db: str) -> None:
    record(BODY, base_url="http://x/v1", result=_result())
    df = tmlab.history()
    assert tuple(df.columns) == COLUMNS
    row = df.iloc[0]
    assert row["source"] == "client"
    assert row["params"] == {"temperature": 0.7}  # not model/messages/stream/stream_options
    assert row["messages"] == [{"role": "user", "content": "hi"}]
    assert row["text"] == "Hello there"
    assert bool(row["complete"]) is True
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (5, 3, 8)
    assert row["latency_s"] == 0.5 and row["ttft_s"] == 0.1 and row["tokens_per_s"] == 40.0
    assert row["time"].endswith("+00:00")  # UTC ISO


def test_filters_and_last_n(history_db: str) -> None:
    for i in range(5):
        with request_source("sweep" if i % 2 else "magic"):
            record({**BODY, "model": f"m{i % 2}"}, base_url=None, result=_result(f"t{i}"))
    assert list(tmlab.history(n=2)["text"]) == ["t3", "t4"]  # the last two, oldest first
    assert list(tmlab.history(source="sweep")["text"]) == ["t1", "t3"]
    assert list(tmlab.history(model="m0")["text"]) == ["t0", "t2", "t4"]
    with pytest.raises(tmlab.ParameterError, match="source"):
        tmlab.history(source="nope")


def test_key_is_scrubbed_from_every_stored_text(history_db: str) -> None:
    body = {**BODY, "messages": [{"role": "user", "content": f"my key is {KEY}"}]}
    record(body, base_url="http://x/v1", result=_result(f"echo {KEY}"), secret=KEY)
    assert KEY.encode() not in Path(history_db).read_bytes()
    assert "***" in tmlab.history().iloc[0]["text"]


def _with_logprobs(tokens: list[str]) -> ChatResult:
    res = _result("".join(tokens))
    content = [
        {"token": t, "logprob": -0.5, "bytes": list(t.encode()), "top_logprobs": []} for t in tokens
    ]
    res.raw["choices"][0]["logprobs"] = {"content": content}
    return ChatResult(res.raw)


def test_an_answer_with_logprobs_is_stored_whole_never_with_the_key(history_db: str) -> None:
    import sqlite3
    import zlib

    from tmlab.history import stored_answer

    kept = record(BODY, base_url="x", result=_with_logprobs(["Hel", "lo"]), secret=KEY)
    plain = record(BODY, base_url="x", result=_result(), secret=KEY)
    # the key in the answer, split across two tokens: no scrub of a token finds it
    leaky = record(BODY, base_url="x", result=_with_logprobs([KEY[:9], KEY[9:]]), secret=KEY)
    assert kept is not None and plain is not None and leaky is not None
    stored = stored_answer(kept)
    assert stored is not None and stored["text"] == "Hello"
    assert [e["token"] for e in stored["raw"]["choices"][0]["logprobs"]["content"]] == [
        "Hel",
        "lo",
    ]
    assert stored_answer(plain) is None  # no logprobs: no tokens to keep
    assert stored_answer(leaky) is None  # its text row is kept, scrubbed; its tokens are not
    assert tmlab.history().iloc[-1]["text"] == "***"
    with sqlite3.connect(history_db) as conn:
        blobs = [b for (b,) in conn.execute("SELECT answer FROM requests") if b is not None]
    assert len(blobs) == 1 and KEY[:9] not in zlib.decompress(blobs[0]).decode()
    assert "answer" not in tmlab.history().columns


def test_history_off_records_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMLAB_HISTORY", "off")
    assert record(BODY, base_url=None, result=_result()) is None
    assert tmlab.history().empty


def test_session_setting_overrides_the_environment(history_db: str, tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite3"
    tmlab.session.update(history=str(other))
    record(BODY, base_url=None, result=_result())
    assert other.exists() and not Path(history_db).exists()
    tmlab.session.update(history="off")
    assert record(BODY, base_url=None, result=_result()) is None


def test_threads_lose_no_row(history_db: str) -> None:
    ids: list[int | None] = []
    lock = threading.Lock()

    def write(n: int) -> None:
        for i in range(25):
            row = record(BODY, base_url=None, result=_result(f"{n}-{i}"))
            with lock:
                ids.append(row)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 200 and None not in ids
    assert len(tmlab.history()) == 200


_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from tmlab.history import record
    from tmlab.result import ChatResult
    raw = {"choices": [{"index": 0, "message": {"content": "row"}, "finish_reason": "stop"}]}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    for i in range(int(sys.argv[1])):
        record(body, base_url=None, result=ChatResult(raw))
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)  # a kernel killed right after its request
    """
)


def test_a_killed_process_loses_nothing_that_finished(history_db: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _WRITER, "3", "kill"], check=False)
    assert proc.returncode == -9
    assert len(tmlab.history()) == 3


def test_several_processes_write_at_once(history_db: str) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, "40", "exit"]) for _ in range(3)]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    df = tmlab.history()
    assert len(df) == 120 and df["id"].is_unique


def test_an_old_schema_is_migrated_not_replaced(history_db: str) -> None:
    conn = sqlite3.connect(history_db)
    conn.execute("CREATE TABLE unrelated (x)")  # the user's file, at version 0
    conn.commit()
    conn.close()
    record(BODY, base_url=None, result=_result())
    conn = sqlite3.connect(history_db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT count(*) FROM unrelated").fetchone()[0] == 0
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


# -- the client records its requests -------------------------------------------------------


def _mock(status: int, body: dict[str, Any]) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status, json=body))


def test_a_refused_key_is_a_row_with_the_error_and_never_the_key(history_db: str) -> None:
    body = {"error": {"message": f"key {KEY} refused", "type": "auth"}}
    client = tmlab.Client(
        base_url="https://api.example/v1", api_key=KEY, model="m", transport=_mock(401, body)
    )
    client.max_retries = 0
    with pytest.raises(tmlab.AuthenticationError) as info:
        client.chat("hi", temperature=0.2)
    row = get_row(info.value.history_id)  # type: ignore[attr-defined]
    assert row is not None and row["complete"] is False
    assert row["error"].startswith("AuthenticationError: 401")
    assert row["params"] == {"temperature": 0.2} and row["base_url"] == "https://api.example/v1"
    assert KEY.encode() not in Path(history_db).read_bytes()


def test_a_bad_parameter_sends_nothing_and_logs_nothing(history_db: str) -> None:
    client = tmlab.Client(base_url="https://api.example/v1", model="m", transport=_mock(200, {}))
    with pytest.raises(tmlab.ParameterError):
        client.chat("hi", temperature=9)
    assert tmlab.history().empty


@pytest.mark.slow
def test_requests_to_the_local_server_are_rows_with_what_was_sent(
    history_db: str, local_server: LocalServer
) -> None:
    with tmlab.Client(base_url=local_server.base_url) as client:
        res = client.chat("Say hi", temperature=0.0, max_tokens=4, seed=3)
        with request_source("sweep"):
            streamed = client.chat("Say hi", stream=True, max_tokens=4, top_k=5)
    df = tmlab.history()
    assert list(df["id"]) == [res.history_id, streamed.history_id]
    first, second = df.iloc[0], df.iloc[1]
    assert first["params"] == {"temperature": 0.0, "max_tokens": 4, "seed": 3}
    assert first["source"] == "client" and second["source"] == "sweep"
    assert second["params"] == {"max_tokens": 4, "top_k": 5}
    assert first["text"] == res.text and second["text"] == streamed.text
    assert first["completion_tokens"] == res.usage.completion_tokens
    assert first["base_url"] == local_server.base_url and first["model"] == res.model


@pytest.mark.slow
def test_ctrl_c_mid_stream_keeps_the_partial_answer(
    history_db: str, local_server: LocalServer, tmp_path: Path
) -> None:
    """The kernel's stop button while ``client.chat(stream=True)`` streams, for real: a
    Jupyter kernel started with ``jupyter_client`` runs the README's streaming example and is
    interrupted (SIGINT to its process group, as JupyterLab's button sends it). The cell ends
    with a KeyboardInterrupt carrying the partial answer; the history row holds that answer,
    not complete, error 'interrupted'; and the server stopped generating it."""
    from _kernel import kernel

    stats = f"{local_server.url}/v1/stats"
    with kernel({"TMLAB_HISTORY": history_db}, cwd=str(tmp_path)) as k:
        k.run(f"import sys, tmlab\nclient = tmlab.Client(base_url={local_server.base_url!r})")
        run = k.start(
            "client.chat('Tell me a long story.', stream=True, max_tokens=2000, ignore_eos=True,\n"
            "            on_delta=lambda d: print(d.text, end=''))"
        )
        k.wait_until(lambda: len(run.text) > 100, 120, "the answer to stream in")
        assert httpx.get(stats, timeout=30).json()["running"] == 1
        t0 = time.monotonic()
        k.interrupt()
        k.wait_until(lambda: run.reply is not None, 30, "the interrupted cell to end")
        took = time.monotonic() - t0
        k.pump(0.5)  # the last printed pieces
        (error,) = [m["content"] for m in run.outputs if m["header"]["msg_type"] == "error"]
        assert error["ename"] == "KeyboardInterrupt", error
        shown = "".join(
            m["content"]["text"] for m in run.outputs if m["header"]["msg_type"] == "stream"
        )
        kind, complete, partial, row_id = k.value(
            "(lambda e: (type(e).__name__, e.partial.complete, e.partial.text, e.history_id))"
            "(sys.last_value)"
        )
        while httpx.get(stats, timeout=30).json()["running"] and time.monotonic() - t0 < 60:
            time.sleep(0.05)
        freed = time.monotonic() - t0
    print(
        f"\ninterrupt -> cell ended in {took:.2f} s, server free after {freed:.2f} s; "
        f"{len(partial)} characters kept, {len(shown)} shown"
    )
    assert kind == "KeyboardInterrupt" and complete is False
    # what the cell showed, up to the interrupt, is what was kept (the interrupt may fall
    # between a piece's arrival and its print: kept, not yet shown)
    assert len(shown) > 100 and partial.startswith(shown), (shown, partial)
    row = get_row(row_id)
    assert row is not None
    assert row["complete"] is False and row["error"] == "interrupted"
    assert row["text"] == partial
    # the connection was closed, so the server stopped: 2,000 tokens would take ~20 s here
    assert freed < 10.0, freed


@pytest.mark.slow
def test_rerun_sends_the_logged_request_again(history_db: str, local_server: LocalServer) -> None:
    tmlab.session.update(base_url=local_server.base_url)
    with tmlab.Client() as client:
        first = client.chat("Name a colour.", temperature=0.0, max_tokens=5)
    again = tmlab.rerun(first.history_id)  # type: ignore[arg-type]
    assert again.text == first.text and again.history_id != first.history_id
    rows = tmlab.history()
    sent = {"temperature": 0.0, "max_tokens": 5}
    assert rows.iloc[-1]["params"] == sent and rows.iloc[-2]["params"] == sent
    changed = tmlab.rerun(first.history_id, max_tokens=2)  # type: ignore[arg-type]
    assert changed.usage.completion_tokens == 2
    with pytest.raises(tmlab.ParameterError, match="no request"):
        tmlab.rerun(10**9)


def test_rows_are_json_not_python_reprs(history_db: str) -> None:
    record(BODY, base_url=None, result=_result())
    conn = sqlite3.connect(history_db)
    try:
        params, messages = conn.execute("SELECT params, messages FROM requests").fetchone()
    finally:
        conn.close()
    assert json.loads(params) == {"temperature": 0.7}
    assert json.loads(messages)[0]["role"] == "user"


def test_the_history_is_a_store_that_imports_none_of_its_callers() -> None:
    """The client writes to the history; rerun reads it and calls the client. The history
    module must import neither (no import circle), at the top or inside a function."""
    import ast
    import importlib

    store = importlib.import_module("tmlab.history")  # tmlab.history is the function
    reruns = importlib.import_module("tmlab.reruns")
    tree = ast.parse(Path(str(store.__file__)).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    callers = {
        "tmlab.client",
        "tmlab.client.clients",
        "tmlab.client.base",
        "tmlab.client.reruns",
        "tmlab.analysis.sweeps",
        "tmlab.analysis.audits",
    }
    assert not imported & callers, imported & callers
    assert not hasattr(store, "rerun")
    assert tmlab.rerun is reruns.rerun and tmlab.rerun.__doc__
