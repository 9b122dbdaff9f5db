"""Sweeps: validation before sending, one row per request, faults and interruptions keep rows,
summaries that count right, and a long sweep against the one-at-a-time embedded server."""

from __future__ import annotations

import _thread
import asyncio
import json
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from _fake_server import KEY, LiveServer, Script, completion

import tmlab
from tmlab.analysis.runner import sweep_client
from tmlab.errors import ParameterError
from tmlab.sweeps import (
    INTERRUPTED,
    SWEEP_COLUMNS,
    asweep,
    plot_sweep,
    summarize,
    sweep,
)


@pytest.fixture(autouse=True)
def _history(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMLAB_HISTORY", str(tmp_path / "history.sqlite"))


# -- a small server: answers from the parameters, faults on request, holds some requests ----


class FakeChat:
    """ASGI chat server: the answer names the temperature; ``top_k=13`` answers 500 (quoting
    the Authorization header back); requests after the first ``fast`` wait until the client
    leaves."""

    def __init__(self, fast: int | None = None, logprobs: list[dict[str, Any]] | None = None):
        self.fast = fast
        self.logprobs = logprobs
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.arrived = threading.Event()  # set when the first held request arrives … twice

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        data = json.loads(body)
        with self.lock:
            self.bodies.append(data)
            count = len(self.bodies)
        if self.fast is not None and count > self.fast:
            if count == self.fast + 2:  # both workers are now waiting here
                self.arrived.set()
            await receive()  # http.disconnect: the client went away
            return
        headers = dict(scope["headers"])
        if data.get("top_k") == 13:
            auth = headers.get(b"authorization", b"").decode()
            status, answer = 500, {"error": {"message": f"boom for {auth}", "type": "server"}}
        else:
            status, answer = 200, completion(f"t={data.get('temperature')}")
            if self.logprobs is not None:
                answer["choices"][0]["logprobs"] = {"content": self.logprobs}
        payload = json.dumps(answer).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})


@pytest.fixture
def fake() -> Iterator[tuple[FakeChat, LiveServer]]:
    app = FakeChat()
    with LiveServer(app) as server:
        yield app, server


def _client(server: LiveServer) -> tmlab.Client:
    return tmlab.Client(base_url=server.base_url, api_key=KEY, model="m", max_retries=0)


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grid", "fixed", "says"),
    [
        ({"temperature": [0.5, 3]}, {}, "value 3"),
        ({"temprature": [0.5]}, {}, "did you mean temperature"),
        ({"temperature": 0.5}, {}, "must be a list"),
        ({"temperature": []}, {}, "is empty"),
        ({"n": [1, 2]}, {"temperature": 0}, "n=2 with temperature=0"),
        ({"temperature": [0.5]}, {"top_logprobs": 3}, "needs logprobs=True"),
        ({"temperature": [0.5]}, {"temperature": 1}, "both in the grid and fixed"),
        ({"stream": [True]}, {}, "set by the client"),
    ],
)
def test_bad_grid_or_params_are_refused_before_anything_is_sent(
    grid: dict[str, Any], fixed: dict[str, Any], says: str
) -> None:
    script = Script(httpx.Response(200, json=completion()))
    client = tmlab.AsyncClient(
        base_url="http://tm.test/v1", model="m", transport=script.transport()
    )
    with pytest.raises(ParameterError, match=says):
        sweep("hi", grid=grid, client=client, progress=False, **fixed)
    assert script.requests == []


def test_grid_values_are_checked_alone_and_cells_together() -> None:
    script = Script(httpx.Response(200, json=completion()))
    client = tmlab.AsyncClient(
        base_url="http://tm.test/v1", model="m", transport=script.transport()
    )
    grid = {"top_logprobs": [1, 2], "logprobs": [True]}  # valid only together
    df = sweep("hi", grid=grid, client=client, progress=False, temperature=np.float64(0.5))
    assert len(df) == 2 and df["error"].isna().all()
    assert sorted(b["top_logprobs"] for b in script.bodies) == [1, 2]
    assert {type(b["temperature"]) for b in script.bodies} == {float}
    with pytest.raises(ParameterError, match=r"grid cell \{'top_logprobs': 1, 'logprobs': False\}"):
        sweep("hi", grid={**grid, "logprobs": [False]}, client=client, progress=False)


