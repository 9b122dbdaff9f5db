"""``tmlab.export_lesson`` / ``Explorer.export``: a lesson's runs as files for slides."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

import tmlab
from tmlab.jupyter.pins import Pin

pytestmark = pytest.mark.slow


def test_pins_answers_and_a_sweep_become_one_page_with_csv_and_png(
    local_server: Any, tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    with tmlab.Client(base_url=local_server.base_url) as client:
        cold = client.chat("Name a colour.", temperature=0.1, seed=1, max_tokens=4, logprobs=True)
        hot = client.chat("Name a colour.", temperature=1.5, seed=1, max_tokens=4)
    sweep = tmlab.sweep(
        "Name a colour.",
        grid={"temperature": [0.1, 1.5]},
        repeats=2,
        max_tokens=3,
        client=tmlab.Client(base_url=local_server.base_url),
        progress=False,
    )
    pins = [Pin({"temperature": 0.1}, cold.model, cold), Pin({"temperature": 1.5}, hot.model, hot)]
    page = tmlab.export_lesson(tmp_path / "lesson", pins=pins, results=[hot], sweep=sweep)
    out = page.parent
    assert sorted(p.name for p in out.iterdir()) == [
        "answers.csv",
        "index.html",
        "runs.csv",
        "sweep.csv",
        "sweep.png",
        "sweep_summary.csv",
    ]
    text = page.read_text(encoding="utf-8")
    assert "Pinned runs" in text and "sweep.png" in text and cold.text.split()[0] in text
    assert "tmlab-heat" in text or "<span" in text  # the first pin's token heatmap
    with (out / "runs.csv").open() as f:
        runs = list(csv.DictReader(f))
    assert [r["temperature"] for r in runs] == ["0.1", "1.5"]
    with (out / "answers.csv").open() as f:
        answers = list(csv.DictReader(f))
    assert len(answers) == 3 and answers[1]["text"] == hot.text
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    with (out / "sweep.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 4


def test_nothing_to_export_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(tmlab.ParameterError, match="nothing to export"):
        tmlab.export_lesson(tmp_path)
    with pytest.raises(tmlab.ParameterError, match="results"):
        tmlab.export_lesson(tmp_path, results=["an answer"])  # type: ignore[list-item]


def test_the_explorer_exports_its_pins(local_server: Any, make: Any, tmp_path: Path) -> None:
    ex = make(tmlab.Client(base_url=local_server.base_url), prompt="Hi.", max_tokens=4)
    ex.controls["temperature"].value = 0.0
    ex.send_button.click()
    assert ex.wait(120)
    ex.pin_button.click()
    page = ex.export(str(tmp_path / "pins"))
    assert "Pinned runs" in page.read_text(encoding="utf-8")
    assert (page.parent / "runs.csv").exists()
