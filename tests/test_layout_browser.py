"""The Explorer's layout in a real browser, at a projector's 1280×720 and at 1920×1080.

What a teacher does: run the Explorer in JupyterLab (or open ``tmlab demo``), press Send, and
expect the answer to appear where they look, without scrolling. At each size, in JupyterLab
and in the Voilà app:

- Send and Stop are inside the viewport while the answer streams;
- after Send the answer's bounding box is inside the viewport, and so is the token view
  (Tokens tab);
- nothing runs past the panel (``scrollWidth <= clientWidth`` for the panel and its columns).

Also projector mode (``Explorer(large=True)``: large type, the lesson's controls only) and the
Explorer in JupyterLab's dark theme (text readable: contrast with its background). Screenshots
are kept in ``tests/artifacts/`` (git-ignored) as ``layout-<what>-<W>x<H>.png``.

Needs Debian's ``chromium`` and ``playwright`` (and ``voila`` for the app): skipped without
them, failed instead when ``TMLAB_REQUIRE_BROWSER=1``. The kernels talk to the real embedded
model server (the test run's shared one, see ``conftest.py``).
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from _e2e import dead_url
from _jupyterlab import JupyterLab, write_notebook
from test_voila import CHROMIUM, VoilaApp

import tmlab
from tmlab.cli import main
from tmlab.errors import ParameterError
from tmlab.jupyter.demo import ENV_PROJECTOR, app_notebook
from tmlab.jupyter.layout import LESSON_CONTROLS

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

    from tmlab.client.child import LocalServer


ARTIFACTS = Path(__file__).parent / "artifacts"
SIZES = [(1280, 720), (1920, 1080)]
KERNEL_TIMEOUT = 120_000  # ms: a kernel starting on a busy 2-core machine
CELL_TIMEOUT = 120_000  # ms: `import tmlab` + the Explorer's first render
ANSWER_TIMEOUT = 300_000  # ms: the first request may wait for the model server to start
PAGE_TIMEOUT = 180_000  # ms: Voilà runs the whole notebook before the page shows
STORY = "Tell me a short story about a dragon who learns to read."
MAX_TOKENS = 24  # long enough to be seen streaming, short enough to fit the answer pane

REQUIRE = os.environ.get("TMLAB_REQUIRE_BROWSER", "") not in ("", "0")

# Geometry of one element, in viewport coordinates.
_BOX = """el => { const r = el.getBoundingClientRect();
  return {top: r.top, bottom: r.bottom, left: r.left, right: r.right,
          vw: window.innerWidth, vh: window.innerHeight}; }"""

# Which of the panel's boxes are wider inside than they show (content cut off or scrolled), and
# which control rows are cut off at the bottom (squeezed by the column).
_OVERFLOW = """root => {
  const name = b => b.className.split(' ').filter(c => /^(tmlab|jp|lm|widget)-/.test(c))
    .join('.') + ` "${b.innerText.slice(0, 30)}"`;
  const shown = b => b.offsetParent !== null;
  const boxes = [root, ...root.querySelectorAll(
    '.tmlab-bar, .tmlab-body, .tmlab-left, .tmlab-right, .tmlab-tabs, .tmlab-control, ' +
    '.tmlab-tv, .lm-TabBar-tabLabel, .widget-button, .widget-html-content')];
  const out = root.closest('.jp-OutputArea-output');
  if (out) boxes.push(out);
  const wide = boxes.filter(b => shown(b) && b.scrollWidth > b.clientWidth + 1)
    .map(b => `${name(b)}: scrollWidth ${b.scrollWidth} > clientWidth ${b.clientWidth}`);
  const rows = [...root.querySelectorAll('.tmlab-control, .tmlab-controls')];
  const cut = rows.filter(b => shown(b) && b.scrollHeight > b.clientHeight + 2)
    .map(b => `${name(b)}: scrollHeight ${b.scrollHeight} > clientHeight ${b.clientHeight}`);
  return wide.concat(cut);
}"""

# Colour contrast (WCAG) of an element's text with the first opaque background behind it.
_CONTRAST = """el => {
  const rgb = s => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = c => { const v = c.slice(0, 3).map(x => { x /= 255;
    return x <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]; };
  let bg = null;
  for (let e = el; e; e = e.parentElement) {
    const c = rgb(getComputedStyle(e).backgroundColor);
    if (c.length === 3 || (c.length === 4 && c[3] > 0.5)) { bg = c; break; }
  }
  bg = bg || [255, 255, 255];
  const fg = rgb(getComputedStyle(el).color);
  const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
  return (a + 0.05) / (b + 0.05);
}"""


def _missing(voila: bool = False) -> str | None:
    import importlib.util

    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; .ci/run does)"
    modules = ["playwright", "jupyterlab"] + (["voila"] if voila else [])
    for module in modules:
        if importlib.util.find_spec(module) is None:
            return f"the {module} package is not installed"
    return None


def _require(voila: bool = False) -> None:
    why = _missing(voila)
    if why is None:
        return
    if REQUIRE:
        pytest.fail(f"TMLAB_REQUIRE_BROWSER is set but the layout test cannot run: {why}")
    pytest.skip(why)


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_model() -> str:
    """The test run's shared local model server, started (and loaded) before any page: the
    kernels and ``tmlab demo`` find it (``TMLAB_RUNTIME_DIR``, conftest.py) instead of each
    waiting for a model to load on a busy machine."""
    _require()
    from tmlab.client import local

    return str(local.ensure_server().base_url)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, shared_model: str) -> Iterator[JupyterLab]:
    """One headless JupyterLab for this module (its kernels use the shared local server)."""
    _require()
    base = tmp_path_factory.mktemp("layout-lab")
    root, state = base / "root", base / "state"
    root.mkdir()
    state.mkdir()
    server = JupyterLab(root, state, env={"TMLAB_HISTORY": str(base / "history.sqlite3")})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, through Playwright (``executable_path``: no download)."""
    _require()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def demo_app(tmp_path_factory: pytest.TempPathFactory, shared_model: str) -> Iterator[VoilaApp]:
    """``tmlab demo`` (the Explorer app, Voilà) for this module's app tests."""
    _require(voila=True)
    base = tmp_path_factory.mktemp("layout-demo")
    root, state = base / "root", base / "state"
    root.mkdir()
    state.mkdir()
    command = [
        sys.executable,
        "-c",
        "import sys; from tmlab.cli import main; sys.exit(main(sys.argv[1:]))",
        "demo",
        "--no-browser",
        "--port",
        "{port}",
    ]
    app = VoilaApp(command, root, state, {"TMLAB_HISTORY": str(base / "history.sqlite3")})
    app.start()
    try:
        yield app
    finally:
        app.stop()


class View:
    """One page at one viewport size: screenshots under ``tests/artifacts/``, failures that
    name their screenshot."""

    def __init__(self, page: Page, name: str) -> None:
        self.page = page
        self.name = name

    def shot(self, what: str = "") -> Path:
        """A screenshot of the viewport: what a projector shows."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        w, h = self.page.viewport_size["width"], self.page.viewport_size["height"]  # type: ignore[index]
        path = ARTIFACTS / f"layout-{self.name}{what}-{w}x{h}.png"
        self.page.screenshot(path=str(path))
        return path

    def fail(self, what: str) -> None:
        path = self.shot("-FAILED")
        pytest.fail(f"{what}\nscreenshot: {path}", pytrace=False)

    def wait(self, locator: Locator, what: str, timeout: float) -> None:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            locator.wait_for(state="visible", timeout=timeout)
        except PlaywrightTimeout:
            self.fail(f"timed out after {timeout / 1000:g} s waiting for {what}")

    def box(self, locator: Locator) -> dict[str, float]:
        """The element's box in viewport coordinates (and the viewport's size)."""
        return dict(locator.evaluate(_BOX))

    def in_view(self, locator: Locator, what: str) -> dict[str, float]:
        """Fail unless ``locator``'s whole box is inside the viewport."""
        b = self.box(locator)
        inside = b["top"] >= -0.5 and b["left"] >= -0.5
        inside = inside and b["bottom"] <= b["vh"] + 0.5 and b["right"] <= b["vw"] + 0.5
        if not inside or b["bottom"] - b["top"] < 1:
            self.fail(f"{what} is not inside the {b['vw']:g}×{b['vh']:g} viewport: {b}")
        return b

    def no_overflow(self, explorer: Locator) -> None:
        """Fail if a box of the panel is wider inside than it shows."""
        over = explorer.evaluate(_OVERFLOW)
        if over:
            self.fail(f"content runs past the panel: {over}")