def test_a_server_on_this_machine_gets_no_read_timeout_a_remote_one_keeps_it() -> None:
    local = sweep_client(tmlab.Client(base_url="http://127.0.0.1:1/v1", timeout=0.5))
    assert isinstance(local.timeout, httpx.Timeout)
    assert local.timeout.read is None and local.timeout.connect == 0.5
    remote = sweep_client(tmlab.Client(base_url="https://example.invalid/v1", timeout=0.5))
    assert isinstance(remote.timeout, httpx.Timeout)
    assert remote.timeout.read == 0.5 and remote.timeout.pool is None
    embedded = sweep_client(None)  # no key, no URL: the embedded server, not started here
    assert isinstance(embedded.timeout, httpx.Timeout) and embedded.timeout.read is None


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"repeats": 0}, "repeats"),
        ({"concurrency": 0}, "concurrency"),
        ({"prompt_or_messages": [{"content": "no role"}]}, "messages"),
    ],
)
def test_bad_repeats_or_concurrency(kwargs: dict[str, Any], param: str) -> None:
    kwargs = {"prompt_or_messages": "hi", **kwargs}
    with pytest.raises(ParameterError) as info:
        sweep(grid={"temperature": [1.0]}, progress=False, **kwargs)
    assert info.value.param == param


# -- rows ------------------------------------------------------------------------------------


def test_one_row_per_request_and_parameters_reach_the_server(
    fake: tuple[FakeChat, LiveServer], capsys: pytest.CaptureFixture[str]
) -> None:
    app, server = fake
    grid = {"temperature": [0.1, 0.9], "top_p": [0.5, 0.8, 1.0]}
    df = sweep("hi", grid=grid, repeats=3, client=_client(server), max_tokens=5, seed=3)
    assert len(df) == 2 * 3 * 3 == len(app.bodies)
    assert list(df.columns) == ["temperature", "top_p", *SWEEP_COLUMNS]
    assert df["error"].isna().all()
    # each row's answer names the temperature the server received for it
    assert (df["text"] == "t=" + df["temperature"].astype(str)).all()
    sent = sorted((b["temperature"], b["top_p"], b["max_tokens"], b["seed"]) for b in app.bodies)
    expected = sorted((t, p, 5, 3) for t in grid["temperature"] for p in grid["top_p"]) * 1
    assert sent == sorted(expected * 3)
    assert df.groupby(["temperature", "top_p"]).size().eq(3).all()
    assert sorted(df["repeat"].unique()) == [0, 1, 2]
    assert (df["model"] == "m").all() and (df["completion_tokens"] == 3).all()
    assert "sweep" in capsys.readouterr().err  # the text progress bar in a terminal


def test_a_failing_request_is_an_error_row_and_the_others_are_kept(
    fake: tuple[FakeChat, LiveServer],
) -> None:
    _, server = fake
    df = sweep("hi", grid={"top_k": [5, 13, 40]}, repeats=2, client=_client(server), progress=False)
    assert len(df) == 6
    failed = df[df["top_k"] == 13]
    assert failed["error"].str.startswith("ServerError: 500").all()
    assert failed["text"].isna().all()
    assert df[df["top_k"] != 13]["error"].isna().all()
    assert not df["error"].astype(str).str.contains(KEY).any()  # the quoted key is redacted
    assert df["error"].dropna().map(lambda e: "\n" not in e).all()
    assert df["history_id"].notna().all()  # failures are in the history too
    logged = tmlab.history(source="sweep")
    assert len(logged) == 6 and logged["error"].notna().sum() == 2
    table = summarize(df)
    assert table.set_index("top_k")["errors"].to_dict() == {5: 0, 13: 2, 40: 0}
    assert table.set_index("top_k")["n"].to_dict() == {5: 2, 13: 0, 40: 2}


