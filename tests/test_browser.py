"""The Explorer widget in a real browser: JupyterLab 4 headless, driven by Playwright + Chromium.

What a user does: run the cell, see the panel, move the temperature slider with the keyboard,
drag top_logprobs with the mouse (which turns logprobs on), click Send, read the answer, open
the Tokens tab and hover a token: its popup must list the alternatives, all of it visible. Then
the request the server received (the history row the kernel recorded, ``TMLAB_HISTORY``) must
carry the values shown on the sliders and nothing for the untouched ones.

Needs Debian's ``chromium`` (``/usr/bin/chromium``, or ``TMLAB_CHROMIUM=PATH``; ``.ci/run``
installs it) and the ``playwright`` package; no browser is ever downloaded. Without them the
tests are skipped, with the reason, unless ``TMLAB_REQUIRE_BROWSER=1`` (``.ci/run`` sets it):
then they fail. Screenshots: ``tests/artifacts/browser/<test>/``
(git-ignored); a failure names its screenshot.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from _jupyterlab import JupyterLab, write_notebook

from tmlab.params import PARAMS

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Locator, Page

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = (
    os.environ.get("TMLAB_CHROMIUM")  # another Chromium build, e.g. for a local run
    or shutil.which("chromium")
    or "/usr/bin/chromium"
)
ARTIFACTS = Path(__file__).parent / "artifacts" / "browser"

KERNEL_TIMEOUT = 120_000  # ms: kernel start on a busy 2-core machine
CELL_TIMEOUT = 90_000  # ms: `import tmlab` + building the widget + its first render
ANSWER_TIMEOUT = 180_000  # ms: the first request starts the local model (~10-20 s), then answers

TEMPERATURE = 0.7  # set with the arrow keys: one press is one step of the parameter table
TOP_LOGPROBS_AT = 0.25  # where top_logprobs is dragged on its 0..20 track: about 5
MAX_TOKENS = 16


REQUIRE = os.environ.get("TMLAB_REQUIRE_BROWSER", "") not in ("", "0")
"""``TMLAB_REQUIRE_BROWSER=1`` (``.ci/run`` sets it): a missing browser fails, never skips."""


def _missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    import importlib.util

    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; .ci/run does)"
    for module, package in (("playwright", "playwright"), ("jupyterlab", "jupyterlab")):
        if importlib.util.find_spec(module) is None:
            return f"the {package} package is not installed"
    return None


def _require_browser() -> None:
    why = _missing()
    if why is None:
        return
    if REQUIRE:
        pytest.fail(f"TMLAB_REQUIRE_BROWSER is set but the browser test cannot run: {why}")
    pytest.skip(why)


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def history_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The history database the notebook kernels write to (their TMLAB_HISTORY)."""
    return tmp_path_factory.mktemp("browser-history") / "history.sqlite3"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, history_file: Path) -> Iterator[JupyterLab]:
    """One headless JupyterLab for this module, its state in a temporary folder."""
    _require_browser()
    base = tmp_path_factory.mktemp("jupyterlab")
    root, state = base / "root", base / "state"
    root.mkdir()
    state.mkdir()
    server = JupyterLab(root, state, env={"TMLAB_HISTORY": str(history_file)})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(lab: JupyterLab) -> Iterator[Browser]:
    """Debian's Chromium, headless, through Playwright (no download: ``executable_path``)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield b
        finally:
            b.close()


class Session:
    """One page on one throwaway notebook, with its screenshots and browser console errors."""

    def __init__(self, page: Page, lab: JupyterLab, out: Path) -> None:
        self.page = page
        self.lab = lab
        self.out = out
        self.errors: list[str] = []
        self.shots: list[Path] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

    def _on_console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.errors.append(msg.text)

    def shot(self, name: str) -> Path:
        """A screenshot of what the user sees now, in the test's output folder."""
        path = self.out / f"{name}.png"
        self.page.screenshot(path=str(path))
        self.shots.append(path)
        return path

    def fail(self, what: str, extra: str = "") -> None:
        """Fail with what was expected, a screenshot of the page and the cell's output."""
        path = self.shot("failure")
        try:
            output = self.page.locator(".jp-OutputArea").first.inner_text(timeout=2000)
        except Exception:  # the page may be gone: the message still has the screenshot
            output = "(no output area)"
        pytest.fail(
            f"{what}\nscreenshot: {path}\ncell output:\n{output[-3000:]}\n{extra}"
            f"\nbrowser console errors: {self.errors[-10:]}",
            pytrace=False,
        )

    def wait(self, locator: Locator, what: str, timeout: float, state: str = "visible") -> None:
        """Wait for ``locator``; on timeout fail with a screenshot (never a bare timeout)."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            locator.wait_for(state=state, timeout=timeout)  # type: ignore[arg-type]
        except PlaywrightTimeout:
            self.fail(f"timed out after {timeout / 1000:g} s waiting for {what}")

    def expect(self, check: Callable[[], Any], what: str) -> None:
        """Run a Playwright ``expect`` assertion; on failure fail with a screenshot."""
        try:
            check()
        except AssertionError as exc:
            self.fail(f"{what}: {exc}")

    def open_notebook(self, name: str, cells: list[str]) -> None:
        """Write a throwaway notebook, open it and wait for its kernel to be idle."""
        from playwright.sync_api import expect

        write_notebook(self.lab.root / name, cells)
        self.page.goto(self.lab.url(f"lab/tree/{name}?reset"), timeout=60_000)
        # The status bar says "| Idle" once the kernel exists and is idle (the notebook's own
        # execution indicator says idle before the kernel is even started).
        self.expect(
            lambda: expect(self.page.locator("#jp-main-statusbar")).to_contain_text(
                re.compile(r"\|\s*Idle"), timeout=KERNEL_TIMEOUT
            ),
            "the kernel did not become idle",
        )

    def run_first_cell(self) -> Locator:
        """Click into the first cell and run it (Shift+Enter); the cell's locator."""
        cell = self.page.locator(".jp-Notebook .jp-Cell").first
        cell.locator(".jp-InputArea-editor").click()
        self.page.keyboard.press("Shift+Enter")
        return cell

    def widget_errors(self) -> list[str]:
        """Console errors that come from widgets (those must not happen)."""
        return [e for e in self.errors if re.search(r"widget|tmlab|backbone", e, re.I)]