def _page(browser: Browser, size: tuple[int, int]) -> Page:
    context = browser.new_context(viewport={"width": size[0], "height": size[1]})
    page = context.new_page()
    page.set_default_timeout(30_000)
    return page


def _open_lab(view: View, lab: JupyterLab, name: str, cells: list[str]) -> Locator:
    """Open a throwaway notebook, run its first cell; the Explorer's locator."""
    from playwright.sync_api import expect

    write_notebook(lab.root / name, cells)
    page = view.page
    page.goto(lab.url(f"lab/tree/{name}?reset"), timeout=60_000)
    expect(page.locator("#jp-main-statusbar")).to_contain_text(
        re.compile(r"\|\s*Idle"), timeout=KERNEL_TIMEOUT
    )
    page.locator(".jp-Notebook .jp-Cell").first.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Control+Enter")  # run in place: the view stays where it is
    explorer = page.locator(".tmlab-explorer").first
    view.wait(explorer, "the Explorer to render", CELL_TIMEOUT)
    if page.get_by_text("Error displaying widget").count():
        view.fail("the Explorer shows 'Error displaying widget'")
    explorer.scroll_into_view_if_needed()
    explorer.evaluate("e => e.scrollIntoView({block: 'start'})")
    return explorer


def _send_and_check(view: View, explorer: Locator, whole: bool = True) -> dict[str, Any]:
    """Press Send; check Send and Stop while it streams, then the answer and the token view
    (``whole=False``: the answer's first two lines, for projector type under a page title)."""
    send, stop = explorer.locator("button.tmlab-send"), explorer.locator("button.tmlab-stop")
    view.in_view(send, "Send (before sending)")
    send.click()
    view.wait(explorer.locator("button.tmlab-stop:enabled"), "Stop to be enabled", 30_000)
    answer = explorer.locator(".tmlab-answer")
    view.wait(
        answer.get_by_text(re.compile("▌|waiting for")), "the answer to start", ANSWER_TIMEOUT
    )
    seen: dict[str, Any] = {"send": view.in_view(send, "Send while streaming")}
    seen["stop"] = view.in_view(stop, "Stop while streaming")
    view.shot("-streaming")
    view.wait(explorer.locator("button.tmlab-pin:enabled"), "the answer to finish", ANSWER_TIMEOUT)
    error = explorer.locator(".tmlab-error")
    if error.is_visible() and error.inner_text().strip():
        view.fail(f"the Explorer shows an error: {error.inner_text()!r}")
    text = answer.inner_text()
    if not re.search(r"\w", text):
        view.fail(f"the Answer tab is empty: {text!r}")
    if whole:
        seen["answer"] = view.in_view(answer, "the answer after Send")
    else:
        seen["answer"] = b = view.box(answer)
        if not (b["top"] >= 0 and b["top"] + 80 <= b["vh"]):
            view.fail(f"the answer's first lines are not in the viewport: {b}")
    view.no_overflow(explorer)
    view.shot()
    explorer.locator(".tmlab-tabs .lm-TabBar-tab", has_text="Tokens").click()
    token = explorer.locator(".tmlab-tokenview .tmlab-tv-tok").first
    view.wait(token, "the token view", 15_000)
    seen["token"] = view.in_view(token, "the token view's first token")
    view.no_overflow(explorer)
    view.shot("-tokens")
    return seen


