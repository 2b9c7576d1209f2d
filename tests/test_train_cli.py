"""``copylora train`` end to end: progress, a refused accidental restart, SIGTERM → checkpoint → --resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from copylora_tui.cli.main import EXIT_USAGE, main
from tests.helpers import REPO, copy_example, one_line

pytest.importorskip("torch")


def test_train_then_refuse_silent_restart_then_resume(tmp_path, capsys):
    root = copy_example(tmp_path)
    assert main(["train", str(root), "--side", "a", "--max-steps", "4"]) == 0
    out = capsys.readouterr()
    assert "example-monochrome_A.safetensors" in out.out
    assert (root / "output" / "example-monochrome_A.safetensors").is_file()
    # A checkpoint exists: running again without a decision is refused, nothing is lost.
    assert main(["train", str(root), "--side", "a", "--max-steps", "6"]) == EXIT_USAGE
    assert "--resume" in capsys.readouterr().err
    assert main(["train", str(root), "--side", "a", "--max-steps", "6", "--resume"]) == 0
    assert "resuming A from step 4" in capsys.readouterr().err


def test_side_ab_trains_both_as_one_batch_and_resumes(tmp_path, capsys):
    root = copy_example(tmp_path)
    assert main(["train", str(root), "--side", "ab", "--max-steps", "3"]) == 0
    out = capsys.readouterr()
    assert "example-monochrome_A.safetensors" in out.out and "example-monochrome_B.safetensors" in out.out
    assert "training A and B together" in out.err
    assert main(["train", str(root), "--side", "ab", "--max-steps", "5"]) == EXIT_USAGE  # checkpoints: decide
    assert main(["train", str(root), "--side", "ab", "--max-steps", "5", "--resume"]) == 0
    assert "resuming A from step 3" in capsys.readouterr().err
    # Sides set differently cannot go together: one line that says why and what to do.
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace("# Any [train] key set here overrides it for this side only.\n\n[merge]",
                                              "learning_rate = 0.0005\n\n[merge]"))
    assert main(["train", str(root), "--side", "ab", "--restart"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "A and B cannot train as one batch: [a] and [b] set different values (learning_rate)" in err
    assert "--side a, then --side b" in err


def test_sigterm_saves_a_checkpoint_and_resume_finishes(tmp_path):
    root = copy_example(tmp_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "copylora_tui", "train", str(root), "--side", "b", "--max-steps", "400"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 120
    for line in proc.stderr:  # wait until the loop runs
        if "training B:" in line or time.time() > deadline:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "stopped at step" in out
    states = sorted((root / "output" / "runs" / "B").glob("state-*.pt"))
    assert states, "no checkpoint written on SIGTERM"
    stopped_at = int(states[-1].stem.split("-")[1])
    assert 0 < stopped_at < 400
    assert not (root / "output" / "example-monochrome_B.safetensors").exists()


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
    # The finished run's LoRA is gone: --resume writes it from the finished checkpoint (no
    # training), --restart trains it again; both are offered, nothing is done unasked.
    lora.unlink()
    assert main(["train", str(root), "--side", "a", "--max-steps", "2"]) == EXIT_USAGE
    line = one_line(capsys.readouterr().err)
    assert "holds A's finished training (step 2 of 2) but its LoRA is not up to date (no LoRA yet): add --resume to write it" in line
    assert "or --restart to train it again" in line and not lora.exists()


def test_a_checkpoint_past_the_plan_is_not_resumed_and_goes_at_the_next_save(tmp_path, capsys):
    """A longer training's checkpoint (a --max_steps run, a plan shortened since) was resumed as
    if it were the plan's: "resuming A from step 6 of 3", no step trained, and a LoRA of 6 steps
    written over the current one; `copylora run` then queued the side again at every run."""
    from safetensors.torch import load_file

    from engine.train.checkpoint import list_states, state_step

    root = copy_example(tmp_path)
    assert main(["train", str(root), "--side", "a", "--max_steps", "3"]) == 0
    lora = root / "output" / "example-monochrome_A.safetensors"
    three = load_file(str(lora))
    kept = lora.read_bytes()
    assert main(["train", str(root), "--side", "a", "--max_steps", "6", "--resume"]) == 0
    lora.write_bytes(kept)  # the 3-step LoRA, current for a 3-step plan; checkpoints at 3 and 6
    run_dir = next(p.parent for p in (root / "output").rglob("state-*.pt"))
    assert [state_step(p) for p in list_states(run_dir)] == [6, 3]
    capsys.readouterr()

    assert main(["train", str(root), "--side", "a", "--max_steps", "3"]) == 0
    assert "example-monochrome_A.safetensors is up to date (step 3 of 3)" in capsys.readouterr().out
    assert lora.read_bytes() == kept

    assert main(["train", str(root), "--side", "a", "--max_steps", "3", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "the checkpoint at step 6 is past this plan's 3 steps: not resumed" in err and "resuming A from step 3 of 3" in err
    written = load_file(str(lora))
    assert all(torch_equal(written[k], three[k]) for k in three)  # the 3-step weights, not the 6-step ones
    assert [state_step(p) for p in list_states(run_dir)] == [3]  # the longer training's went at this save


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))
