"""The command line as a new user met it in round 3 (issue 29): a crash printing an imported
kohya config, errors found after the work, exit codes, a wait that never ended, an empty table
for an unknown block, output squeezed to 80 columns in a pipe, and a `train` that refused a
finished side with the wrong advice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import tomllib

from copylora_tui.cli.main import EXIT_FAILED, EXIT_USAGE, main
from engine.jobs.queue import JobStatus, Queue
from tests.helpers import REPO, copy_example, write_png

# shared/ lies beside the checkout (CI's clone too); /work/shared is the developers' copy.
REF = next((p for p in (REPO.parent / "shared" / "reference" / "kohya_ss_configs", Path("/work/shared/reference/kohya_ss_configs"))
            if p.is_dir()), Path("/work/shared/reference/kohya_ss_configs"))
REF_FILES = sorted(REF.glob("*")) if REF.is_dir() else []


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("COPYLORA_HOME", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def loras(tmp_path):
    """Two small SD1 LoRA files (B, A) with modules in BASE, IN01 and OUT03."""
    torch = pytest.importorskip("torch")
    from engine.lora.files import save_lora_file

    g = torch.Generator().manual_seed(3)
    names = ["lora_te_text_model_encoder_layers_0_self_attn_q_proj", "lora_unet_down_blocks_0_attentions_0_proj_in",
             "lora_unet_up_blocks_1_attentions_0_proj_in"]
    files = []
    for side in ("B", "A"):
        mods = {n: (torch.randn(4, 32, generator=g), torch.randn(32, 4, generator=g), 4.0) for n in names}
        files.append(save_lora_file(tmp_path / f"{side}.safetensors", mods, {"ss_base_model_version": "sd_v1"}, "float"))
    return files


@pytest.fixture
def merged(loras, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert main(["merge", "--save_to", str(out), "--models", *map(str, loras), "--ratios", "1", "-1", "--new_rank", "4"]) == 0
    capsys.readouterr()
    return out


def one_line(err: str) -> str:
    # `train` first says its torch thread count (engine/threads.py); that is not the error
    lines = [line for line in err.strip().splitlines() if not line.startswith("copylora: threads:")]
    assert len(lines) == 1, err
    return lines[0]


# ---- 1. import-kohya prints every kohya config, unset keys included


def _project_for(config: Path, tmp_path: Path) -> Path:
    text = config.read_text()
    if config.suffix == ".toml":  # the sd-scripts dataset config: the DreamBooth flow
        return copy_example(tmp_path, "p", "example-dreambooth")
    if '"sdxl": true' in text:
        return copy_example(tmp_path, "p", "example-sdxl")
    return copy_example(tmp_path, "p")


@pytest.mark.skipif(not REF_FILES, reason="reference kohya configs not present")
@pytest.mark.parametrize("config", REF_FILES, ids=lambda p: p.name)
def test_import_kohya_prints_and_imports_every_reference_config(config, tmp_path, capsys):
    from engine.project.kohya_import import import_kohya

    assert main(["import-kohya", str(config), "--quiet"]) == 0
    printed = capsys.readouterr().out
    parsed = tomllib.loads(printed)  # what is printed pastes into a copylora.toml
    train = {k: v for k, v in import_kohya(config).train.items() if v is not None}
    assert parsed["train"] == train  # None (unset) is a comment line; the rest round-trips
    root = _project_for(config, tmp_path)
    assert main(["import-kohya", str(config), "--into", str(root), "--quiet"]) == 0
    assert "updated" in capsys.readouterr().out


@pytest.mark.parametrize("key, other", [("max_train_steps", "max_train_epochs"), ("max_train_epochs", "max_train_steps")])
def test_import_kohya_print_mode_shows_the_unset_duration_as_a_comment(key, other, tmp_path, capsys):
    config = tmp_path / "k.json"
    config.write_text(json.dumps({key: 500, "learning_rate": 0.0002}))
    assert main(["import-kohya", str(config), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"{key} = 500" in printed and f"# {other} =" in printed
    assert tomllib.loads(printed)["train"] == {key: 500, "learning_rate": 0.0002}


# ---- 2. the destination is checked before the work


def _no_work(monkeypatch):
    """Make the work itself fail loudly: a test passing proves the check came first."""
    import engine.merge.bake
    import engine.merge.extract
    import engine.merge.svd

    def boom(*_args, **_kwargs):
        raise AssertionError("the work started before the destination was checked")

    for module, name in ((engine.merge.svd, "merge_loras"), (engine.merge.bake, "bake_lora"), (engine.merge.extract, "extract_lora")):
        monkeypatch.setattr(module, name, boom)


def _commands(loras, save_to: str) -> dict[str, list[str]]:
    b, a = map(str, loras)
    return {
        "merge": ["merge", "--save_to", save_to, "--models", b, a, "--ratios", "1", "-1"],
        "resize": ["resize", b, "--new_rank", "2", "--save_to", save_to],
        "bake": ["bake", "--base", "tiny", "--lora", b, "--save_to", save_to],
        "extract": ["extract", "--model_org", "tiny", "--model_tuned", "tiny", "--save_to", save_to],
    }


def test_save_to_under_a_file_is_a_usage_error_before_the_work(loras, tmp_path, monkeypatch, capsys):
    _no_work(monkeypatch)
    picture = write_png(tmp_path / "pics" / "one.png")
    save_to = str(picture / "x.safetensors")
    for name, argv in _commands(loras, save_to).items():
        assert main(argv) == EXIT_USAGE, name
        line = one_line(capsys.readouterr().err)
        assert f"--save_to: cannot write {save_to}: {picture} is a file, not a folder" in line, (name, line)
    assert picture.is_file()


def test_save_to_on_the_kernel_filesystem_is_refused_before_the_work(loras, monkeypatch, capsys):
    _no_work(monkeypatch)
    for name, argv in _commands(loras, "/proc/copylora-test/x.safetensors").items():
        assert main(argv) == EXIT_USAGE, name
        assert "kernel's /proc filesystem" in one_line(capsys.readouterr().err)


@pytest.fixture
def read_only_folder(tmp_path):
    """A read-only tmpfs (as root, chmod alone does not stop writing); skipped where it cannot be mounted."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_save_to_on_a_read_only_filesystem_is_a_usage_error_before_the_work(loras, read_only_folder, monkeypatch, capsys):
    _no_work(monkeypatch)
    for name, argv in _commands(loras, str(read_only_folder / "x.safetensors")).items():
        assert main(argv) == EXIT_USAGE, name
        line = one_line(capsys.readouterr().err)
        # The cause the user can act on: the mount, not the permissions (os.access says no too).
        assert "--save_to: cannot write" in line and "read-only filesystem" in line, (name, line)


