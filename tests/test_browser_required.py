"""CI asks for the browser test (``TMLAB_REQUIRE_BROWSER=1`` in ``.ci/run``): a machine without
Chromium then fails it, where a developer's machine without Chromium skips it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent


def _run_browser_tests(tmp_path: Path, require: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["TMLAB_CHROMIUM"] = str(tmp_path / "no-such-chromium")  # as if it were not installed
    env.pop("TMLAB_REQUIRE_BROWSER", None)
    if require is not None:
        env["TMLAB_REQUIRE_BROWSER"] = require
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(TESTS.parent),
            str(TESTS / "test_browser.py"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=TESTS.parent,
        timeout=300,
    )


def test_missing_chromium_fails_when_the_browser_test_is_required(tmp_path: Path) -> None:
    out = _run_browser_tests(tmp_path, "1")
    assert out.returncode == 1, out.stdout[-2000:]
    assert "TMLAB_REQUIRE_BROWSER is set but the browser test cannot run" in out.stdout
    assert "no-such-chromium" in out.stdout
    assert " skipped" not in out.stdout.splitlines()[-1]


def test_missing_chromium_skips_with_the_reason_otherwise(tmp_path: Path) -> None:
    for require in (None, "0"):
        out = _run_browser_tests(tmp_path, require)
        assert out.returncode == 0, out.stdout[-2000:]
        last = out.stdout.strip().splitlines()[-1]
        assert "skipped" in last and "failed" not in last and "error" not in last, last


def test_ci_requires_the_browser_test() -> None:
    script = (TESTS.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "export TMLAB_REQUIRE_BROWSER=1" in script
    assert script.index("export TMLAB_REQUIRE_BROWSER=1") < script.index("make test")