def _explorer_cell(**extra: Any) -> str:
    args = "".join(f", {k}={v!r}" for k, v in extra.items())
    return (
        "import tmlab\n"
        f"ex = tmlab.Explorer(prompt={STORY!r}, max_tokens={MAX_TOKENS}, logprobs=True, "
        f"top_logprobs=3{args})\nex"
    )


# -- tests ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_explorer_in_jupyterlab_answer_in_view(
    browser: Browser, lab: JupyterLab, size: tuple[int, int]
) -> None:
    """JupyterLab: Send, Stop, the answer and the token view in view; nothing past the panel."""
    page = _page(browser, size)
    try:
        view = View(page, "explorer")
        explorer = _open_lab(view, lab, f"layout-{size[0]}.ipynb", [_explorer_cell()])
        width = explorer.evaluate("e => e.clientWidth")
        side = (
            explorer.locator(".tmlab-left").evaluate(_BOX)["right"]
            <= view.box(explorer.locator(".tmlab-right"))["left"]
        )
        seen = _send_and_check(view, explorer)
    finally:
        page.context.close()
    print(f"JupyterLab {size}: panel {width} px, side by side {side}, answer at {seen['answer']}")


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_demo_app_answer_in_view(
    browser: Browser, demo_app: VoilaApp, size: tuple[int, int]
) -> None:
    """``tmlab demo``: the same checks on the Voilà page (title and lesson picker above)."""
    page = _page(browser, size)
    try:
        view = View(page, "app")
        page.goto(demo_app.url("/"), wait_until="commit", timeout=60_000)
        explorer = page.locator(".tmlab-explorer")
        view.wait(explorer, "the Explorer on the Voilà page", PAGE_TIMEOUT)
        prompt = explorer.locator(".tmlab-prompt textarea")
        prompt.fill(STORY)
        prompt.press("Tab")  # the kernel gets the value on blur
        seen = _send_and_check(view, explorer)
    finally:
        page.context.close()
    print(f"Voilà app {size}: answer at {seen['answer']}, token at {seen['token']}")