def test_sample_out_under_a_file_is_refused_before_the_model_loads(tmp_path, capsys):
    root = copy_example(tmp_path)
    picture = write_png(tmp_path / "one.png")
    assert main(["sample", str(root), "--lora", "none", "--out", str(picture / "grid.png")]) == EXIT_USAGE
    assert "--save_to: cannot write" in one_line(capsys.readouterr().err)  # the flag by its one name; --out is its old alias


# ---- 3. run --wait on a paused job returns, saying how to resume


def test_run_wait_on_a_paused_job_says_how_to_resume_and_returns(tmp_path, home, capsys):
    root = copy_example(tmp_path)
    assert main(["run", str(root), "--no-worker", "--max-steps", "2"]) == 0
    assert main(["pause", "1"]) == 0
    capsys.readouterr()
    result = {}
    waiting = threading.Thread(target=lambda: result.setdefault("code", main(["run", str(root), "--no-worker", "--wait"])), daemon=True)
    waiting.start()
    waiting.join(timeout=60)  # before the fix: forever
    assert not waiting.is_alive(), "run --wait is still waiting on a paused job"
    err = capsys.readouterr().err
    assert result["code"] == EXIT_FAILED
    assert "#1 train A+B of example-monochrome is paused: resume it with `copylora resume 1`" in err
    assert Queue(home).get(1).status is JobStatus.PAUSED  # nothing was changed, only said


def test_run_wait_without_a_worker_says_how_to_start_one_and_returns(tmp_path, home, capsys, monkeypatch):
    from copylora_tui.cli import queue_commands

    monkeypatch.setattr(queue_commands, "NO_WORKER_GRACE_S", 0.5)
    root = copy_example(tmp_path)
    capsys.readouterr()
    result = {}
    waiting = threading.Thread(target=lambda: result.setdefault("code", main(["run", str(root), "--no-worker", "--wait", "--max-steps", "2"])),
                               daemon=True)
    waiting.start()
    waiting.join(timeout=60)  # before the fix: forever
    assert not waiting.is_alive(), "run --no-worker --wait is still waiting with no worker to run the jobs"
    assert result["code"] == EXIT_FAILED
    assert "no worker is running, so the jobs stay queued: start one with `copylora worker start`" in capsys.readouterr().err
    assert Queue(home).get(1).status is JobStatus.QUEUED


# ---- 4 and 7. stats: an unknown block is an error; --json follows --blocks


def test_stats_unknown_block_is_a_usage_error_naming_the_blocks(merged, capsys):
    assert main(["stats", str(merged), "--block", "FOO"]) == EXIT_USAGE
    line = one_line(capsys.readouterr().err)
    assert "--block: no module of this file is in 'FOO'; its blocks (LBW naming): " in line
    assert "IN01" in line and "OUT03" in line and "BASE" in line and "in0" not in line
    assert main(["stats", str(merged), "--blocks", "unet", "--block", "FOO"]) == EXIT_USAGE
    line = one_line(capsys.readouterr().err)
    assert "(U-Net naming)" in line and "in0" in line and "IN01" not in line
    assert main(["stats", str(merged), "--block", "in0", "--json"]) == 0  # the other naming still works


