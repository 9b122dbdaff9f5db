"""The Explorer as an app: ``tmlab demo`` serves explorer-app.ipynb with Voilà, in a real browser.

What a teacher and a class do: start ``tmlab demo``, open the page (no code on it), pick a
lesson prompt from the dropdown, click Send, read the answer. Then the history row the page's
kernel recorded (``TMLAB_HISTORY``) must say ``source = 'explorer'`` and name the one model
server ``tmlab demo`` started for all pages. A second test serves the same notebook with plain
``voila`` (each page's kernel then starts its own model): the start-up line on the page must
turn from "starting …" to "ready" (Voilà never applies later updates to a rendered output).

Needs Debian's ``chromium`` (``/usr/bin/chromium`` or ``TMLAB_CHROMIUM``), ``playwright`` and
``voila`` (the ``demo`` extra); skipped without them, failed instead when
``TMLAB_REQUIRE_BROWSER=1``. Screenshots go to the test's tmp folder and are copied to
``/tmp/tmlab-screens/`` (``TMLAB_SCREENS``), where a failure message names them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from _jupyterlab import JupyterLab, free_port

from tmlab.cli import main
from tmlab.jupyter.demo import APP_NOTEBOOK, app_notebook

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

CHROMIUM = os.environ.get("TMLAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SCREENS = Path(os.environ.get("TMLAB_SCREENS") or "/tmp/tmlab-screens")
REPO_NOTEBOOK = Path(__file__).parent.parent / "notebooks" / APP_NOTEBOOK

# Generous: two cores shared with other test runs; the page executes the notebook in a new
# kernel before the widgets appear, and the first request may wait for the model.
START_TIMEOUT = 180.0  # s: tmlab demo starts the model server, then Voilà listens
PAGE_TIMEOUT = 180_000  # ms: kernel start + `import tmlab` + the Explorer's first render
ANSWER_TIMEOUT = 180_000  # ms
PRESET = "A fact"
PRESET_PROMPT = "What is the capital of France?"


def _cells(path: Path) -> list[tuple[str, str]]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]


# -- without a browser ------------------------------------------------------------------------


def test_the_packaged_app_is_the_repository_notebook() -> None:
    """``tmlab demo`` serves the packaged notebook; nbval and JupyterLab users open
    notebooks/, where it is a link to that one file (one copy, nothing to keep equal)."""
    packaged = app_notebook()
    assert packaged.is_file(), f"the app notebook is not in the package: {packaged}"
    assert REPO_NOTEBOOK.is_symlink(), f"{REPO_NOTEBOOK} should link to {packaged}"
    assert REPO_NOTEBOOK.resolve() == packaged.resolve()
    assert _cells(packaged)  # and it is a notebook


def test_demo_refuses_what_cannot_be_served(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each bad option: exit status 2 and one line naming it, before anything is started."""

    def refused(*argv: str) -> str:
        assert main(["demo", "--no-browser", *argv]) == 2
        out, err = capsys.readouterr()
        assert not out, out
        return err

    assert "NOTEBOOK='nope.ipynb': no such file" in refused("nope.ipynb")
    (tmp_path / "notes.txt").write_text("x")
    assert "is not a notebook" in refused(str(tmp_path / "notes.txt"))
    assert "--port=70000 is out of range 1..65535" in refused("--port", "70000")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = refused("--port", str(port))
        assert f"--port={port}" in err and "choose another with --port" in err, err
    assert "--base-url: base_url='ftp://x' is not an http(s) URL" in refused(
        "--base-url", "ftp://x"
    )
    monkeypatch.setitem(sys.modules, "voila.app", None)  # as if the extra were not installed
    assert "pip install 'tmlab[demo]'" in refused("--port", str(free_port()))


# -- in a browser -----------------------------------------------------------------------------