@pytest.mark.slow
@pytest.mark.browser
def test_projector_mode_large_type_and_the_lessons_controls(
    browser: Browser, lab: JupyterLab
) -> None:
    """``Explorer(large=True)`` at 1280×720: large answer text, only the lesson's controls."""
    page = _page(browser, (1280, 720))
    try:
        view = View(page, "projector")
        cell = _explorer_cell(large=True, temperature=0.7)
        explorer = _open_lab(view, lab, "layout-projector.ipynb", [cell])
        # on a projector, the file browser is closed: the panel gets the whole width
        page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").click()
        page.wait_for_timeout(500)
        shown = [
            c
            for c in ("temperature", "top_k", "top_p", "seed", "max_tokens", "min_p")
            if explorer.locator(f".tmlab-control-{c}").is_visible()
        ]
        # the parameters given that have a control: temperature, max_tokens, logprobs, …
        if shown != ["temperature", "max_tokens"]:
            view.fail(f"projector mode shows the controls {shown}")
        if explorer.locator(".tmlab-advanced").is_visible():
            view.fail("projector mode shows the advanced parameters")
        _send_and_check(view, explorer)
        explorer.locator(".tmlab-tabs .lm-TabBar-tab", has_text="Answer").click()
        size = explorer.locator(".tmlab-answer").evaluate(
            "e => parseFloat(getComputedStyle(e).fontSize)"
        )
        tok = explorer.locator(".tmlab-tv").evaluate(
            "e => parseFloat(getComputedStyle(e).fontSize)"
        )
    finally:
        page.context.close()
    assert size >= 24 and tok >= 24, f"projector type: answer {size}px, tokens {tok}px"


def _check_contrast(view: View, explorer: Locator, theme: str) -> None:
    """Fail if the Explorer's text has too little contrast (WCAG 4.5) with its background."""
    explorer.locator(".tmlab-tabs .lm-TabBar-tab", has_text="Answer").click()
    checks = {
        "answer text": explorer.locator(".tmlab-answer div").first,
        "prompt": explorer.locator(".tmlab-prompt textarea"),
        "slider label": explorer.locator(".tmlab-control-temperature .widget-label"),
        "code line": explorer.locator(".tmlab-call pre"),
        "status line": explorer.locator(".tmlab-status-line"),
        "tab title": explorer.locator(".tmlab-tabs .lm-TabBar-tab").first,
    }
    low = {}
    for what, loc in checks.items():
        ratio = float(loc.first.evaluate(_CONTRAST))
        if ratio < 4.5:
            low[what] = round(ratio, 2)
    view.shot("-answer")
    if low:
        view.fail(f"{theme}: text with too little contrast: {low}")