def test_stats_json_names_blocks_as_the_table_does(merged, capsys):
    assert main(["stats", str(merged), "--json", "--top", "0"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["block"] for r in rows} == {"BASE", "IN01", "OUT03"}
    assert all(r["block"] == r["lbw_block"] and r["unet_block"] for r in rows)
    assert main(["stats", str(merged), "--json", "--top", "0", "--blocks", "unet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(r["block"] == r["unet_block"] != r["lbw_block"] for r in rows)


# ---- 5. a missing job and a picture given as a LoRA are usage errors


@pytest.mark.parametrize("argv", [["logs", "99"], ["cancel", "999"], ["retry", "99"], ["pause", "99"], ["resume", "99"],
                                  ["save-now", "99"], ["sample-now", "99"], ["move", "99", "up"], ["logs", "99", "-f"]])
def test_no_such_job_is_a_usage_error(argv, home, capsys):
    assert main(argv) == EXIT_USAGE
    assert f"no job #{argv[1]} (see `copylora queue`)" in one_line(capsys.readouterr().err)


def test_a_picture_given_as_a_lora_is_a_usage_error(loras, tmp_path, capsys):
    picture = write_png(tmp_path / "pic.png")
    b = str(loras[0])
    root = copy_example(tmp_path)
    for argv in (["merge", "--save_to", str(tmp_path / "m.safetensors"), "--models", b, str(picture)],
                 ["resize", str(picture), "--new_rank", "2"],
                 ["stats", str(picture)],
                 ["sample", str(root), "--lora", str(picture)],
                 ["sample", str(picture), "--base", "tiny"],
                 ["bake", "--base", "tiny", "--lora", str(picture), "--save_to", str(tmp_path / "baked")]):
        assert main(argv) == EXIT_USAGE, argv
        one_line(capsys.readouterr().err)
    assert main(["merge", "--save_to", str(tmp_path / "m.safetensors"), "--models", b, str(picture)]) == EXIT_USAGE
    assert "not a LoRA file (a PNG image)" in capsys.readouterr().err


# ---- 6. new --help lists every built-in base


def test_new_help_lists_every_builtin_base(capsys):
    from engine.formats.model_files import BUILTIN_MODELS

    with pytest.raises(SystemExit):
        main(["new", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    for name in BUILTIN_MODELS:
        assert f'"{name}"' in text


# ---- 9. output to a pipe is not squeezed to 80 columns


def test_queue_in_a_pipe_keeps_full_names(tmp_path, home):
    name = "example-monochrome-with-a-project-name-far-longer-than-eighty-columns-allow"
    root = copy_example(tmp_path, name)
    assert main(["run", str(root), "--no-worker"]) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    shown = subprocess.run([sys.executable, "-m", "copylora_tui", "queue"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert name in shown.stdout and "…" not in shown.stdout
    assert "queued" in shown.stdout


# ---- 8 and 10. train on a finished side says so (and the README's sequence works)


def test_train_on_a_finished_side_says_it_is_trained(tmp_path, capsys):
    pytest.importorskip("torch")
    root = copy_example(tmp_path)
    assert main(["train", str(root), "--side", "ab", "--max-steps", "2"]) == 0  # as `copylora run` trains them: one twin job
    capsys.readouterr()
    lora = root / "output" / "example-monochrome_A.safetensors"
    before = lora.stat().st_mtime_ns
    # The README's next line: one side alone, already trained. Said, nothing retrained, exit 0.
    assert main(["train", str(root), "--side", "a", "--max-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert f"A is already trained: {lora} is up to date (step 2 of 2); --restart trains it again" in out
    assert "--resume" in out and lora.stat().st_mtime_ns == before
    assert main(["train", str(root), "--side", "ab", "--max-steps", "2"]) == 0
    assert "B is already trained" in capsys.readouterr().out
    # Asked to train longer: the checkpoint is not the end any more, --resume continues it.
    assert main(["train", str(root), "--side", "a", "--max-steps", "3"]) == EXIT_USAGE
    assert "holds a checkpoint at step 2 of 3: add --resume" in one_line(capsys.readouterr().err)
    # The finished run's LoRA is gone: --resume is not the advice, --restart is.
    lora.unlink()
    assert main(["train", str(root), "--side", "a", "--max-steps", "2"]) == EXIT_USAGE
    line = one_line(capsys.readouterr().err)
    assert "holds A's finished training (step 2 of 2) but its LoRA is not up to date (no LoRA yet): add --restart" in line
