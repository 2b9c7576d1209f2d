"""The layers of the code (pyproject's [tool.importlinter] contracts), checked with
import-linter: the engine's subpackages import only downwards (jobs > train, merge > lora,
models > project > formats), the engine never imports the app, the app's own layers import
only downwards (app > screens > widgets > core: a widget never reaches for a screen, the keymap
is handed the screens instead of importing them), its screens never import the CLI, and the app
imports no torch-side library itself. The runtime checks that the app and
`check` start without torch stay in test_import_hygiene.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

LINT = Path(sys.executable).parent / "lint-imports"


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT)], cwd=root, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install -e '.[dev]')")
def test_the_layer_contracts_hold():
    result = lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install -e '.[dev]')")
@pytest.mark.parametrize("module, violation, contract", [
    ("engine/project/params.py", "from engine.jobs.queue import Queue", "engine layers"),
    ("copylora_tui/screens/queue.py", "from copylora_tui.cli.queue_view import print_queue", "never import the CLI"),
    ("copylora_tui/widgets/log_tail.py", "from copylora_tui.screens.monitor import MonitorScreen", "the app's layers"),
    ("copylora_tui/core/keymap.py", "from copylora_tui.app import CopyloraApp", "the app's layers"),
])
def test_a_deliberate_violation_breaks_a_contract(tmp_path, module, violation, contract):
    for part in ("engine", "copylora_tui"):
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{violation}  # a deliberate violation\n")
    result = lint(tmp_path)
    assert result.returncode != 0 and "1 broken" in result.stdout, result.stdout + result.stderr
    broken = result.stdout.split("Broken contracts", 1)[1]
    assert contract in broken and violation.split()[1] in broken  # names the contract and the import


RUFF = Path(sys.executable).parent / "ruff"


@pytest.mark.skipif(not RUFF.exists(), reason="ruff is not installed (pip install -e '.[dev]')")
def test_ruff_is_clean():
    """pyproject's [tool.ruff]: line length, import order, pyflakes."""
    result = subprocess.run([str(RUFF), "check", "."], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


MYPY = Path(sys.executable).parent / "mypy"


@pytest.mark.skipif(not MYPY.exists(), reason="mypy is not installed (pip install -e '.[dev]')")
def test_the_engine_type_checks():
    """pyproject's [tool.mypy]: the engine clean at mypy's defaults (about a minute of CPU cold, seconds with
    its cache, .mypy_cache/)."""
    result = subprocess.run([str(MYPY)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "Success" in result.stdout, result.stdout + result.stderr