def _set_theme(lab: JupyterLab, theme: str) -> None:
    """JupyterLab's theme setting, through its settings API (as Settings → Theme saves it)."""
    body = json.dumps({"raw": json.dumps({"theme": theme})}).encode()
    req = urllib.request.Request(
        lab.url("lab/api/settings/@jupyterlab/apputils-extension:themes"),
        data=body,
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status in (200, 204), r.status


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.parametrize("theme", ["JupyterLab Light", "JupyterLab Dark"])
def test_explorer_reads_in_light_and_dark_theme(
    browser: Browser, lab: JupyterLab, theme: str
) -> None:
    """The Explorer's text (answer, prompt, a label, code line, status, tabs) keeps a readable
    contrast (WCAG ≥ 4.5) with the theme's background, after an answer."""
    _set_theme(lab, theme)
    page = _page(browser, (1280, 720))
    name = "dark" if "Dark" in theme else "light"
    try:
        view = View(page, f"explorer-{name}")
        explorer = _open_lab(view, lab, f"layout-{name}.ipynb", [_explorer_cell(temperature=0)])
        dark = page.locator("body").evaluate("b => b.dataset.jpThemeLight")
        if (dark == "false") != (name == "dark"):
            view.fail(f"the theme {theme!r} was not applied (data-jp-theme-light={dark})")
        _send_and_check(view, explorer)
        _check_contrast(view, explorer, theme)
    finally:
        page.context.close()
        if name == "dark":
            _set_theme(lab, "JupyterLab Light")


# -- projector mode and the columns, without a browser ---------------------------------------


def _visible(ex: Any) -> list[str]:
    return [n for n, c in ex.controls.items() if c.layout.display != "none"]


def test_projector_mode_shows_the_lessons_controls(make: Any) -> None:
    """``large=True``: the class for the large type; only the controls given (or the lesson
    defaults); ``show_controls`` switches them; a hidden set control is still sent."""
    client = tmlab.Client(base_url=dead_url(), model="m", max_retries=0)
    plain = make(client)
    assert "tmlab-large" not in plain._dom_classes and _visible(plain) == list(plain.controls)
    bar, body = plain.children[1], plain.children[2]
    assert "tmlab-bar" in bar._dom_classes and plain.send_button in bar.children
    assert plain.stop_button in bar.children
    left, right = body.children
    assert plain.prompt in left.children and plain.tabs in right.children

    big = make(client, large=True, temperature=0.3, max_tokens=8)
    assert "tmlab-large" in big._dom_classes
    assert _visible(big) == ["temperature", "max_tokens"]
    assert make(client, large=True).show_controls(None) == list(plain.controls)
    lesson = make(client, large=True)
    assert _visible(lesson) == [n for n in lesson.controls if n in LESSON_CONTROLS]
    assert lesson.show_controls(["frequency_penalty", "temperature"]) == [
        "temperature",
        "frequency_penalty",
    ]
    lesson.controls["top_k"].value = 5  # hidden, set: still sent
    assert lesson.params()["top_k"] == 5
    with pytest.raises(ParameterError, match=r"show: 'tempo' has no control"):
        lesson.show_controls(["tempo"])


def test_demo_projector_flag_reaches_the_kernels(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``tmlab demo --projector`` sets TMLAB_PROJECTOR=1 for the pages' kernels, says so, and
    the packaged app reads it (``Explorer(large=PROJECTOR)``)."""
    import tmlab.jupyter.demo as demo

    monkeypatch.delenv(ENV_PROJECTOR, raising=False)
    seen: list[list[str]] = []
    monkeypatch.setattr(demo, "_model_server", lambda base_url: None)

    def run_voila(argv: list[str]) -> int:
        seen.append(argv)
        return 0

    monkeypatch.setattr(demo, "_run_voila", run_voila)
    assert main(["demo", "--no-browser", "--projector", "--port", "8899"]) == 0
    assert os.environ.get(ENV_PROJECTOR) == "1" and seen
    assert "projector mode" in capsys.readouterr().out
    monkeypatch.delenv(ENV_PROJECTOR)
    assert main(["demo", "--no-browser", "--port", "8899"]) == 0
    assert ENV_PROJECTOR not in os.environ
    source = app_notebook().read_text(encoding="utf-8")
    assert f'os.environ.get(\\"{ENV_PROJECTOR}\\") == \\"1\\"' in source
    assert "large=PROJECTOR" in source


# -- a lesson that shows its effect (no browser) ------------------------------------------------


def _presets() -> list[tuple[Any, ...]]:
    """The app's PRESETS, read from its notebook as written (a literal list)."""
    nb = json.loads(app_notebook().read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        for node in ast.parse("".join(cell["source"])).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "PRESETS":
                return [tuple(p) for p in ast.literal_eval(node.value)]
    raise AssertionError("the app notebook defines no PRESETS")


@pytest.mark.slow
def test_the_one_word_lesson_gives_one_word_the_same_at_temperature_0(
    local_server: LocalServer,
) -> None:
    """The app's "One word" preset, with its own settings, on the real local model: at
    temperature 0 the same single word every time; at temperature 1 other words appear."""
    presets = {p[0]: p for p in _presets()}
    _label, prompt, tip, settings, shown = presets["One word"]
    assert "the same word every time" in tip and settings["temperature"] == 0, (tip, settings)
    assert "temperature" in shown
    with tmlab.Client(base_url=local_server.base_url) as client:
        cold = [client.chat(prompt, **settings).text.strip() for _ in range(3)]
        hot = [
            client.chat(prompt, **{**settings, "temperature": 1.0}, seed=s).text.strip()
            for s in range(1, 7)
        ]
    assert len(set(cold)) == 1, f"temperature 0 gave different answers: {cold}"
    assert re.fullmatch(r"\W*\w+\W*", cold[0]), f"not one word at temperature 0: {cold[0]!r}"
    assert set(hot) - set(cold), f"temperature 1 gave only {cold[0]!r}: {hot}"
    print(f"One word: {cold[0]!r} ×3 at T=0; at T=1: {hot}")


@pytest.mark.slow
@pytest.mark.browser
def test_demo_app_in_dark_theme(browser: Browser, demo_app: VoilaApp) -> None:
    """``tmlab demo`` opened with Voilà's dark theme (``?theme=dark``) at 1280×720: the
    answer in view, nothing past the panel, the text readable."""
    page = _page(browser, (1280, 720))
    try:
        view = View(page, "app-dark")
        page.goto(demo_app.url("/?theme=dark"), wait_until="commit", timeout=60_000)
        explorer = page.locator(".tmlab-explorer")
        view.wait(explorer, "the Explorer on the Voilà page", PAGE_TIMEOUT)
        background = page.locator("body").evaluate("b => getComputedStyle(b).backgroundColor")
        if background in ("rgb(255, 255, 255)", "rgba(0, 0, 0, 0)"):
            view.fail(f"the page is not dark: body background {background}")
        _send_and_check(view, explorer)
        _check_contrast(view, explorer, "Voilà dark")

    finally:
        page.context.close()


@pytest.mark.slow
@pytest.mark.browser
def test_demo_projector_shows_each_lessons_controls_large(browser: Browser, tmp_path: Path) -> None:
    """``tmlab demo --projector`` at 1280×720: large type; the "One word" lesson shows only
    temperature and seed; picking "Counting" shows temperature and frequency_penalty."""
    _require(voila=True)
    from playwright.sync_api import expect

    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir()
    state.mkdir()
    command = [
        sys.executable,
        "-c",
        "import sys; from tmlab.cli import main; sys.exit(main(sys.argv[1:]))",
        "demo",
        "--no-browser",
        "--projector",
        "--port",
        "{port}",
    ]
    names = ("temperature", "top_k", "top_p", "seed", "max_tokens", "frequency_penalty")
    with VoilaApp(command, root, state, {"TMLAB_HISTORY": str(tmp_path / "h.sqlite3")}) as app:
        page = _page(browser, (1280, 720))
        try:
            view = View(page, "app-projector")
            page.goto(app.url("/"), wait_until="commit", timeout=60_000)
            explorer = page.locator(".tmlab-explorer.tmlab-large")
            view.wait(explorer, "the Explorer in projector mode", PAGE_TIMEOUT)

            def shown() -> list[str]:
                return [n for n in names if explorer.locator(f".tmlab-control-{n}").is_visible()]

            if shown() != ["temperature", "seed"]:
                view.fail(f"the 'One word' lesson shows the controls {shown()}")
            _send_and_check(view, explorer, whole=False)
            explorer.locator(".tmlab-tabs .lm-TabBar-tab", has_text="Answer").click()
            size = explorer.locator(".tmlab-answer").evaluate(
                "e => parseFloat(getComputedStyle(e).fontSize)"
            )
            page.locator(".tmlab-preset select").select_option(label="Counting")
            expect(explorer.locator(".tmlab-control-frequency_penalty")).to_be_visible(
                timeout=15_000
            )
            if shown() != ["temperature", "frequency_penalty"]:
                view.fail(f"the 'Counting' lesson shows the controls {shown()}")
            view.shot("-counting")
        finally:
            page.context.close()
    assert size >= 24, f"projector answer text is {size}px"
