"""The repository's own text files: no merge left half done.

A conflict resolved in one file and forgotten in another still builds and
passes every other test when the markers sit in prose (README, docs); users
then read both sides of the conflict.
"""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = (".py", ".md", ".toml", ".sh", ".cfg", ".txt", ".yml", ".yaml")
SKIP = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache"}
MARKER = re.compile(r"^(<{7}( |$)|={7}$|>{7}( |$))")


def _text_files() -> list[str]:
    out = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP and not d.endswith(".egg-info")]
        out += [os.path.join(folder, f) for f in files if f.endswith(TEXT) or f == "run"]
    return out


def conflict_markers(path: str) -> list[str]:
    """``path:line: text`` for each line of ``path`` that is a merge-conflict marker."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return [f"{os.path.relpath(path, ROOT)}:{i}: {line.rstrip()}"
                for i, line in enumerate(f, 1) if MARKER.match(line)]


def test_no_merge_conflict_markers():
    files = _text_files()
    assert any(p.endswith("README.md") for p in files) and any(p.endswith("test_repository_files.py") for p in files)
    found = [hit for path in files for hit in conflict_markers(path)]
    assert not found, "merge-conflict markers left in:\n" + "\n".join(found)


def test_markers_are_recognised(tmp_path):
    sample = tmp_path / "notes.md"
    sample.write_text("text\n<<<<<<< HEAD\nours\n=======\ntheirs\n>>>>>>> branch\n======= not a marker\n")
    assert [hit.rsplit(": ", 1)[1] for hit in conflict_markers(str(sample))] == [
        "<<<<<<< HEAD", "=======", ">>>>>>> branch"]