@pytest.fixture(scope="module")
def foreign_lab(
    tmp_path_factory: pytest.TempPathFactory, llamacpp_server: str
) -> Iterator[JupyterLab]:
    """A second JupyterLab whose kernels talk to llama.cpp's own server, as a user points
    tmlab at a server that is not its own (``TENSORMESH_SERVERLESS_BASE_URL``, no key)."""
    _require_browser()
    base = tmp_path_factory.mktemp("jupyterlab-llamacpp")
    root, state = base / "root", base / "state"
    root.mkdir()
    state.mkdir()
    env = {
        "TMLAB_HISTORY": str(base / "history.sqlite3"),
        "TENSORMESH_SERVERLESS_BASE_URL": llamacpp_server,
    }
    server = JupyterLab(root, state, env=env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def _session(browser: Browser, lab: JupyterLab, name: str) -> Iterator[Session]:
    """A fresh page (own context) on ``lab`` and an empty output folder named ``name``."""
    out = ARTIFACTS / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    context = browser.new_context(viewport={"width": 1500, "height": 1600})
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        yield Session(page, lab, out)
    finally:
        context.close()


@pytest.fixture
def session(browser: Browser, lab: JupyterLab, request: pytest.FixtureRequest) -> Iterator[Session]:
    """A fresh page on the JupyterLab whose kernels use the embedded server."""
    with _session(browser, lab, request.node.name) as s:
        yield s


# -- tests ------------------------------------------------------------------------------------


def test_harness_moves_an_ipywidgets_slider_with_the_keyboard(session: Session) -> None:
    """The harness itself: a plain IntSlider renders, ArrowRight moves it, the kernel sees it."""
    from playwright.sync_api import expect

    session.open_notebook(
        "slider.ipynb",
        [
            "import ipywidgets as w\n"
            "s = w.IntSlider(value=3, min=0, max=10, description='n')\n"
            "out = w.HTML('value 3')\n"
            "s.observe(lambda c: setattr(out, 'value', f\"value {c['new']}\"), names='value')\n"
            "w.VBox([s, out])"
        ],
    )
    cell = session.run_first_cell()
    handle = cell.locator(".widget-slider .noUi-handle")
    session.wait(handle, "the IntSlider to render", CELL_TIMEOUT)
    handle.focus()
    handle.press("ArrowRight")
    handle.press("ArrowRight")
    session.expect(
        lambda: expect(handle).to_have_attribute("aria-valuenow", re.compile(r"^5(\.0+)?$")),
        "two ArrowRight presses did not move the slider from 3 to 5",
    )
    # the kernel's observer ran: the round trip browser -> kernel -> browser works
    session.expect(
        lambda: expect(cell.locator(".widget-html-content")).to_have_text("value 5"),
        "the kernel did not see the slider move",
    )
    session.shot("slider")
    assert not cell.get_by_text("Error displaying widget").count()
    assert not session.widget_errors(), session.widget_errors()


def test_explorer_sends_the_slider_value_and_shows_token_alternatives(
    session: Session, history_file: Path
) -> None:
    """The whole Explorer path in JupyterLab, checked against the request the server got."""
    from playwright.sync_api import expect

    started = time.monotonic()
    page = session.page
    session.open_notebook(
        "explorer.ipynb",
        [
            "import tmlab\n"
            f"ex = tmlab.Explorer(prompt='Name three colours.', max_tokens={MAX_TOKENS})\n"
            "ex"
        ],
    )
    cell = session.run_first_cell()
    explorer = cell.locator(".tmlab-explorer")
    session.wait(explorer, "the Explorer panel to render", CELL_TIMEOUT)
    if cell.get_by_text("Error displaying widget").count():
        session.fail("the Explorer shows 'Error displaying widget'")

    # -- the sliders rendered, from the parameter table ---------------------------------------
    temperature = explorer.locator(".tmlab-control-temperature")
    handle = temperature.locator(".noUi-handle")
    session.wait(handle, "the temperature slider", 10_000)
    for name in ("top_p", "top_k", "max_tokens", "top_logprobs"):
        session.wait(
            explorer.locator(f".tmlab-control-{name} .noUi-handle"), f"the {name} slider", 5_000
        )
    session.expect(
        lambda: expect(temperature).to_contain_text("unset"),
        "the untouched temperature control does not say it is unset",
    )
    shot = session.shot("01-rendered")
    # the text boxes span their column (the panel when stacked; side by side, the controls'
    # column) and end inside it
    for box in ("system", "prompt"):
        overflow = explorer.locator(f".tmlab-{box} textarea").evaluate(
            "t => t.getBoundingClientRect().right"
            " - t.closest('.tmlab-col').getBoundingClientRect().right"
        )
        if not -8 <= overflow <= 0.5:
            where = "past" if overflow > 0 else "short of"
            session.fail(f"the {box} box ends {abs(overflow):.1f} px {where} its column", str(shot))

    # -- temperature by keyboard; top_logprobs by mouse (that turns logprobs on, in the kernel) --
    # An unset slider rests somewhere (the server's default, or mid-range): count key presses
    # from where it is to the target.
    step = float(PARAMS["temperature"].step or 0.01)
    start = float(handle.get_attribute("aria-valuenow") or "nan")
    target = TEMPERATURE if abs(start - TEMPERATURE) > 1e-9 else TEMPERATURE + step
    presses = round((target - start) / step)
    handle.focus()
    for _ in range(abs(presses)):
        handle.press("ArrowRight" if presses > 0 else "ArrowLeft")
    shown = round(target, 2)
    session.expect(
        lambda: expect(handle).to_have_attribute(
            "aria-valuenow", re.compile(rf"^{re.escape(f'{shown:g}')}0*$")
        ),
        f"{abs(presses)} arrow key presses did not move temperature from {start:g} to {shown:g}",
    )
    session.expect(
        lambda: expect(temperature.locator(".widget-readout")).to_have_text(f"{shown:.2f}"),
        f"the temperature readout does not say {shown:.2f}",
    )
    top = explorer.locator(".tmlab-control-top_logprobs")
    _drag(page, top.locator(".noUi-handle"), top.locator(".noUi-base"), TOP_LOGPROBS_AT)
    top_value = top.locator(".noUi-handle").get_attribute("aria-valuenow") or ""
    if not re.fullmatch(r"\d+(\.0+)?", top_value) or not 2 <= float(top_value) <= 10:
        session.fail(f"dragging top_logprobs to {TOP_LOGPROBS_AT:.0%} gave {top_value!r}")
    top_logprobs = int(float(top_value))
    session.expect(
        lambda: expect(
            explorer.locator(".tmlab-control-logprobs input[type=checkbox]")
        ).to_be_checked(timeout=15_000),
        "moving top_logprobs did not turn logprobs on",
    )
    # The kernel saw all of it: it rebuilds the "same request in code" line.
    call = explorer.locator(".tmlab-call")
    for text in (f"temperature={shown}", "logprobs=True", f"top_logprobs={top_logprobs}"):
        session.expect(
            partial(expect(call).to_contain_text, text, timeout=15_000),
            f"the kernel did not receive the change: the code line lacks {text!r}",
        )
    session.expect(
        lambda: expect(temperature).to_contain_text("sent"),
        "the moved temperature control does not say it is sent",
    )

    # -- send; the answer streams in and finishes (Pin enabled = a finished result) ------------
    explorer.locator("button.tmlab-send").click()
    session.wait(
        explorer.locator("button.tmlab-pin:enabled"), "the answer to finish", ANSWER_TIMEOUT
    )
    error = explorer.locator(".tmlab-error")
    if error.is_visible() and error.inner_text().strip():
        session.fail(f"the Explorer shows an error: {error.inner_text()!r}")
    answer = explorer.locator(".tmlab-answer")
    answer_text = answer.inner_text()
    if not re.search(r"\w", answer_text):
        session.fail(f"the Answer tab is empty: {answer_text!r}")
    session.shot("02-answer")

    # -- the Tokens tab: the clickable token view, and a token's alternatives on hover --------
    explorer.locator(".tmlab-tabs .lm-TabBar-tab", has_text="Tokens").click()
    tokens = explorer.locator(".tmlab-tokenview .tmlab-tv-tok")
    session.wait(tokens.first, "the token view", 15_000)
    n_tokens = tokens.count()
    if not 1 <= n_tokens <= MAX_TOKENS:
        session.fail(f"the token view shows {n_tokens} tokens, expected 1..{MAX_TOKENS}")
    token = tokens.nth(min(1, n_tokens - 1))
    token.hover()
    popup = page.locator(".tmlab-tv-alts")
    session.wait(popup, "the alternatives popup on hover", 10_000)
    alts = popup.locator(".tmlab-tv-alt")
    if alts.count() != top_logprobs:
        session.fail(f"the popup lists {alts.count()} alternatives, not {top_logprobs}")
    if not re.search(r"p = [01]\.\d{4}", alts.first.inner_text()):
        session.fail(f"the alternative shows no probability: {alts.first.inner_text()!r}")
    session.shot("03-token-hover")
    hidden = alts.last.evaluate(_HIDDEN_PROBE)
    if hidden:
        session.fail(f"the last alternative cannot be seen or clicked: {hidden}")

    # -- the request the server received carried the slider's value ---------------------------
    rows = _explorer_rows(history_file)
    assert len(rows) == 1, f"expected one explorer request in the history, got {len(rows)}"
    params = rows[0]["params"]
    assert params.get("temperature") == pytest.approx(shown), params
    assert params.get("logprobs") is True, params
    assert params.get("top_logprobs") == top_logprobs, params
    assert params.get("max_tokens") == MAX_TOKENS, params
    for untouched in ("top_p", "top_k", "min_p", "seed", "presence_penalty"):
        assert untouched not in params, f"{untouched} was sent though never touched: {params}"
    assert rows[0]["complete"] == 1 and rows[0]["text"].strip() in answer_text, rows[0]

    assert not session.widget_errors(), (
        f"widget errors in the browser console: {session.widget_errors()}"
        f"\nscreenshots: {[str(p) for p in session.shots]}"
    )
    print(
        f"browser test: {time.monotonic() - started:.1f} s, {n_tokens} tokens, "
        f"screenshots in {session.out}; other console errors: {session.errors}"
    )


def test_clicking_an_alternative_branches_and_the_tree_shows_both(
    session: Session, history_file: Path
) -> None:
    """Tokens tab: click an alternative; the branch streams in, is recorded as a branch of
    the answer, and the Branches tab shows the tree (a click on the root shows it again)."""
    from playwright.sync_api import expect

    page = session.page
    session.open_notebook(
        "branching.ipynb",
        [
            "import tmlab\n"
            "ex = tmlab.Explorer(prompt='Name three colours.', temperature=0.0, max_tokens=12,\n"
            "                    logprobs=True, top_logprobs=3)\n"
            "ex.run()\n"
            "ex"
        ],
    )
    cell = session.run_first_cell()
    explorer = cell.locator(".tmlab-explorer")
    session.wait(explorer, "the Explorer panel to render", CELL_TIMEOUT)
    session.wait(
        explorer.locator("button.tmlab-pin:enabled"), "the first answer to finish", ANSWER_TIMEOUT
    )
    before = len(_explorer_rows(history_file))

    explorer.locator(".tmlab-tabs .lm-TabBar-tab", has_text="Tokens").click()
    tokens = explorer.locator(".tmlab-tokenview .tmlab-tv-tok")
    session.wait(tokens.first, "the token view", 15_000)
    if tokens.count() < 4:
        session.fail(f"the answer is too short to branch at position 2: {tokens.count()} tokens")
    # the keyboard: arrows move between tokens, Enter opens the alternatives, Escape closes
    view = explorer.locator(".tmlab-tokenview .tmlab-tv")
    view.focus()
    for key in ("ArrowRight", "ArrowRight", "ArrowRight"):
        page.keyboard.press(key)
    session.expect(
        lambda: expect(tokens.nth(2)).to_have_class(re.compile("tmlab-tv-selected")),
        "three ArrowRight presses did not select the third token",
    )
    page.keyboard.press("Enter")
    popup = page.locator(".tmlab-tv-alts")
    session.wait(popup, "the alternatives opened by Enter", 10_000)
    page.keyboard.press("Escape")
    session.wait(popup, "the popup to close on Escape", 5_000, state="detached")

    # the mouse: hover the token at position 2, click an alternative the model did not say
    tokens.nth(2).hover()
    session.wait(popup, "the alternatives popup on hover", 10_000)
    choice = popup.locator(".tmlab-tv-alt:not(.tmlab-tv-taken)").first
    label = choice.get_attribute("data-token") or ""
    session.shot("01-alternatives")
    choice.click()
    session.wait(
        explorer.locator(".tmlab-tokenview .tmlab-tv-inherited").first,
        "the branch's prefix in the token view",
        30_000,
    )
    session.wait(
        explorer.locator("button.tmlab-pin:enabled"), "the branch to finish", ANSWER_TIMEOUT
    )
    session.shot("02-branched")

    rows = _explorer_rows(history_file)
    if len(rows) != before + 1:
        session.fail(f"expected one more explorer request after the click, got {rows[before:]}")
    root, branch = rows[before - 1], rows[-1]
    assert branch["parent_id"] == root["id"], (branch["parent_id"], root["id"])
    assert branch["branch_position"] == 2
    token = branch["branch_token"]
    visible = token.replace(" ", "\u2423").replace("\n", "\u21b5")
    assert label in (token, visible), (label, token)
    messages = json.loads(branch["messages"])
    final = messages[-1]
    assert final["role"] == "assistant" and final["content"].endswith(token), final
    prefix = final["content"]
    assert root["text"].startswith(prefix[: len(prefix) - len(token)])  # the answer's own tokens
    assert branch["params"]["continue_final_message"] is True
    shown = explorer.locator(".tmlab-answer").inner_text()
    if not shown.startswith(prefix) or branch["text"] not in shown:
        session.fail(f"the answer shown does not start with {prefix!r}: {shown!r}")

    # the Branches tab: the root and the branch under it; clicking the root shows it again
    explorer.locator(".tmlab-tabs .lm-TabBar-tab", has_text="Branches").click()
    nodes = explorer.locator(".tmlab-branches .tmlab-br-node")
    session.wait(nodes.nth(1), "two nodes in the Branches tab", 15_000)
    session.expect(lambda: expect(nodes).to_have_count(2), "the tree has not two nodes")
    session.expect(
        lambda: expect(nodes.nth(1).locator(".tmlab-br-token")).to_have_text(token),
        "the branch's node does not show its token",
    )
    session.shot("03-branches-tab")
    nodes.nth(0).click()
    session.expect(
        lambda: expect(nodes.nth(0)).to_have_class(re.compile("tmlab-br-selected")),
        "clicking the root did not select it",
    )
    explorer.locator(".tmlab-tabs .lm-TabBar-tab", has_text="Answer").click()
    session.expect(
        lambda: expect(explorer.locator(".tmlab-answer")).to_contain_text(root["text"].strip()),
        "clicking the root in the Branches tab did not show the root's answer",
    )
    if prefix in explorer.locator(".tmlab-answer").inner_text():
        session.fail("the root's answer still shows the branch's prefix")
    session.shot("04-root-shown-again")
    assert not session.widget_errors(), session.widget_errors()
    print(f"branch browser test: screenshots in {session.out}")


def test_explorer_on_llamacpp_server_shows_alternatives_and_branches(
    browser: Browser, foreign_lab: JupyterLab, llamacpp_server: str
) -> None:
    """The Explorer in a kernel pointed at llama.cpp's own server: Send answers, the token
    view lists each token's alternatives with their probabilities, and a click on one branches
    (llama.cpp's server always prefills a final assistant message)."""
    name = "test_explorer_on_llamacpp_server_shows_alternatives_and_branches"
    history_file = foreign_lab.root.parent / "history.sqlite3"
    with _session(browser, foreign_lab, name) as session:
        page = session.page
        session.open_notebook(
            "foreign.ipynb",
            [
                "import tmlab\n"
                "ex = tmlab.Explorer(prompt='Name three colours.', temperature=0.0,\n"
                "                    max_tokens=12, logprobs=True, top_logprobs=3)\n"
                "ex"
            ],
        )
        cell = session.run_first_cell()
        explorer = cell.locator(".tmlab-explorer")
        session.wait(explorer, "the Explorer panel to render", CELL_TIMEOUT)
        explorer.locator("button.tmlab-send").click()
        session.wait(
            explorer.locator("button.tmlab-pin:enabled"), "the answer to finish", ANSWER_TIMEOUT
        )
        error = explorer.locator(".tmlab-error")
        if error.is_visible() and error.inner_text().strip():
            session.fail(f"the Explorer shows an error: {error.inner_text()!r}")
        rows = [r for r in _explorer_rows(history_file) if r["base_url"] == llamacpp_server]
        if len(rows) != 1:
            session.fail(f"expected one request to {llamacpp_server} in the history: {rows}")
        answer = rows[0]["text"]
        session.shot("01-answer")

        explorer.locator(".tmlab-tabs .lm-TabBar-tab", has_text="Tokens").click()
        tokens = explorer.locator(".tmlab-tokenview .tmlab-tv-tok")
        session.wait(tokens.first, "the token view", 15_000)
        if tokens.count() < 4:
            session.fail(f"the answer is too short to branch at position 2: {tokens.count()}")
        tokens.nth(2).hover()
        popup = page.locator(".tmlab-tv-alts")
        session.wait(popup, "the alternatives popup on hover", 10_000)
        alts = popup.locator(".tmlab-tv-alt")
        if alts.count() != 3:
            session.fail(f"the popup lists {alts.count()} alternatives, not 3")
        if not re.search(r"p = [01]\.\d{4}", alts.first.inner_text()):
            session.fail(f"the alternative shows no probability: {alts.first.inner_text()!r}")
        session.shot("02-alternatives")

        choice = popup.locator(".tmlab-tv-alt:not(.tmlab-tv-taken)").first
        choice.click()
        session.wait(
            explorer.locator(".tmlab-tokenview .tmlab-tv-inherited").first,
            "the branch's prefix in the token view",
            60_000,
        )
        session.wait(
            explorer.locator("button.tmlab-pin:enabled"), "the branch to finish", ANSWER_TIMEOUT
        )
        if error.is_visible() and error.inner_text().strip():
            session.fail(f"branching on llama.cpp's server failed: {error.inner_text()!r}")
        session.shot("03-branched")
        rows = [r for r in _explorer_rows(history_file) if r["base_url"] == llamacpp_server]
        if len(rows) != 2:
            session.fail(f"expected the branch as a second request: {rows}")
        root, branch = rows
        assert branch["parent_id"] == root["id"] and branch["branch_position"] == 2, branch
        prefix = json.loads(branch["messages"])[-1]["content"]
        assert answer.startswith(prefix[: len(prefix) - len(branch["branch_token"])]), prefix
        # the branch's text is only what the server added: llama.cpp's echo of the prefix in a
        # non-streamed answer is not shown twice
        shown = explorer.locator(".tmlab-answer").inner_text()
        if not shown.startswith(prefix) or shown.count(prefix) != 1:
            session.fail(f"the answer shown should start with {prefix!r} once: {shown!r}")
        assert not session.widget_errors(), session.widget_errors()


def _drag(page: Page, handle: Locator, track: Locator, fraction: float) -> None:
    """Drag a slider's handle with the mouse to ``fraction`` of its track."""
    start, base = handle.bounding_box(), track.bounding_box()
    assert start is not None and base is not None, "the slider is not on screen"
    y = start["y"] + start["height"] / 2
    page.mouse.move(start["x"] + start["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(base["x"] + base["width"] * fraction, y, steps=8)
    page.mouse.up()


# Whether an element is on screen and on top at its centre (not clipped, not covered):
# '' if so, else what is wrong.
_HIDDEN_PROBE = """el => {
  const r = el.getBoundingClientRect();
  if (r.width === 0 || r.height === 0) return 'it has no size';
  if (r.top < 0 || r.left < 0 || r.bottom > window.innerHeight || r.right > window.innerWidth)
    return `it is outside the window: ${JSON.stringify(r)}`;
  const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  return el.contains(top) ? '' : `covered by ${top && top.className}`;
}"""


def _explorer_rows(path: Path) -> list[dict[str, Any]]:
    """The history rows with source 'explorer', oldest first, ``params`` decoded."""
    if not path.exists():
        pytest.fail(f"the kernel wrote no history at {path} (TMLAB_HISTORY not inherited?)")
    with closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM requests WHERE source = 'explorer' ORDER BY id").fetchall()
    out = []
    for row in rows:
        item = dict(row)
        item["params"] = json.loads(item["params"] or "{}")
        out.append(item)
    return out


def test_tmchat_logprobs_alternatives_fit_the_cell(browser: Browser, lab: JupyterLab) -> None:
    """``%%tmchat --logprobs 5``: the alternatives are one compact column (``"A" 0.77 · …``)
    and the whole table fits the cell at a laptop's width, instead of two Python-list columns
    that ran off the right edge."""
    from playwright.sync_api import expect

    out = ARTIFACTS / "test_tmchat_logprobs_alternatives_fit_the_cell"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    context = browser.new_context(viewport={"width": 1280, "height": 1400})
    try:
        page = context.new_page()
        page.set_default_timeout(30_000)
        session = Session(page, lab, out)
        session.open_notebook(
            "logprobs.ipynb",
            [
                "%load_ext tmlab",
                "%%tmchat --temperature 0 --max-tokens 12 --logprobs 5\nName three colours.",
            ],
        )
        session.run_first_cell()
        page.keyboard.press("Shift+Enter")  # the focus moved on to the %%tmchat cell
        cell = page.locator(".jp-Notebook .jp-Cell").nth(1)
        table = cell.locator(".jp-OutputArea-output table").filter(has_text="alternatives (p)")
        session.wait(table, "the logprobs table", ANSWER_TIMEOUT)
        session.expect(
            lambda: expect(table.locator("thead")).not_to_contain_text("top_tokens"),
            "the alternatives are still shown as Python lists",
        )
        first = table.locator("tbody tr").first.locator("td").last
        session.expect(
            lambda: expect(first).to_contain_text(re.compile(r'"[^"]*"\s0\.\d+ · ')),
            'the alternatives are not shown as "token" p · "token" p',
        )
        # the table ends inside the output area: nothing is cut off at the right edge
        overflow = table.evaluate(
            "t => { const area = t.closest('.jp-OutputArea-output');"
            " return t.getBoundingClientRect().right - area.getBoundingClientRect().right; }"
        )
        table.scroll_into_view_if_needed()
        shot = session.shot("logprobs-table")
        if overflow > 1:
            session.fail(f"the logprobs table runs {overflow:.0f} px past the cell", str(shot))
        assert not session.widget_errors(), session.widget_errors()
    finally:
        context.close()


STOP_BOUND_S = 5.0
"""Click on Stop to the panel idle (Stop disabled again), in the browser: 0.3 s was measured by
hand with the request queued; bounded generously for a loaded machine (the figures print)."""

# In the page: when the user's click on Stop happened, and when the button went disabled
# (the kernel's answer to it: the panel is idle), both on the page's own clock.
_STOP_TIMER = """btn => {
  const t = {click: null, idle: null};
  window.__tmlabStop = t;
  const clicked = () => { t.click = performance.now(); };
  btn.addEventListener('click', clicked, {capture: true, once: true});
  const obs = new MutationObserver(() => {
    if (btn.disabled && t.click !== null) { t.idle = performance.now(); obs.disconnect(); }
  });
  obs.observe(btn, {attributes: true, attributeFilter: ['disabled']});
}"""


def _click_stop(session: Session, explorer: Locator) -> tuple[float, float]:
    """Click Stop in the browser; (seconds from the click to the panel idle on the page's
    clock, the same seen from here)."""
    stop = explorer.locator("button.tmlab-stop")
    stop.evaluate(_STOP_TIMER)
    t0 = time.monotonic()
    stop.click()
    session.wait(explorer.locator("button.tmlab-stop:disabled"), "the panel to be idle", 60_000)
    outside = time.monotonic() - t0
    timer = session.page.evaluate("window.__tmlabStop")
    if timer["click"] is None or timer["idle"] is None:
        session.fail(f"the click or the idle state was not seen on the page: {timer}")
    return (timer["idle"] - timer["click"]) / 1000, outside


def test_stop_in_the_browser_while_queued_and_while_streaming(
    session: Session, history_file: Path
) -> None:
    """A user clicks Stop in Chromium (a) while the request waits behind others that fill
    every slot of the server, and (b) while it streams. Each time the panel is idle within
    :data:`STOP_BOUND_S` of the click (the figures print); the server drops the queued request;
    the streamed one keeps its partial answer on screen and in the history ('interrupted')."""
    import httpx
    from _e2e import MODEL, post_raw
    from playwright.sync_api import expect

    import tmlab.local

    server = tmlab.local.ensure_server()  # the shared server the notebook's kernel finds
    stats_url = server.url + "/v1/stats"

    def stats() -> dict[str, Any]:
        return dict(httpx.get(stats_url, timeout=30).json())

    def until(check: Callable[[dict[str, Any]], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check(s := stats()):
            if time.monotonic() > deadline:
                session.fail(f"timed out after {timeout:g} s waiting for {what}: {s}")
            time.sleep(0.05)

    session.open_notebook(
        "stop.ipynb",
        [
            "import tmlab\n"
            "ex = tmlab.Explorer(prompt='Write a very long story about the sea.',\n"
            "                    max_tokens=2000, ignore_eos=True)\n"
            "ex"
        ],
    )
    cell = session.run_first_cell()
    explorer = cell.locator(".tmlab-explorer")
    session.wait(explorer, "the Explorer panel to render", CELL_TIMEOUT)
    before = len(_explorer_rows(history_file)) if history_file.exists() else 0
    answer = explorer.locator(".tmlab-answer")

    # -- (a) queued: every slot busy with someone else's long answer -------------------------
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell a very long story."}],
        "max_tokens": 2000,
        "ignore_eos": True,
    }
    blockers = [post_raw(server.url, body) for _ in range(server.parallel)]
    try:
        until(
            lambda s: all(x["state"] == "generating" for x in s["slots"]),
            "the other requests to fill every slot",
            120,
        )
        explorer.locator("button.tmlab-send").click()
        session.wait(explorer.locator("button.tmlab-stop:enabled"), "Stop to be enabled", 30_000)
        until(lambda s: s["queued"] >= 1, "the Explorer's request to wait in the queue", 30)
        session.expect(
            lambda: expect(answer).to_contain_text("waiting for the model"),
            "the panel does not say it is waiting",
        )
        session.shot("01-queued")
        queued_s, queued_outside = _click_stop(session, explorer)
        # dropped by the server while the others still generate: no token for it
        until(lambda s: s["queued"] == 0, "the server to drop the stopped request", 10)
        assert all(x["state"] == "generating" for x in stats()["slots"])
        session.shot("02-queued-stopped")
    finally:
        for sock in blockers:
            sock.close()
    until(lambda s: s["running"] == 0, "the others' slots to be freed", 60)

    # -- (b) streaming ------------------------------------------------------------------------
    explorer.locator("button.tmlab-send").click()
    session.expect(
        lambda: expect(answer).to_contain_text(re.compile(r"\w[\s\S]{60,}▌"), timeout=60_000),
        "the answer did not stream in",
    )
    streaming_s, streaming_outside = _click_stop(session, explorer)
    session.expect(
        lambda: expect(answer).to_contain_text("partial answer"),
        "the stopped answer is not marked partial",
    )
    session.expect(
        lambda: expect(explorer.locator(".tmlab-status-line")).to_contain_text("stopped"),
        "the status line does not say stopped",
    )
    session.shot("03-streaming-stopped")
    until(lambda s: s["running"] == 0, "the server to stop generating", 10)

    print(
        f"\nStop clicked in Chromium -> panel idle: queued {queued_s:.3f} s, streaming "
        f"{streaming_s:.3f} s (page clock); {queued_outside:.3f} s / {streaming_outside:.3f} s "
        f"seen from Playwright; {server.parallel} slots filled for the queued case"
    )
    rows = _explorer_rows(history_file)[before:]
    if len(rows) != 2:
        session.fail(f"expected two explorer requests in the history, got {rows}")
    queued_row, streamed_row = rows
    for row in rows:
        assert row["error"] == "interrupted" and row["complete"] == 0, row
        assert row["base_url"] == server.base_url, row["base_url"]
    assert queued_row["text"] is None, queued_row  # nothing arrived: no answer text
    kept = streamed_row["text"] or ""
    shown = answer.inner_text()
    if len(kept) < 20 or kept.strip() not in shown:
        session.fail(f"the partial answer kept ({kept!r}) is not the one shown: {shown!r}")
    assert queued_s < STOP_BOUND_S and streaming_s < STOP_BOUND_S, (queued_s, streaming_s)
    assert not session.widget_errors(), session.widget_errors()
