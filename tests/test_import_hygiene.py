"""The app and the CLI start without torch; the engine never imports the TUI."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.helpers import REPO

HEAVY = ("torch", "diffusers", "transformers", "bitsandbytes", "safetensors.torch")


def modules_after(code: str) -> set[str]:
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    import json

    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_help_and_app_import_no_torch():
    loaded = modules_after(
        "import copylora_tui, copylora_tui.app\n"
        "from copylora_tui.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
    )
    assert not [m for m in HEAVY if m in loaded]


def test_check_command_imports_no_torch():
    loaded = modules_after(
        "from copylora_tui.cli.main import main\n"
        "main(['check', 'projects/example-monochrome'])\n"
    )
    assert not [m for m in HEAVY if m in loaded]


def test_engine_never_imports_the_tui():
    offenders = []
    for path in (REPO / "engine").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "copylora_tui"]
    assert offenders == []


def test_tui_has_no_module_level_torch_import():
    offenders = []
    for path in (REPO / "copylora_tui").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:  # module level only; imports inside functions are lazy by design
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("torch", "diffusers", "transformers", "bitsandbytes")]
    assert offenders == []