def test_mean_entropy_over_the_returned_alternatives(fake: tuple[FakeChat, LiveServer]) -> None:
    app, server = fake
    top = [math.log(0.5), math.log(0.3), math.log(0.2)]
    app.logprobs = [
        {
            "token": "a",
            "logprob": top[0],
            "top_logprobs": [{"token": t, "logprob": lp} for t, lp in zip("abc", top, strict=True)],
        },
        {"token": "b", "logprob": 0.0, "top_logprobs": [{"token": "b", "logprob": 0.0}]},
    ]
    df = sweep(
        "hi",
        grid={"temperature": [1.0]},
        client=_client(server),
        progress=False,
        logprobs=True,
        top_logprobs=3,
    )
    by_hand = (-(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)) + 0.0) / 2
    assert df["mean_entropy"].iloc[0] == pytest.approx(by_hand, rel=1e-12)
    assert "lower bound" in df.attrs["notes"]


def test_the_rows_mean_entropy_is_the_frames_without_a_frame_per_row() -> None:
    """A sweep computes mean_entropy for each row in plain Python (a DataFrame per row held
    the event loop for about a millisecond each): the same number as tmlab.frames, in every
    case the frame handles (no alternatives at a position, a zero or a null probability,
    several choices, no logprobs at all)."""
    from tmlab.frames import mean_entropy
    from tmlab.result import ChatResult
    from tmlab.sweeps import _mean_entropy

    def alt(t: str, lp: float | None) -> dict[str, Any]:
        return {"token": t, "logprob": lp}

    def result(*choices: list[dict[str, Any]] | None) -> ChatResult:
        return ChatResult(
            {
                "choices": [
                    {
                        "index": i,
                        "message": {"content": "x"},
                        "finish_reason": "stop",
                        "logprobs": None if content is None else {"content": content},
                    }
                    for i, content in enumerate(choices)
                ]
            }
        )

    rng = np.random.default_rng(3)
    cases = [
        result(None),
        result([]),
        result([{"token": "a", "logprob": -0.1, "top_logprobs": []}]),
        result(
            [
                {"token": "a", "logprob": -0.7, "top_logprobs": [alt("a", -0.7), alt("b", -1.2)]},
                {"token": "b", "logprob": -0.2, "top_logprobs": []},
                {"token": "c", "logprob": 0.0, "top_logprobs": [alt("c", 0.0), alt("d", -1e9)]},
                {"token": "d", "logprob": -0.5, "top_logprobs": [alt("d", -0.5), alt("e", None)]},
            ],
            [{"token": "z", "logprob": -3.0, "top_logprobs": [alt("z", -3.0)]}],
        ),
    ]
    for _ in range(20):
        content = []
        for _ in range(int(rng.integers(1, 40))):
            lps = np.log(rng.dirichlet(np.ones(20)))[: int(rng.integers(0, 21))]
            content.append(
                {
                    "token": "t",
                    "logprob": -1.0,
                    "top_logprobs": [alt(str(i), float(v)) for i, v in enumerate(lps)],
                }
            )
        cases.append(result(content))
    for res in cases:
        expected, got = mean_entropy(res), _mean_entropy(res)
        assert (math.isnan(expected) and math.isnan(got)) or got == pytest.approx(
            expected, rel=1e-12, abs=1e-15
        ), (expected, got)


def test_sweep_inside_a_running_event_loop(fake: tuple[FakeChat, LiveServer]) -> None:
    _, server = fake

    async def notebook_cell() -> pd.DataFrame:
        asyncio.get_running_loop()  # as in Jupyter: a loop is running
        return sweep(
            "hi",
            grid={"temperature": [0.2, 0.4]},
            repeats=2,
            client=_client(server),
            progress=False,
        )

    df = asyncio.run(notebook_cell())
    assert len(df) == 4 and df["error"].isna().all()


