"""The documentation works as written: every ```python block of README.md and docs/ runs (from a
directory outside the checkout, as a user's script would), and the docs site builds with
`mkdocs build --strict`, so a broken link or a page missing from the navigation fails."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks():
    for page in PAGES:
        for number, match in enumerate(FENCE.finditer(page.read_text(encoding="utf-8")), 1):
            yield pytest.param(match.group(1), id=f"{page.relative_to(ROOT)}#{number}")


def test_every_page_has_been_found():
    names = {p.name for p in PAGES}
    assert {"README.md", "index.md", "python-api.md", "corpus.md", "fidelity.md"} <= names
    assert sum(1 for _ in python_blocks()) >= 5


@pytest.mark.parametrize("code", python_blocks())
def test_python_block_runs(code, tmp_path):
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.stdout.strip(), "every example prints what it computed"


def test_mkdocs_build_strict(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "site" / "fidelity" / "index.html").is_file()
