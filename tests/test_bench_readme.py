"""``make bench`` writes the README's Performance table itself, between two markers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from _common import README_END, README_START, Row, commit, table, write_readme  # noqa: E402


def test_write_readme_replaces_only_what_is_between_the_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold table\n{README_END}\noutro\n")
    rows = [
        Row("a ratio", 1.02, "<=", 1.05, "from x"),
        Row("a rate", 4.0, "in", (5.0, 15.0), "from y"),
        Row("a figure", 0.5, "", None, "from z"),
    ]
    write_readme(str(readme), "Machine: m\n\n" + table(rows))
    text = readme.read_text()
    assert text.startswith(f"intro\n{README_START}\nMachine: m\n")
    assert text.endswith(f"{README_END}\noutro\n") and "old table" not in text
    # a range target prints as such and can miss from below
    lines = {
        line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| a ")
    }
    assert "5–15" in lines["a rate"] and "MISS" in lines["a rate"]
    assert "pass" in lines["a ratio"] and "info" in lines["a figure"]
    write_readme(str(readme), "second run")  # idempotent markers
    assert readme.read_text() == f"intro\n{README_START}\nsecond run\n{README_END}\noutro\n"


@pytest.mark.parametrize(
    "text", ["no markers", f"{README_END}\n{README_START}", f"{README_START}{README_START}"]
)
def test_write_readme_refuses_a_readme_without_one_pair_of_markers(
    tmp_path: Path, text: str
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(text)
    with pytest.raises(ValueError):
        write_readme(str(readme), "table")
    assert readme.read_text() == text


def test_the_readme_has_one_bench_block() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.count(README_START) == 1 and text.count(README_END) == 1
    assert text.index(README_START) < text.index(README_END)


def test_the_table_names_the_commit_it_measured() -> None:
    """The README's tables say which commit they were measured on (and whether the working
    tree differed from it), so a stale table can be told from a fresh one."""
    import subprocess

    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    said = commit()
    assert said in (head, f"{head} + uncommitted changes"), said
