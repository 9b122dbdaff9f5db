"""The embedded server's sampling defaults, known to the front ends without importing the
server (tmlab.meta), match what the server uses; the controls show them beside the
Tensormesh page's."""

from __future__ import annotations

import dataclasses

import pytest

from tmlab.client.settings import session
from tmlab.jupyter.controls import ParamControl, default_note
from tmlab.meta import LOCAL_SAMPLING_DEFAULTS
from tmlab.params import PARAMS
from tmlab.server.sampler import Sampling


def test_the_facts_in_core_are_the_servers() -> None:
    server = Sampling()
    assert {
        name: getattr(server, name)
        for name in (f.name for f in dataclasses.fields(Sampling))
        if name in LOCAL_SAMPLING_DEFAULTS
    } == LOCAL_SAMPLING_DEFAULTS
    assert LOCAL_SAMPLING_DEFAULTS["temperature"] == 1.0 and LOCAL_SAMPLING_DEFAULTS["top_k"] == 0
    # every fact names a request parameter, and every number the server defaults is listed
    assert set(LOCAL_SAMPLING_DEFAULTS) <= set(PARAMS)
    numeric = {
        f.name
        for f in dataclasses.fields(Sampling)
        if isinstance(getattr(server, f.name), int | float) and f.name in PARAMS
    }
    assert numeric <= set(LOCAL_SAMPLING_DEFAULTS)


def test_controls_say_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    session.reset()
    for var in ("TENSORMESH_INFERENCE_API_KEY", "TENSORMESH_SERVERLESS_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    assert default_note(PARAMS["top_k"]).startswith(": 0 = off (embedded server)")
    assert "1 (embedded server)" in default_note(PARAMS["temperature"])
    n = default_note(PARAMS["n"])
    assert n == ": 1 (Tensormesh page)"  # not a sampling default of the server: the page's
    control = ParamControl(PARAMS["temperature"])
    assert "unset · server default: 1 (embedded server)" in control.status.value
    # with Tensormesh configured, its page's default comes first where both are known
    monkeypatch.setenv("TENSORMESH_INFERENCE_API_KEY", "test-key-not-real")
    both = [p for p in LOCAL_SAMPLING_DEFAULTS if PARAMS[p].default is not None]
    for name in both:
        assert default_note(PARAMS[name]).split(", ")[0].endswith("(Tensormesh page)")
