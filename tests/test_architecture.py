"""The architecture's contracts (pyproject.toml, ``[tool.importlinter]``) hold, and they would catch
an import that goes against them: checked on a scratch copy of the package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def _lint(tree: Path) -> subprocess.CompletedProcess:
    # the scratch copy comes first on the path, so the linter reads its files, not the install
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", LINT, "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    pytest.importorskip("importlinter")
    shutil.copytree(ROOT / "raypoison", tmp_path / "raypoison",
                    ignore=shutil.ignore_patterns("__pycache__", "assets"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contracts_hold_and_a_cyclic_import_breaks_them(scratch: Path):
    kept = _lint(scratch)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "3 kept, 0 broken" in kept.stdout

    # the schema engine, a leaf, reaching up into the trial: the cycle this layout removed
    leaf = scratch / "raypoison" / "core" / "schema.py"
    leaf.write_text(leaf.read_text() + "\n\ndef _late():\n    from raypoison.trial import run\n"
                    "    return run\n")
    broken = _lint(scratch)
    assert broken.returncode != 0
    assert "raypoison.core.schema -> raypoison.trial.run" in broken.stdout


def test_analysis_imports_no_torch(scratch: Path):
    tables = scratch / "raypoison" / "analysis" / "tables.py"
    tables.write_text(tables.read_text() + "\n\nimport torch  # noqa: E402,F401\n")
    broken = _lint(scratch)
    assert broken.returncode != 0
    assert "raypoison.analysis.tables -> torch" in broken.stdout
