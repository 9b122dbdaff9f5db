"""The Explorer widget, without a browser: controls from the table, requests, tabs, pins.

What the server received is read back from the history (``params`` of the row), so
"untouched sends nothing" is checked on the wire, not on the widget's own idea of it.
"""

from __future__ import annotations

import html
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ipywidgets as widgets
import pytest
from _e2e import dead_url
from _fake_server import USAGE, chunk, sse, sse_response

import tmlab
from tmlab.history import history
from tmlab.jupyter.codeline import tmchat_line
from tmlab.jupyter.controls import FEATURED, editable, featured
from tmlab.jupyter.explorer import Explorer
from tmlab.jupyter.flags import parse_flags
from tmlab.params import PARAMS

PROMPT = "Name three colours."


@pytest.fixture(autouse=True)
def history_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every request of a test goes to a fresh history database."""
    path = tmp_path / "history.sqlite3"
    monkeypatch.setenv("TMLAB_HISTORY", str(path))
    return path


@pytest.fixture
def dead() -> tmlab.Client:
    """A client of a server that is not there (no retries: the failure is immediate)."""
    return tmlab.Client(base_url=dead_url(), model="some-model", max_retries=0)


@pytest.fixture
def client(local_server: Any) -> Iterator[tmlab.Client]:
    with tmlab.Client(base_url=local_server.base_url) as c:
        yield c


def _rows() -> list[dict[str, Any]]:
    df = history(source="explorer")
    return df.to_dict("records")


# -- controls, without any request ---------------------------------------------------------


def test_one_control_per_parameter_generated_from_the_table(make, dead) -> None:
    ex = make(dead)
    kinds = {
        "slider": widgets.FloatSlider,
        "int_slider": widgets.IntSlider,
        "dropdown": widgets.Dropdown,
        "toggle": widgets.Checkbox,
        "text": widgets.Text,
        "json": widgets.Textarea,
    }
    assert set(ex.controls) == {name for name, p in PARAMS.items() if editable(p)}
    left = ex.children[2].children[0]  # the controls' column (tmlab.jupyter.layout)
    main, advanced = left.children[2], left.children[3]
    for name, ctrl in ex.controls.items():
        p = PARAMS[name]
        assert type(ctrl.input) is kinds[p.control], name
        assert ctrl.input.tooltip == p.help
        assert f"tmlab-control-{name}" in ctrl._dom_classes
        assert (ctrl in main.children) == featured(p), name
    for name in FEATURED:
        assert ex.controls[name] in main.children
    assert "temperature" in ex.controls and "stream_options" not in ex.controls
    assert "tools" not in ex.controls and "functions" not in ex.controls
    # sliders span the table's useful range
    t = ex.controls["temperature"].input
    assert (t.min, t.max, t.step) == (
        PARAMS["temperature"].ui_min,
        PARAMS["temperature"].ui_max,
        PARAMS["temperature"].step,
    )
    # the advanced section starts collapsed
    assert advanced.selected_index is None
    assert ex.controls["seed"].random is not None


def test_untouched_control_shows_unset_and_sends_nothing(make, dead) -> None:
    ex = make(dead)
    for ctrl in ex.controls.values():
        assert not ctrl.is_set
        assert "tmlab-unset" in ctrl._dom_classes
        assert "unset" in ctrl.status.value
    assert ex.params() == {}
    assert "client.chat(''" in html.unescape(ex.call_line.value)
    assert not ex.controls["temperature"].input.readout  # no number that reads as sent


def test_touching_marks_set_and_reset_unsets(make, dead) -> None:
    ex = make(dead)
    temp, top_k = ex.controls["temperature"], ex.controls["top_k"]
    temp.value = 0.3
    top_k.input.value = 40  # as the browser does it
    assert temp.is_set and top_k.is_set
    assert "tmlab-set" in temp._dom_classes and "tmlab-unset" not in temp._dom_classes
    assert ex.params() == {"temperature": 0.3, "top_k": 40}
    assert temp.input.readout
    temp.reset_button.click()
    assert not temp.is_set
    assert "tmlab-unset" in temp._dom_classes
    assert "unset" in temp.status.value
    assert ex.params() == {"top_k": 40}
    temp.input.value = 0.0  # either end of an unset slider is a change: greedy is one move
    assert ex.params() == {"temperature": 0.0, "top_k": 40}


def test_assigning_the_default_value_still_counts_as_touched(make, dead) -> None:
    ex = make(dead)
    ctrl = ex.controls["temperature"]
    ctrl.value = ctrl.input.value  # the value the unset slider already shows
    assert ctrl.is_set
    assert ex.params() == {"temperature": ctrl.input.value}


def test_top_logprobs_turns_logprobs_on_and_logprobs_off_unsets_it(make, dead) -> None:
    ex = make(dead)
    ex.controls["top_logprobs"].input.value = 5
    assert ex.params() == {"logprobs": True, "top_logprobs": 5}
    ex.controls["logprobs"].reset()
    assert ex.params() == {}


def test_invalid_json_shows_inline_and_blocks_the_request(make, dead) -> None:
    ex = make(dead, prompt=PROMPT)
    bias = ex.controls["logit_bias"]
    bias.input.value = "{oops"
    assert bias.error and "⚠" in bias.status.value
    with pytest.raises(tmlab.ParameterError):
        ex.params()
    ex.send_button.click()
    assert ex.wait(10)
    assert ex.error.layout.display != "none"
    assert "logit_bias" in ex.error.value and "\n" not in ex.error.value
    assert ex.result is None
    assert _rows() == []  # nothing was sent
    bias.input.value = '{"42": -100}'
    assert not bias.error
    assert ex.params() == {"logit_bias": {"42": -100}}


def test_text_controls_parse_ints_and_json(make, dead) -> None:
    ex = make(dead)
    ex.controls["seed"].input.value = "1234"
    ex.controls["stop"].input.value = "###"
    ex.controls["response_format"].input.value = "{'type': 'json_object'}"
    assert ex.params() == {
        "seed": 1234,
        "stop": "###",
        "response_format": {"type": "json_object"},
    }
    ex.controls["seed"].input.value = "twelve"
    assert "not an integer" in ex.controls["seed"].error
    ex.controls["seed"].input.value = ""  # emptied: back to unset
    assert not ex.controls["seed"].is_set and not ex.controls["seed"].error


def test_random_seed_draws_a_new_seed_per_request(make, dead) -> None:
    ex = make(dead, prompt=PROMPT)
    seed = ex.controls["seed"]
    assert seed.random is not None
    seed.random.value = True
    assert seed.is_set
    first = ex.params()["seed"]
    seen = {first}
    for _ in range(3):
        ex.run()
        ex.wait(10)
        seen.add(ex.params()["seed"])
    assert len(seen) > 1
    assert str(ex.params()["seed"]) == seed.input.value  # shown, so it can be repeated


def test_initial_params_are_set_and_widen_a_slider(make, dead) -> None:
    ex = make(dead, temperature=0.2, max_tokens=2000, tools=[])
    assert ex.controls["temperature"].is_set
    assert ex.controls["max_tokens"].input.max >= 2000
    assert ex.params() == {"temperature": 0.2, "max_tokens": 2000, "tools": []}
    with pytest.raises(tmlab.ParameterError, match="temprature"):
        Explorer(dead, temprature=0.5)


def test_a_combination_the_server_reads_either_way_is_noted_on_the_call_line(make, dead) -> None:
    ex = make(dead)
    ex.controls["max_tokens"].value = 10
    ex.controls["max_completion_tokens"].value = 20  # no warning escapes the observer
    assert "⚠" in ex.call_line.value and "max_completion_tokens" in ex.call_line.value


def test_call_line_is_code_and_magic_flags(make, dead) -> None:
    ex = make(dead, prompt="Hi", system="Be brief.")
    ex.controls["temperature"].value = 0.7
    ex.controls["top_k"].value = 40
    ex.controls["top_logprobs"].value = 5
    ex.controls["ignore_eos"].value = False
    ex.controls["stop"].value = ["END", "\n\n"]
    line = html.unescape(ex.call_line.value)
    assert "client.chat('Hi'" in line
    assert "temperature=0.7" in line and "top_k=40" in line and "top_logprobs=5" in line
    flags = tmchat_line(ex.params(), "Be brief.", "m")
    assert "--temperature 0.7 --top-k 40" in flags and "--logprobs 5" in flags
    assert "--no-ignore-eos" in flags
    parsed = parse_flags(flags.removeprefix("%%tmchat"))  # the magic reads it back
    assert parsed.params == ex.params()
    assert parsed.system == "Be brief." and parsed.model == "m"


def test_displaying_shows_the_panel(make, dead) -> None:
    ex = make(dead)
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "tmlab-explorer" in ex._dom_classes
    for w, cls in [
        (ex.send_button, "tmlab-send"),
        (ex.stop_button, "tmlab-stop"),
        (ex.answer, "tmlab-answer"),
        (ex.heatmap, "tmlab-heatmap"),
    ]:
        assert cls in w._dom_classes
    out = widgets.Output()
    out.append_display_data(ex)
    data = out.outputs[0]["data"]
    assert data["application/vnd.jupyter.widget-view+json"]["model_id"] == ex.model_id


def test_model_box_falls_back_to_text(make, dead) -> None:
    ex = make(dead)
    assert ex.wait(30)
    assert isinstance(ex.model_widget, widgets.Text)
    assert ex.model_widget.value == "some-model"


def test_error_is_one_line_in_the_widget(make, dead) -> None:
    ex = make(dead, prompt=PROMPT, temperature=0.5)
    ex.send_button.click()
    assert ex.wait(30)
    assert ex.error.layout.display != "none"
    text = ex.error.value
    assert "APIConnectionError" in text and "\n" not in text
    assert ex.result is None
    assert not ex.send_button.disabled and ex.stop_button.disabled
    [row] = _rows()  # the failed request is in the history, from the explorer
    # with no max_tokens set, the session's default limit was sent too
    assert row["error"] and row["params"] == {"temperature": 0.5, "max_tokens": 512}


senders: list[threading.Thread] = []  # the threads that sent a request to the mock server


def _mock(*chunks: dict[str, Any] | str, done: bool = True) -> tmlab.Client:
    """A client of a scripted server: /models lists one model, chat streams ``chunks``."""

    def answer(request: httpx.Request) -> httpx.Response:
        senders.append(threading.current_thread())
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "test-model"}]})
        return sse_response(sse(*chunks, done=done))

    return tmlab.Client(
        base_url="http://tm.test/v1", model="test-model", transport=httpx.MockTransport(answer)
    )


def test_reasoning_streams_into_its_own_pane(make) -> None:
    client = _mock(
        chunk(role="assistant", reasoning="The user wants colours. "),
        chunk(reasoning="Pick three."),
        chunk("Red, green, blue."),
        chunk(finish="stop"),
        chunk(choices=[], usage=USAGE),
    )
    ex = make(client, prompt=PROMPT)
    senders.clear()
    ex.send_button.click()
    assert ex.wait(30)
    assert senders and threading.main_thread() not in senders  # off the kernel's thread
    assert ex.reasoning_pane.layout.display != "none"
    assert "Pick three." in ex.reasoning.value
    assert ex.reasoning_pane.selected_index is None  # collapsed until opened
    assert "Red, green, blue." in ex.answer.value and "Pick three" not in ex.answer.value
    assert ex.model_widget.options == ("test-model",)


def test_a_broken_stream_shows_one_line_and_keeps_what_arrived(make) -> None:
    client = _mock(
        chunk("Red, ", role="assistant"),
        chunk("green"),
        '{"error": {"message": "the GPU caught fire", "type": "server_error"}}',
        done=False,
    )
    ex = make(client, prompt=PROMPT)
    ex.send_button.click()
    assert ex.wait(30)
    assert "the GPU caught fire" in ex.error.value and "\n" not in ex.error.value
    assert ex.result is not None and not ex.result.complete
    assert "Red, green" in ex.answer.value
    assert "partial" in ex.answer.value


# -- against the embedded model -------------------------------------------------------------


@pytest.mark.slow
def test_send_sends_exactly_the_touched_parameters(make, client) -> None:
    ex = make(client, prompt=PROMPT)
    assert ex.wait(60)
    assert isinstance(ex.model_widget, widgets.Dropdown)
    assert "SmolLM2-135M-Instruct" in ex.model_widget.options
    ex.controls["temperature"].value = 0.3
    ex.controls["top_k"].input.value = 20
    ex.controls["max_tokens"].value = 12
    ex.controls["seed"].input.value = "7"
    ex.send_button.click()
    assert ex.wait(120)
    assert ex.error.layout.display == "none", ex.error.value
    [row] = _rows()
    assert row["params"] == {"temperature": 0.3, "top_k": 20, "max_tokens": 12, "seed": 7}
    assert row["source"] == "explorer" and row["complete"]
    res = ex.result
    assert res is not None and res.text and res.text == row["text"]
    assert res.history_id == row["id"]
    assert res.usage.completion_tokens is not None and res.usage.completion_tokens <= 12


@pytest.mark.slow
def test_tabs_hold_answer_heatmap_logprobs_usage_raw(make, client) -> None:
    ex = make(client, prompt=PROMPT, max_tokens=16, logprobs=True, top_logprobs=5)
    ex.send_button.click()
    assert ex.wait(120)
    res = ex.result
    assert res is not None and res.complete
    titles = [ex.tabs.get_title(i) for i in range(len(ex.tabs.children))]
    assert titles[:5] == ["Answer", "Tokens", "Logprobs", "Usage", "Raw JSON"]
    first_word = res.text.split()[0]
    assert first_word in html.unescape(ex.answer.value)
    assert len(ex.token_view.tokens) == len(res.choices[0].logprobs or [])  # clickable tokens
    assert "<table" in ex.logprobs_view.value
    assert f"{res.usage.completion_tokens} completion" in ex.usage.value
    assert '"choices"' in html.unescape(ex.raw.value)
    assert not ex.pin_button.disabled


@pytest.mark.slow
def test_whatif_reshapes_bars_without_a_request(make, client) -> None:
    ex = make(client, prompt=PROMPT, max_tokens=8, logprobs=True, top_logprobs=5)
    ex.send_button.click()
    assert ex.wait(120)
    panel = ex.whatif
    before = panel.bars.value
    assert "approximation" in before and "outside the returned alternatives" in before
    frame = panel.frame()
    assert frame is not None and len(frame) == 5
    panel.temperature.value = 0.0  # greedy: all mass on the top alternative
    greedy = panel.frame()
    assert greedy is not None
    assert greedy["whatif_prob"].iloc[0] == pytest.approx(1.0)
    assert panel.bars.value != before
    panel.position.value = 0
    panel.top_k.value = 1
    assert panel.frame()["kept"].sum() == 1  # type: ignore[index]
    assert len(_rows()) == 1  # still the one request


@pytest.mark.slow
def test_stop_ends_the_stream_and_keeps_the_partial_answer(make, client) -> None:
    ex = make(client, prompt="Write a long story about the sea.", max_tokens=400, ignore_eos=True)
    redraws: list[float] = []  # when the live answer (with its cursor) was redrawn
    ex.answer.observe(
        lambda c: redraws.append(time.monotonic()) if "▌" in c["new"] else None, names="value"
    )
    ex.send_button.click()
    deadline = time.monotonic() + 60
    while len(redraws) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not ex.stop_button.disabled
    ex.stop_button.click()
    started = time.monotonic()
    assert ex.wait(30)
    assert time.monotonic() - started < 10
    res = ex.result
    assert res is not None and not res.complete and res.text
    assert "stopped" in ex.status.value
    shown = html.unescape(ex.answer.value)
    assert res.text[:20] in shown or res.text[:10] in shown
    # streamed in, throttled: several redraws, never two within the 0.1 s interval
    assert len(redraws) >= 2
    assert min(b - a for a, b in itertools.pairwise(redraws)) >= 0.09
    [row] = _rows()
    assert not row["complete"] and row["text"] == res.text
    assert row["params"] == {"max_tokens": 400, "ignore_eos": True}
    # the server stopped generating: the next request is answered promptly, in full
    ex.controls["max_tokens"].value = 5
    ex.controls["ignore_eos"].reset()
    ex.send_button.click()
    assert ex.wait(60)
    assert ex.result is not None and ex.result.complete


@pytest.mark.slow
def test_after_an_error_the_next_send_works(make, dead, client) -> None:
    ex = make(dead, prompt=PROMPT, max_tokens=5)
    ex.send_button.click()
    assert ex.wait(30)
    assert ex.error.layout.display != "none"
    ex.client = client
    ex.model_widget.value = ""  # the server's own model
    ex.send_button.click()
    assert ex.wait(120)
    assert ex.error.layout.display == "none"
    assert ex.result is not None and ex.result.complete and ex.result.text
    assert [isinstance(r["error"], str) for r in _rows()] == [True, False]


@pytest.mark.slow
def test_auto_send_debounces_a_burst_into_one_request(make, client) -> None:
    ex = make(client, prompt=PROMPT, max_tokens=5)
    assert ex.wait(60)
    ex.controls["temperature"].value = 0.1  # auto-send is off by default: nothing is sent
    time.sleep(0.6)
    assert _rows() == []
    ex.auto_send.value = True
    for t in (0.2, 0.4, 0.6, 0.8, 1.0):  # a burst: each move well within the 0.4 s delay
        ex.controls["temperature"].value = t
    assert ex.wait(120)
    rows = _rows()
    assert len(rows) == 1
    assert rows[0]["params"] == {"temperature": 1.0, "max_tokens": 5}


@pytest.mark.slow
def test_pinned_runs_side_by_side_and_runs_frame(make, client) -> None:
    ex = make(client, prompt=PROMPT, max_tokens=8, logprobs=True, top_logprobs=3)
    for t in (0.0, 1.5):
        ex.controls["temperature"].value = t
        if t:
            ex.controls["seed"].input.value = "3"  # sent by the second run only
        ex.send_button.click()
        assert ex.wait(120)
        ex.pin_button.click()
    df = ex.runs_frame()
    assert list(df["run"]) == [1, 2]
    assert list(df["seed"]) == [None, 3]  # not sent is None, and an int stays an int
    assert list(df["temperature"]) == [0.0, 1.5]
    assert list(df["max_tokens"]) == [8, 8]
    assert df["answer"].str.len().gt(0).all()
    assert df["mean_entropy"].notna().all() and df["latency_s"].gt(0).all()
    assert list(df["history_id"]) == [r["id"] for r in _rows()]
    table = ex.pins_view.value
    differs = [row for row in table.split("<tr") if "tmlab-differs" in row]
    assert any("temperature" in row for row in differs)
    assert not any("max_tokens" in row for row in differs)
    ex.clear_pins()
    assert ex.runs_frame().empty
