"""tmlab.probe on the embedded server (raw by default, processed when started so), and the
meaning it finds carried into frames and the what-if."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from _e2e import MODEL

import tmlab
import tmlab.local
from tmlab.probes import MAX_REQUESTS, PROBE_COLUMNS, forget
from tmlab.result import ChatResult
from tmlab.sampling import ProcessedLogprobsWarning, whatif

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _fresh_probes() -> Iterator[None]:
    forget()
    yield
    forget()


@pytest.fixture(scope="module")
def processed_server() -> Iterator[Any]:
    """A second embedded server whose default is processed_logprobs (--logprobs-mode)."""
    server = tmlab.local.start(quiet=True, logprobs_mode="processed_logprobs")
    try:
        yield server
    finally:
        server.stop()


def _verdicts(df: Any) -> dict[str, str]:
    return dict(zip(df["capability"], df["verdict"], strict=True))


def test_probe_of_the_embedded_server(local_server: Any) -> None:
    printed: list[str] = []
    with tmlab.Client(base_url=local_server.base_url, model=MODEL, timeout=300.0) as c:
        df = tmlab.probe(c, out=printed.append)
        again = tmlab.probe(c, out=printed.append)
    assert list(df.columns) == PROBE_COLUMNS
    assert len(printed) == 1 and "tiny requests" in printed[0]  # listed first, once: cached
    assert df.equals(again)
    assert 1 <= df.attrs["requests"] <= MAX_REQUESTS
    v = _verdicts(df)
    assert v["logprobs"] == "supported, top_logprobs up to 20"
    assert v["logprobs meaning"] == "raw_logprobs"
    assert v["seed"] == "repeats"
    assert v["n > 1"] == "supported"
    assert v["echo with prompt logprobs"] == "supported"
    assert v["continuation of a final assistant message"] == "continues"
    assert v["reasoning"] == "in message.reasoning"
    assert v["usage in streams"] == "supported"


def test_probe_finds_processed_logprobs(processed_server: Any) -> None:
    with tmlab.Client(base_url=processed_server.base_url, model=MODEL, timeout=300.0) as c:
        df = tmlab.probe(c, quiet=True)
        res = c.chat("Name a colour.", temperature=0.5, max_tokens=4, logprobs=True, top_logprobs=5)
        raw = c.chat(
            "Name a colour.",
            temperature=0.5,
            max_tokens=4,
            logprobs=True,
            top_logprobs=5,
            logprobs_mode="raw_logprobs",
        )
    assert _verdicts(df)["logprobs meaning"] == "processed_logprobs"
    assert "rescaled" in df.set_index("capability").loc["logprobs meaning", "came_back"]
    # the server's default is processed; a request can still ask for raw
    assert res.raw["logprobs_mode"] == "processed_logprobs"
    assert raw.raw["logprobs_mode"] == "raw_logprobs"
    assert res.logprobs_frame().attrs["logprobs_mode"] == "processed_logprobs"
    with pytest.warns(ProcessedLogprobsWarning, match="twice"):
        df2 = whatif(res, temperature=0.7)
    assert "WARNING" in df2.attrs["notes"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        whatif(raw, temperature=0.7)  # raw numbers: no warning


def test_frames_carry_the_probed_meaning(local_server: Any) -> None:
    """A response that does not say what its logprobs are takes the probe's word."""
    entry = {"token": "Hi", "logprob": -0.5, "top_logprobs": [{"token": "Hi", "logprob": -0.5}]}
    body = {
        "model": MODEL,
        "choices": [{"index": 0, "message": {"content": "Hi"}, "logprobs": {"content": [entry]}}],
    }
    silent = ChatResult(body)
    assert "meaning not probed" in silent.logprobs_frame().attrs["notes"]
    assert silent.logprobs_frame().attrs["logprobs_mode"] is None
    with tmlab.Client(base_url=local_server.base_url, model=MODEL, timeout=300.0) as c:
        tmlab.probe(c, quiet=True)
    df = silent.logprobs_frame()
    assert df.attrs["logprobs_mode"] == "raw_logprobs"
    assert "tmlab.probe() measured" in df.attrs["notes"]
    assert not math.isnan(df["logprob"].iloc[0])


def test_serve_option() -> None:
    from tmlab.server.__main__ import build_parser

    assert build_parser().parse_args([]).logprobs_mode == "raw_logprobs"
    args = build_parser().parse_args(["--logprobs-mode", "processed_logprobs"])
    assert args.logprobs_mode == "processed_logprobs"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--logprobs-mode", "logits"])