def test_asweep_for_async_code(fake: tuple[FakeChat, LiveServer]) -> None:
    app, server = fake
    client = tmlab.AsyncClient(base_url=server.base_url, model="m")
    df = asyncio.run(
        asweep(
            "hi",
            grid={"temperature": [0.3]},
            repeats=4,
            client=client,
            progress=False,
            concurrency=2,
        )
    )
    assert len(df) == 4 and df["text"].eq("t=0.3").all() and len(app.bodies) == 4


# -- interruption ------------------------------------------------------------------------------


@pytest.fixture
def held() -> Iterator[tuple[FakeChat, LiveServer]]:
    """A server that answers 4 requests, then holds every request until the client leaves."""
    app = FakeChat(fast=4)
    with LiveServer(app) as server:
        yield app, server


GRID = {"temperature": [0.1, 0.2, 0.3, 0.4]}


def _check_interrupted(df: pd.DataFrame) -> None:
    assert len(df) == 8 and df.attrs["interrupted"]
    done = df[df["error"].isna()]
    assert len(done) == 4 and done["text"].str.startswith("t=").all()
    assert (df[df["error"].notna()]["error"] == INTERRUPTED).all()
    assert "INTERRUPTED: 4 of 8" in df.attrs["notes"]
    logged = tmlab.history(source="sweep")  # the finished ones are in the history
    assert set(done["history_id"]) <= set(logged["id"]) and done["history_id"].notna().all()


def test_ctrl_c_returns_the_finished_rows(held: tuple[FakeChat, LiveServer]) -> None:
    app, server = held

    def press_ctrl_c() -> None:
        if app.arrived.wait(10):
            _thread.interrupt_main()

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    start = time.monotonic()
    df = sweep("hi", grid=GRID, repeats=2, concurrency=2, client=_client(server), progress=False)
    assert time.monotonic() - start < 5
    _check_interrupted(df)


def test_cancelling_asweep_returns_the_finished_rows(held: tuple[FakeChat, LiveServer]) -> None:
    app, server = held

    async def main() -> pd.DataFrame:
        task = asyncio.create_task(
            asweep(
                "hi", grid=GRID, repeats=2, concurrency=2, client=_client(server), progress=False
            )
        )
        while not app.arrived.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        return await task

    _check_interrupted(asyncio.run(main()))


# -- summarize and plot -------------------------------------------------------------------------


def _hand_made() -> pd.DataFrame:
    texts = {0.0: ["Paris"] * 4, 1.0: ["Paris", "Paris", "Lyon", "Nice"]}
    rows = [
        {
            "temperature": t,
            "model": "m",
            "repeat": i,
            "text": x,
            "error": None,
            "latency_s": 0.5 + i,
            "prompt_tokens": 10,
            "cached_tokens": 2,
            "completion_tokens": 3 + i,
        }
        for t, xs in texts.items()
        for i, x in enumerate(xs)
    ]
    rows.append(
        {
            "temperature": 1.0,
            "model": "m",
            "repeat": 4,
            "text": None,
            "error": "ServerError: 500",
            "latency_s": None,
            "prompt_tokens": None,
            "cached_tokens": None,
            "completion_tokens": None,
        }
    )
    return pd.DataFrame(rows)


def test_summarize_counts_distinct_answers_and_their_entropy() -> None:
    table = summarize(_hand_made(), prices={"input": 1.0, "output": 2.0}).set_index("temperature")
    cold, hot = table.loc[0.0], table.loc[1.0]
    assert cold["n"] == 4 and cold["distinct_answers"] == 1 and cold["answer_entropy_bits"] == 0.0
    assert cold["answers"] == {"Paris": 4} and cold["top_share"] == 1.0
    assert hot["n"] == 4 and hot["errors"] == 1 and hot["distinct_answers"] == 3
    assert hot["answers"] == {"Paris": 2, "Lyon": 1, "Nice": 1} and hot["top_answer"] == "Paris"
    by_hand = -(0.5 * math.log2(0.5) + 0.25 * math.log2(0.25) + 0.25 * math.log2(0.25))
    assert hot["answer_entropy_bits"] == pytest.approx(by_hand, rel=1e-15) and by_hand == 1.5
    assert hot["mean_latency_s"] == pytest.approx(2.0)  # 0.5, 1.5, 2.5, 3.5
    assert hot["mean_completion_tokens"] == pytest.approx(4.5)
    # 4 answered requests: (10 - 2 cached) input tokens at 1 $/M, 3+4+5+6 output tokens at 2 $/M
    assert hot["cost_usd"] == pytest.approx((4 * 8 * 1.0 + 18 * 2.0) / 1e6)
    assert "exact entropy of the answers observed" in table.attrs["notes"]


