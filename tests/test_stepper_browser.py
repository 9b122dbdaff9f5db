"""tmlab.Stepper in a real browser: JupyterLab 4 headless, driven by Playwright + Chromium.

What a user does: run the cell, see the text and the candidates' bars stage by stage, press
Sample (a token is added), click a candidate (that token is added), press Back (it is gone),
move the top_k slider (the bars are redrawn at once, and the server received no request for
it; a moment later one debounced request makes the view the server's own trace again). The
requests are counted in the history the kernel writes (``TMLAB_HISTORY``).

Needs Debian's ``chromium`` and the ``playwright`` package, as tests/test_browser.py (skipped
without them unless ``TMLAB_REQUIRE_BROWSER=1``). Screenshot:
``tests/artifacts/browser/test_stepper_in_the_browser/``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from _jupyterlab import JupyterLab, write_notebook

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = os.environ.get("TMLAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts" / "browser"
REQUIRE = os.environ.get("TMLAB_REQUIRE_BROWSER", "") not in ("", "0")
CELL = 'import tmlab\nst = tmlab.Stepper("Name a colour.", seed=5, top_k=40)\nst'


def _missing() -> str | None:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM}"
    for module in ("playwright", "jupyterlab"):
        if importlib.util.find_spec(module) is None:
            return f"the {module} package is not installed"
    return None


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[JupyterLab, Path]]:
    why = _missing()
    if why is not None:
        if REQUIRE:
            pytest.fail(f"TMLAB_REQUIRE_BROWSER is set but the browser test cannot run: {why}")
        pytest.skip(why)
    base = tmp_path_factory.mktemp("jupyterlab-stepper")
    root, state = base / "root", base / "state"
    root.mkdir()
    state.mkdir()
    history = base / "history.sqlite3"
    # one slot: the shared server then starts without the batching self-test (minutes on a
    # loaded 2-core machine); the Stepper sends one request at a time anyway
    env = {"TMLAB_HISTORY": str(history), "TMLAB_PARALLEL": "1"}
    server = JupyterLab(root, state, env=env)
    server.start()
    try:
        yield server, history
    finally:
        server.stop()


def _requests(history: Path) -> int:
    if not history.exists():
        return 0
    with closing(sqlite3.connect(history)) as db:
        return int(db.execute("SELECT COUNT(*) FROM requests").fetchone()[0])


def _until(check: Callable[[], Any], timeout: float, what: str, page: Any, out: Path) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    page.screenshot(path=str(out / "failure.png"))
    pytest.fail(f"timed out after {timeout:g} s: {what} (screenshot {out / 'failure.png'})")


def test_stepper_in_the_browser(lab: tuple[JupyterLab, Path]) -> None:
    from playwright.sync_api import expect, sync_playwright

    server, history = lab
    out = ARTIFACTS / "test_stepper_in_the_browser"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    write_notebook(server.root / "stepper.ipynb", [CELL])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1400})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server.url("lab/tree/stepper.ipynb?reset"), timeout=60_000)
            expect(page.locator("#jp-main-statusbar")).to_contain_text(
                re.compile(r"\|\s*Idle"), timeout=120_000
            )
            page.locator(".jp-Notebook .jp-Cell").first.locator(".jp-InputArea-editor").click()
            page.keyboard.press("Shift+Enter")

            # it renders: candidates, one bar row per stage, the exactness label
            cands = page.locator(".tmlab-st-cand")
            try:
                expect(cands.first).to_be_visible(timeout=180_000)
            except AssertionError:
                page.screenshot(path=str(out / "failure.png"))
                output = page.locator(".jp-OutputArea").first.inner_text(timeout=5000)
                pytest.fail(f"the Stepper did not render its candidates; output:\n{output}")
            rows = page.locator(".tmlab-st-grid tr[data-stage]")
            assert rows.count() >= 6
            expect(page.locator(".tmlab-st-label")).to_contain_text("exact", timeout=30_000)
            sofar = page.locator(".tmlab-st-sofar")
            assert sofar.inner_text() == ""
            n0 = _requests(history)
            assert n0 == 1

            # Sample adds the token the server drew
            drawn = page.locator(".tmlab-st-next").inner_text()
            page.locator("button[data-action=sample]").click()
            _until(lambda: sofar.text_content() != "", 60, "Sample to add a token", page, out)
            assert sofar.text_content() == drawn.replace("\u2423", " ")
            _until(lambda: _requests(history) == n0 + 1, 60, "the next request", page, out)
            expect(page.locator(".tmlab-st-status")).to_contain_text("drew", timeout=60_000)
            one = sofar.text_content()

            # clicking a candidate adds that token
            third = page.locator(".tmlab-st-cand[data-index='2']")
            token = (third.get_attribute("data-token") or "").replace("\u2423", " ")
            third.click()
            _until(lambda: sofar.text_content() != one, 60, "a click to add a token", page, out)
            assert sofar.text_content() == one + token
            _until(lambda: _requests(history) == n0 + 2, 60, "the next request", page, out)
            expect(page.locator(".tmlab-st-status")).to_contain_text("drew", timeout=60_000)

            # Back removes it (no request)
            page.locator("button[data-action=back]").click()
            _until(lambda: sofar.text_content() == one, 30, "Back to remove it", page, out)
            page.screenshot(path=str(out / "stepped.png"))

            # the keyboard: 1 takes the first candidate, Backspace goes back
            first = page.locator(".tmlab-st-cand[data-index='0']").get_attribute("data-token")
            page.locator(".tmlab-st").first.focus()
            page.keyboard.press("1")
            want = one + (first or "").replace("\u2423", " ")
            _until(lambda: sofar.text_content() == want, 60, "key 1 to add a token", page, out)
            expect(page.locator(".tmlab-st-status")).to_contain_text("drew", timeout=60_000)
            page.locator(".tmlab-st").first.focus()
            page.keyboard.press("Backspace")
            _until(lambda: sofar.text_content() == one, 30, "Backspace to go back", page, out)

            # a slider change redraws the bars at once, without a request
            n = _requests(history)
            cut = page.locator(".tmlab-st-grid tr[data-stage=top_k] td.tmlab-st-cut")
            cells = page.locator(".tmlab-st-grid tr[data-stage=top_k] td.tmlab-st-cell").count()
            assert cut.count() == 0  # top_k=40 keeps every candidate drawn
            page.locator("input[data-param=top_k]").evaluate(
                "e => { e.value = '3'; e.dispatchEvent(new Event('input', {bubbles: true})); }"
            )
            _until(lambda: cut.count() == cells - 3, 10, "the top_k row to be redrawn", page, out)
            expect(page.locator(".tmlab-st-label")).to_contain_text("no request")
            assert _requests(history) == n  # the redraw asked the server nothing
            page.screenshot(path=str(out / "slider.png"))
            # then the debounced request makes it the server's own trace again
            _until(lambda: _requests(history) == n + 1, 60, "the debounced request", page, out)
            expect(page.locator(".tmlab-st-label")).to_contain_text("server's own trace")
            assert cut.count() == cells - 3
            assert not [e for e in errors if re.search(r"widget|tmlab|stepper", e, re.I)], errors
        finally:
            browser.close()
