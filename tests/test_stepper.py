"""tmlab.Stepper at the Python level, end to end against the real embedded server (a real
socket, the real model): one request per step, the trace's stages, a slider's redraw with no
request, and the fallbacks (top_logprobs only; a server without logprobs)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import tmlab
import tmlab.local
from tmlab.analysis.stages import run_chain
from tmlab.errors import ParameterError
from tmlab.jupyter.stepper import Stepper

PROMPT = "Name a colour."


@pytest.fixture
def made(local_server: Any, history_db: str) -> Iterator[Any]:
    steppers: list[Stepper] = []

    def build(**kwargs: Any) -> Stepper:
        client = kwargs.pop("client", None) or tmlab.Client(base_url=local_server.base_url)
        st = Stepper(PROMPT, client=client, seed=11, **kwargs)
        steppers.append(st)
        assert st.wait(180), "the first request did not come back"
        assert st.error is None, st.error
        return st

    yield build
    for st in steppers:
        st.close()


def test_first_view_is_the_servers_trace(made: Any) -> None:
    st = made()
    assert st.requests == 1
    assert st.view_label.startswith("exact: the server's own trace")
    names = [r["stage"] for r in st.stages]
    assert names[0] == "raw" and names[-5:] == [
        "top_k",
        "typical_p",
        "top_p",
        "min_p",
        "temperature",
    ]
    assert st.columns and st.drawn
    assert sum(c["drawn"] for c in st.columns) <= 1
    # the bars hold the trace's numbers: the raw row is the raw stage's p of each candidate
    pos = st.view.trace
    raw_p = pos["stages"][0]["p"]
    first = st.view.ids.index(st.columns[0]["id"])
    assert st.stages[0]["cells"][0]["h"] == pytest.approx(raw_p[first], abs=1e-4)


def test_sample_pick_back_and_the_request_sent(made: Any) -> None:
    st = made(temperature=0.8, top_k=30)
    drawn = st.drawn
    st.sample()
    assert st.wait()
    assert st.text == drawn.replace("\u2423", " ") and len(st.steps) == 1
    assert st.requests == 2
    row = tmlab.history(n=1).iloc[-1]
    sent = row["params"]
    assert sent["max_tokens"] == 1 and sent["logprobs"] is True and sent["top_logprobs"] == 20
    assert sent["continue_final_message"] is True and sent["add_generation_prompt"] is False
    assert sent["continue_token_ids"] == [st.steps[0].token_id]
    assert sent["sampler_trace"] == {"top": 50} and sent["top_k"] == 30
    assert row["messages"][-1] == {"role": "assistant", "content": st.text}

    before = st.text
    want = st.columns[2]
    st.pick(2)
    assert st.wait()
    assert st.steps[-1].token_id == want["id"] and len(st.steps) == 2
    assert st.text.startswith(before) and len(st.text) > len(before)
    assert st.requests == 3

    st.back()
    assert st.wait()
    assert st.text == before and len(st.steps) == 1 and st.requests == 3
    assert [c["id"] for c in st.columns][2] == want["id"]  # that position's candidates again


def test_slider_redraws_at_once_without_a_request_then_the_trace_makes_it_exact(
    made: Any,
) -> None:
    st = made()
    st.sample()
    assert st.wait()
    n = st.requests
    st.top_k = 3
    assert st.requests == n  # redrawn here, no request
    row = next(r for r in st.stages if r["stage"] == "top_k")
    assert row["setting"] == "3" and row["kept"] == 3
    assert st.view_label == "exact: recomputed from the returned candidates (no request)"
    assert sum(1 for c in row["cells"] if not c["cut"]) == 3
    assert [c["cut"] for c in row["cells"]][3:] == ["top_k"] * (len(row["cells"]) - 3)
    assert st.drawn == ""  # the pending draw was under other settings
    assert st.wait()
    assert st.requests == n + 1  # the debounced request
    assert st.view_label.startswith("exact: the server's own trace")
    assert st.view.settings["top_k"] == 3


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": 0.7, "top_k": 5, "top_p": 1.0, "min_p": 0.0},
        {"temperature": 1.3, "top_k": 0, "top_p": 0.6, "min_p": 0.0},
        {"temperature": 0.5, "top_k": 0, "top_p": 1.0, "min_p": 0.08},
    ],
)
def test_local_recomputation_matches_the_servers_trace_where_exact(
    made: Any, settings: dict[str, Any]
) -> None:
    st = made(**settings)
    view = st.view
    stages = run_chain(
        view.logprobs, **settings, other_mass=view.other_mass, tail_max=view.tail_max
    )
    trace = {s["stage"]: s for s in view.trace["stages"]}
    assert stages[-1].exact  # each setting cuts within the 50 candidates here
    for s in stages[1:]:
        got = np.asarray(trace[s.stage]["p"])
        assert np.abs(got - s.p).max() <= 1e-6, s.stage
        assert np.array_equal(got > 0, s.kept), s.stage


def test_hesitate_lists_positions_and_jump_goes_back(made: Any) -> None:
    st = made()
    for _ in range(3):
        st.sample()
    assert st.wait()
    assert len(st.steps) == 3 and len(st.hesitate) == 3
    ent = [float(h["entropy"]) for h in st.hesitate]
    assert ent == sorted(ent, reverse=True)
    n = st.requests
    target = st.hesitate[0]["position"]
    st.jump(target)
    assert st.wait()
    assert len(st.steps) == target and st.requests == n


def test_play_steps_until_stop(made: Any) -> None:
    st = made()
    st.play(rate=20)
    for _ in range(600):
        if len(st.steps) >= 2:
            break
        import time

        time.sleep(0.05)
    st.stop()
    assert st.wait()
    assert len(st.steps) >= 2 and not st.playing


def test_without_trace_it_is_the_whatif_over_top_logprobs(made: Any) -> None:
    st = made(trace=False)
    assert st.view.kind == "raw"
    assert st.view_label.startswith("what-if approximation over the returned top_logprobs")
    st.top_p = 0.999  # the 20 alternatives do not hold 0.999 of the mass
    assert "approximate" in st.view_label
    st.top_k = 4  # within the alternatives: exact again
    assert "exact" in st.view_label and "approximate" not in st.view_label


def test_a_server_without_logprobs_says_so() -> None:
    with tmlab.local.start(quiet=True, minimal=True, n_ctx=2048) as server:
        st = Stepper(PROMPT, client=tmlab.Client(base_url=server.base_url), seed=1)
        try:
            assert st.wait(180)
            assert st.view.kind == "none" and st.columns == [] and st.stages == []
            assert "no logprobs" in st.status and "no logprobs" in st.view_label
        finally:
            st.close()


def test_bad_arguments_name_the_parameter(local_server: Any) -> None:
    client = tmlab.Client(base_url=local_server.base_url)
    with pytest.raises(ParameterError) as err:
        Stepper("", client=client)
    assert err.value.param == "prompt"
    with pytest.raises(ParameterError) as err:
        Stepper(PROMPT, client=client, max_tokens=5)
    assert err.value.param == "max_tokens"


def test_on_llama_cpps_own_server_it_works_from_top_logprobs(
    llamacpp_server: str, history_db: str
) -> None:
    """A server that is not tmlab's: no trace is asked, the view is the what-if over the raw
    top_logprobs, and a step is a continuation (checked once per server)."""
    st = Stepper(PROMPT, client=tmlab.Client(base_url=llamacpp_server), seed=3)
    try:
        assert st.wait(300) and st.error is None, st.error
        assert st.view.kind == "raw" and st.columns
        assert st.view_label.startswith("what-if approximation over the returned top_logprobs")
        assert "sampler_trace" not in tmlab.history(n=1).iloc[-1]["params"]
        st.top_k = 3  # within the returned alternatives: exact
        assert "exact" in st.view_label
        st.sample()
        assert st.wait(300) and st.error is None, st.error
        assert len(st.steps) == 1 and st.text
    finally:
        st.close()