def _require_browser() -> None:
    missing = None
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        missing = f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; .ci/run does)"
    elif importlib.util.find_spec("playwright") is None:
        missing = "the playwright package is not installed"
    elif importlib.util.find_spec("voila") is None:
        missing = "voila is not installed (pip install 'tmlab[demo]')"
    if missing is not None:
        if os.environ.get("TMLAB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"TMLAB_REQUIRE_BROWSER=1 but {missing}", pytrace=False)
        pytest.skip(missing)


class VoilaApp(JupyterLab):
    """A Voilà server run by a test (``tmlab demo`` or plain ``voila``), stopped by pid.

    Takes from :class:`JupyterLab` its temporary HOME/Jupyter folders, the environment
    without client settings, its log and its stop (SIGTERM, then what is left, by pid).
    """

    def __init__(self, command: list[str], root: Path, state: Path, env: dict[str, str]) -> None:
        super().__init__(root, state, env, start_timeout=START_TIMEOUT)
        self.command = command
        self.log_path = state / "voila.log"

    def start(self) -> None:
        """Start it; return once its port accepts connections (RuntimeError with its log)."""
        self.port = free_port()
        cmd = [arg.replace("{port}", str(self.port)) for arg in self.command]
        self._launch(cmd, f"{cmd[:4]} (port {self.port})", self._port_open)

    def _port_open(self) -> bool:
        try:  # connect only: a GET of the page would start a kernel
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, through Playwright (no download: ``executable_path``)."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page in its own context."""
    context = browser.new_context(viewport={"width": 1400, "height": 1500})
    p = context.new_page()
    p.set_default_timeout(30_000)
    try:
        yield p
    finally:
        context.close()


def _serve(tmp_path: Path, command: list[str], history: Path) -> VoilaApp:
    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir()
    state.mkdir()
    return VoilaApp(command, root, state, {"TMLAB_HISTORY": str(history)})


def _shot(page: Page, tmp_path: Path, name: str) -> Path:
    """A full-page screenshot in the test's tmp folder, copied to SCREENS for people."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    SCREENS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENS / path.name)
    return SCREENS / path.name


def _wait(page: Page, app: VoilaApp, locator: Locator, what: str, timeout: float) -> None:
    """Wait for ``locator`` to be visible; on timeout fail with a screenshot and the log."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        locator.wait_for(state="visible", timeout=timeout)
    except PlaywrightTimeout:
        shot = _shot(page, app.state, "test_voila-failure")
        pytest.fail(
            f"timed out after {timeout / 1000:g} s waiting for {what}\nscreenshot: {shot}\n"
            f"page text: {page.locator('body').inner_text()[-2000:]}\nlog:\n{app.log()}",
            pytrace=False,
        )


def _explorer_rows(path: Path) -> list[dict[str, Any]]:
    assert path.exists(), f"the page's kernel wrote no history at {path}"
    with closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM requests ORDER BY id").fetchall()]


@pytest.mark.slow
@pytest.mark.browser
def test_the_demo_app_answers_a_lesson_prompt_in_the_browser(page: Page, tmp_path: Path) -> None:
    """``tmlab demo``: the Explorer full-page, no code; a preset, Send, an answer, a history row."""
    from playwright.sync_api import expect

    history = tmp_path / "history.sqlite3"
    command = [
        sys.executable,
        "-c",
        "import sys; from tmlab.cli import main; sys.exit(main(sys.argv[1:]))",
        "demo",
        "--no-browser",
        "--port",
        "{port}",
    ]
    with _serve(tmp_path, command, history) as app:
        shared = re.search(r"shares the local model server at (\S+)", app.log())
        assert shared, f"tmlab demo started no shared model server:\n{app.log()}"
        page.goto(app.url("/"), wait_until="commit", timeout=60_000)
        explorer = page.locator(".tmlab-explorer")
        _wait(page, app, explorer, "the Explorer on the Voilà page", PAGE_TIMEOUT)
        body = page.locator("body")
        expect(body).to_contain_text("How a language model picks its words")  # the Markdown
        text = body.inner_text()
        assert "import tmlab" not in text and "PRESETS" not in text, "code is shown on the page"
        assert "There was an error when executing cell" not in text, text[-2000:]
        assert not page.get_by_text("Error displaying widget").count()

        # a lesson prompt from the dropdown fills the Explorer's prompt (browser -> kernel ->
        # browser) and shows its tip
        page.locator(".tmlab-preset select").select_option(label=PRESET)
        expect(explorer.locator(".tmlab-prompt textarea")).to_have_value(
            PRESET_PROMPT, timeout=15_000
        )
        expect(page.locator(".tmlab-preset-tip")).to_contain_text("confident", timeout=15_000)

        explorer.locator("button.tmlab-send").click()
        _wait(page, app, explorer.locator("button.tmlab-pin:enabled"), "the answer", ANSWER_TIMEOUT)
        error = explorer.locator(".tmlab-error")
        assert not (error.is_visible() and error.inner_text().strip()), error.inner_text()
        answer = explorer.locator(".tmlab-answer").inner_text()
        assert re.search(r"\w", answer), f"the Answer tab is empty: {answer!r}"
        assert "starting …" not in body.inner_text(), "a start-up line stayed at 'starting …'"
        shot = _shot(page, tmp_path, "test_voila-demo-answer")

        rows = _explorer_rows(history)
        assert [r["source"] for r in rows] == ["explorer"], rows
        row = rows[0]
        assert row["complete"] == 1 and row["text"].strip() in answer, (row, answer)
        assert PRESET_PROMPT in row["messages"], row["messages"]
        # every page talks to the one server tmlab demo started (not a model of its own)
        assert row["base_url"] == shared.group(1), (row["base_url"], shared.group(1))
    print(f"tmlab demo in the browser: answer {answer.splitlines()[0]!r}; screenshot {shot}")


@pytest.mark.slow
@pytest.mark.browser
def test_the_start_up_line_turns_ready_under_plain_voila(page: Page, tmp_path: Path) -> None:
    """Plain ``voila``: the page's kernel starts the model; its line must not stay 'starting'."""
    from playwright.sync_api import expect

    command = [
        sys.executable,
        "-m",
        "voila",
        "--no-browser",
        "--Voila.ip=127.0.0.1",
        "--Voila.port={port}",
        "--Voila.port_retries=0",
        str(app_notebook()),
    ]
    with _serve(tmp_path, command, tmp_path / "history.sqlite3") as app:
        page.goto(app.url("/"), wait_until="commit", timeout=60_000)
        _wait(page, app, page.locator(".tmlab-explorer"), "the Explorer", PAGE_TIMEOUT)
        # The model list comes from the server this page's kernel started: once the dropdown
        # shows the model, the server is ready, and so must the start-up line say.
        expect(page.locator(".tmlab-model select")).to_have_value(
            re.compile("SmolLM2"), timeout=PAGE_TIMEOUT
        )
        line = page.get_by_text(re.compile(r"^tmlab: using the local .* model"))
        # Shown when the kernel printed it while Voilà was still executing the notebook (the
        # model list is fetched in a thread, so normally): then it must turn to "ready".
        if line.count():
            expect(line.first).to_contain_text(re.compile(r"— ready in \d"), timeout=30_000)
            shown = line.first.inner_text()
        else:
            shown = "(not shown: printed after the page was rendered)"
        # a line rendered after the check above must not stay "starting" either
        expect(page.locator("body")).not_to_contain_text("starting …", timeout=30_000)
        shot = _shot(page, tmp_path, "test_voila-startup-ready")
    print(f"plain voila: start-up line {shown!r}; screenshot {shot}")
