"""The command line: exit codes, one-line errors, and the commands of the project issue."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from copylora_tui.cli.main import EXIT_FAILED, EXIT_USAGE, main, run_guarded
from engine.errors import CopyloraError
from tests.helpers import REPO, copy_example, snapshot, write_png


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "copylora_tui", *args], capture_output=True, text=True, cwd=cwd or REPO, timeout=120
    )


def test_help_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("new", "check", "import-kohya"):
        assert command in result.stdout


def test_check_valid_project_prints_plan(capsys, tmp_path):
    root = copy_example(tmp_path)
    assert main(["check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "128x192" in out and "example-monochrome.safetensors" in out
    assert main(["check", str(root), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["sides"]["a"]["total_steps"] == 200


def test_check_invalid_project_exit_2_one_line_per_problem(tmp_path):
    root = copy_example(tmp_path)
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace("network_dim = 8", "network_dim = -1").replace("new_rank = 16", "new_rank = 0"))
    result = run_cli("check", str(root))
    assert result.returncode == EXIT_USAGE
    assert "Traceback" not in result.stderr
    assert "train.network_dim: must be greater than 0, got -1" in result.stderr
    assert "merge.new_rank: must be greater than 0, got 0" in result.stderr
    assert "2 problems" in result.stderr


def test_usage_error_exit_2():
    result = run_cli("frobnicate")
    assert result.returncode == EXIT_USAGE
    assert "invalid choice" in result.stderr and "Traceback" not in result.stderr


def test_new_bad_image_then_good(tmp_path, capsys):
    a = write_png(tmp_path / "a.png")
    projects = tmp_path / "projects"
    assert main(["--projects", str(projects), "new", "mono", "--a", str(tmp_path / "nope.png"), "--b", str(a)]) == EXIT_USAGE
    assert "--a: no such file" in capsys.readouterr().err
    assert not projects.exists() or not any(projects.iterdir())
    b = write_png(tmp_path / "b.png", colour=(128, 128, 128))
    assert main(["--projects", str(projects), "new", "mono", "--a", str(a), "--b", str(b)]) == 0
    assert (projects / "mono" / "copylora.toml").is_file()
    assert main(["check", str(projects / "mono")]) == 0


def test_runtime_failure_is_exit_1_without_traceback(capsys):
    class Args:
        debug = False

    def fails(_args):
        raise CopyloraError("the GPU caught fire")

    assert run_guarded(fails, Args()) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.strip() == "copylora: error: the GPU caught fire"

    def bug(_args):
        raise ZeroDivisionError("oops")

    assert run_guarded(bug, Args()) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError: oops" in err and "Traceback" not in err
    Args.debug = True
    assert run_guarded(bug, Args()) == EXIT_FAILED
    assert "Traceback" in capsys.readouterr().err


def test_import_kohya_into_project_reports_keys(tmp_path, capsys):
    root = copy_example(tmp_path)
    config = REPO.parent / "shared" / "reference" / "kohya_ss_configs" / "Standard-AdamW8bit.json"
    if not config.is_file():
        pytest.skip("shared/reference not beside the checkout")
    assert main(["import-kohya", str(config), "--into", str(root)]) == 0
    captured = capsys.readouterr()
    assert "output_dir" in captured.err  # an ignored key is reported, not dropped
    from engine.project.folder import load_project

    project = load_project(root)
    assert project.train.train_batch_size == 4
    assert project.train.learning_rate == pytest.approx(1e-4)


def test_import_kohya_bad_file_changes_nothing(tmp_path, capsys):
    root = copy_example(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    before = snapshot(root)
    assert main(["import-kohya", str(bad), "--into", str(root)]) == EXIT_USAGE
    assert snapshot(root) == before
    assert "Traceback" not in capsys.readouterr().err


def test_flags_are_spelled_one_way_and_take_the_other_as_a_hidden_alias(capsys):
    """kohya's underscores everywhere (users' batch files carry --save_to, --max_train_steps):
    the hyphenated spelling and sample's old --out still work, and only the one name is shown."""
    from copylora_tui.cli.main import build_parser

    parser = build_parser()
    for argv in (["run", "p", "--max_steps", "3", "--no_worker"], ["run", "p", "--max-steps", "3", "--no-worker"],
                 ["run", "p", "--max-steps=3", "--no-worker"]):
        args = parser.parse_args(argv)
        assert (args.max_steps, args.no_worker) == (3, True), argv
    assert parser.parse_args(["worker", "start", "--per-gpu", "2"]).per_gpu == 2
    assert parser.parse_args(["merge", "--models", "a.safetensors", "--save-to", "x.safetensors", "--new-rank", "8"]).new_rank == 8
    assert parser.parse_args(["sample", "p", "--out", "g.png"]).save_to == parser.parse_args(["sample", "p", "--save_to", "g.png"]).save_to == "g.png"
    for command in (["run"], ["train"], ["sample"], ["worker"], ["merge"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*command, "--help"])
        shown = capsys.readouterr().out
        assert "--max-steps" not in shown and "--no-worker" not in shown and "--per-gpu" not in shown and "--out " not in shown, command
    with pytest.raises(SystemExit) as refused:  # a flag that is neither spelling is still refused, as argparse does
        parser.parse_args(["run", "p", "--max_stepz", "3"])
    assert refused.value.code == EXIT_USAGE
    assert "unrecognized arguments: --max_stepz" in capsys.readouterr().err