def test_plot_sweep_summarizes_first_and_draws_one_line_per_hue() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.concat([_hand_made().assign(top_k=5), _hand_made().assign(top_k=50)])
    ax = plot_sweep(df, x="temperature", y="distinct_answers", hue="top_k")
    assert len(ax.get_lines()) == 2 and ax.get_xlabel() == "temperature"
    assert list(ax.get_lines()[0].get_ydata()) == [1, 3]
    with pytest.raises(ParameterError, match="not a column"):
        plot_sweep(df, y="nonsense")
    with pytest.raises(ParameterError, match="not a numeric column"):
        plot_sweep(df, y="top_answer")
    # a per-request column: the mean per point, one line per top_k found without hue=
    ax = plot_sweep(df, x="temperature", y="latency_s")
    assert [list(line.get_ydata()) for line in ax.get_lines()] == [[2.0, 2.0], [2.0, 2.0]]
    assert ax.get_ylabel() == "latency_s (mean)"
    plt.close("all")


def test_models_are_one_more_dimension(fake: tuple[FakeChat, LiveServer]) -> None:
    app, server = fake
    df = sweep(
        "hi",
        grid={"temperature": [0.5]},
        models=["a", "b"],
        repeats=2,
        client=_client(server),
        progress=False,
    )
    assert df["model"].tolist() == ["a", "a", "b", "b"]
    assert sorted(b["model"] for b in app.bodies) == ["a", "a", "b", "b"]
    assert summarize(df)[["model", "n"]].values.tolist() == [["a", 2], ["b", 2]]
    with pytest.raises(ParameterError, match="models given twice"):
        sweep("hi", grid={"model": ["a"]}, models=["b"], client=_client(server))


# -- against the embedded server ------------------------------------------------------------


@pytest.mark.slow
def test_many_requests_to_the_one_at_a_time_server_never_time_out(local_server: Any) -> None:
    # 16 in flight against a server that answers one at a time: most requests wait in its
    # queue far longer than this client's 0.5 s timeout; waiting there is not a failure.
    client = tmlab.Client(base_url=local_server.base_url, timeout=0.5)
    df = sweep(
        "Say yes.",
        system="",  # no default system prompt: half the prompt tokens, a faster test
        grid={"seed": list(range(50))},
        repeats=4,
        concurrency=16,
        client=client,
        progress=False,
        max_tokens=1,
    )
    assert len(df) == 200
    assert df["error"].isna().all(), df["error"].dropna().unique()[:3]
    assert (df["completion_tokens"] == 1).all() and (df["finish_reason"] == "length").all()


@pytest.mark.slow
def test_parameters_reach_the_model_and_the_history(local_server: Any, history_db: str) -> None:
    client = tmlab.Client(base_url=local_server.base_url)
    df = sweep(
        "Count from one to twenty.",
        grid={"max_tokens": [1, 3]},
        repeats=2,
        client=client,
        progress=False,
        temperature=0.0,
        seed=1,
    )
    assert df["error"].isna().all()
    assert (df["completion_tokens"] == df["max_tokens"]).all()
    table = summarize(df)
    assert table["distinct_answers"].tolist() == [1, 1]  # greedy: the same every time
    rows = tmlab.history(source="sweep")
    assert len(rows) == 4 and set(rows["id"]) == set(df["history_id"])
    sent = sorted((p["max_tokens"], p["temperature"], p["seed"]) for p in rows["params"])
    assert sent == [(1, 0.0, 1), (1, 0.0, 1), (3, 0.0, 1), (3, 0.0, 1)]
