"""Hostile input at the command line, as an audit of every command found it (2026-12-05):
commands that wrote over their own inputs, a rejected value that still changed a project,
and errors that reached the user as "internal error" with no file or key named."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from copylora_tui.cli.main import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from engine.errors import os_error_text
from tests.helpers import REPO, copy_example, one_line
from tests.test_cli import _no_work, home, loras  # noqa: F401  (fixtures)


def digest(path) -> bytes:
    return path.read_bytes()


def test_no_command_writes_its_result_over_its_own_input(loras, tmp_path, monkeypatch, capsys):  # noqa: F811
    _no_work(monkeypatch)
    b, a = loras
    before = digest(b)
    for argv in (["bake", "--base", "tiny", "--lora", str(b), "--save_to", str(b)],
                 ["extract", "--model_org", str(a), "--model_tuned", str(b), "--save_to", str(b)],
                 ["extract", "--model_org", str(a), "--model_tuned", str(b), "--save_to", str(tmp_path / "." / "A.safetensors")]):
        assert main(argv) == EXIT_USAGE, argv
        assert "is this command's input" in one_line(capsys.readouterr().err), argv
    assert digest(b) == before


def test_sample_writes_a_png_and_never_over_a_teacher_picture_or_the_lora(loras, tmp_path, capsys):  # noqa: F811
    root = copy_example(tmp_path)
    teacher = next((root / "a").iterdir())
    before = digest(teacher)
    b = str(loras[0])
    cases = {
        ("sample", str(root), "--lora", "none", "--save_to", str(teacher)): "is this command's input",
        ("sample", str(root), "--lora", "none", "--save_to", str(root / "copylora.toml")): "the grid is a PNG",
        ("sample", b, "--base", "tiny", "--save_to", b): "the grid is a PNG",
        ("sample", b, "--base", "tiny", "--save_to", str(tmp_path / "grid.jpg")): "the grid is a PNG",
    }
    for argv, said in cases.items():
        assert main(list(argv)) == EXIT_USAGE, argv  # refused before the model loads
        assert said in one_line(capsys.readouterr().err), argv
    assert digest(teacher) == before


def test_bake_refuses_a_ratio_that_is_not_finite(loras, tmp_path, capsys):  # noqa: F811
    for ratio in ("nan", "inf"):
        assert main(["bake", "--base", "tiny", "--lora", str(loras[0]), "--ratio", ratio, "--save_to", str(tmp_path / "x.safetensors")]) == EXIT_USAGE
        assert "--ratio: must be a finite number" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "x.safetensors").exists()


def test_a_rejected_kohya_duration_leaves_the_projects_own(tmp_path, capsys):
    root = copy_example(tmp_path)
    toml = root / "copylora.toml"
    for bad in ("-5", "1.5", '"1e999"'):
        (tmp_path / "k.json").write_text(f'{{"max_train_steps": {bad}}}')
        assert main(["import-kohya", str(tmp_path / "k.json"), "--into", str(root)]) == EXIT_OK
        assert "not a positive whole number" in capsys.readouterr().err
        lines = toml.read_text().splitlines()
        assert "max_train_epochs = 40" in lines, bad  # was commented out, leaving the default 4000 steps
        assert not any(line.startswith("max_train_steps") for line in lines), bad


def test_rewrites_keep_a_files_mode_and_refuse_a_read_only_one(tmp_path):
    from engine.files import write_text_atomic

    path = tmp_path / "copylora.toml"
    path.write_text("one")
    path.chmod(0o640)
    write_text_atomic(path, "two")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_text() == "two"
    path.chmod(0o444)
    with pytest.raises(PermissionError, match="read-only"):  # also as root, whom modes do not stop
        write_text_atomic(path, "three")
    assert path.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["copylora.toml"]


def test_import_kohya_into_a_read_only_project_file_changes_nothing(tmp_path, capsys):
    root = copy_example(tmp_path)
    toml = root / "copylora.toml"
    before = toml.read_text()
    toml.chmod(0o444)
    (tmp_path / "k.json").write_text('{"learning_rate": 0.001}')
    assert main(["import-kohya", str(tmp_path / "k.json"), "--into", str(root)]) == EXIT_FAILED
    assert "read-only" in capsys.readouterr().err
    assert toml.read_text() == before and stat.S_IMODE(toml.stat().st_mode) == 0o444


def test_new_folders_get_the_umask_mode_not_mkdtemps(tmp_path, capsys):
    from engine.files import current_umask, staging_folder

    root = copy_example(tmp_path)
    pictures = [next((root / side).iterdir()) for side in ("a", "b")]
    assert main(["--projects", str(tmp_path / "projects"), "new", "mine", "--a", str(pictures[0]), "--b", str(pictures[1])]) == EXIT_OK
    want = 0o777 & ~current_umask()
    assert stat.S_IMODE((tmp_path / "projects" / "mine").stat().st_mode) == want
    assert stat.S_IMODE(staging_folder(tmp_path / "baked").stat().st_mode) == want


def test_resuming_a_finished_side_rewrites_its_lora_and_says_so(tmp_path, capsys):
    root = copy_example(tmp_path)
    assert main(["train", str(root), "--side", "a", "--max_steps", "2", "--device", "cpu"]) == EXIT_OK
    lora = next((root / "output").glob("*_A.safetensors"))
    lora.unlink()
    capsys.readouterr()
    assert main(["train", str(root), "--side", "a", "--max_steps", "2"]) == EXIT_USAGE
    assert "add --resume to write it from that checkpoint" in capsys.readouterr().err
    assert main(["train", str(root), "--side", "a", "--max_steps", "2", "--resume"]) == EXIT_OK  # crashed on its None loss
    assert "written from its finished checkpoint" in capsys.readouterr().out
    assert lora.is_file()


def test_optimizer_args_the_optimizer_does_not_take_name_the_key():
    torch = pytest.importorskip("torch")
    from engine.train.optim import OptimizerError, build_optimizer

    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))]}]
    for args, said in (({"bogus": 1}, "unexpected keyword argument 'bogus'"), ({"weight_decay": "lots"}, "weight_decay = 'lots'"),
                       ({"betas": [0.9]}, "betas = [0.9]"),  # an IndexError inside the optimizer: it was a traceback
                       ({"lr": 0.1}, "lr is [train] learning_rate"), ({"betas": [0.9, True]}, "two numbers in [0, 1)")):
        with pytest.raises(OptimizerError, match=r"\[train\] optimizer_args") as caught:
            build_optimizer(groups, "AdamW8bit", 1e-3, args, "cpu", log=lambda _line: None)
        assert said in str(caught.value)


@pytest.mark.parametrize("argv", [["train", "P", "--device", "tpu"], ["sample", "P", "--device", "mps"],
                                  ["merge", "--device", "tpu"], ["extract", "--device", "xla"]])
def test_an_unknown_device_is_a_usage_error_before_any_work(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == EXIT_USAGE
    assert "use auto, cpu, cuda or cuda:N" in capsys.readouterr().err


def test_worker_start_refuses_gpus_that_are_not_there(home, capsys):  # noqa: F811
    from engine.jobs.worker import stop_worker, worker_pid

    try:
        assert main(["worker", "start", "--gpus", "abc", "--per_gpu", "0"]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert "--gpus: 'abc' is not a GPU index" in err and "--per_gpu: must be 1 or more, got 0" in err
        assert main(["worker", "start", "--gpus", "99"]) == EXIT_USAGE
        assert ("there is no GPU 99" in (err := capsys.readouterr().err)) or "no NVIDIA GPU is visible here" in err
        assert worker_pid(home) is None  # refused before anything started
    finally:
        stop_worker(home)  # one started all the same must not outlive the test


def test_job_numbers_as_the_queue_prints_them(home, capsys):  # noqa: F811
    assert main(["cancel", "#4"]) == EXIT_USAGE
    assert "no job #4" in one_line(capsys.readouterr().err)
    for text in ("99999999999999999999999", "x1", "0"):
        with pytest.raises(SystemExit) as stopped:
            main(["logs", text])
        assert stopped.value.code == EXIT_USAGE
        assert "not a job number" in capsys.readouterr().err


def test_a_state_folder_that_cannot_be_used_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COPYLORA_HOME", str(tmp_path / "a-file"))
    (tmp_path / "a-file").write_text("")
    assert main(["queue"]) == EXIT_FAILED
    line = one_line(capsys.readouterr().err)
    assert "cannot use" in line and "COPYLORA_HOME" in line and "internal error" not in line
    monkeypatch.setenv("COPYLORA_HOME", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "queue.db").write_bytes(b"garbage" * 500)
    assert main(["queue"]) == EXIT_FAILED
    line = one_line(capsys.readouterr().err)
    assert str(tmp_path / "state" / "queue.db") in line and "Move it aside" in line


def test_a_relative_state_folder_is_made_absolute_and_a_relative_xdg_one_ignored(tmp_path, monkeypatch):
    """COPYLORA_HOME=state from one folder: the worker and its jobs (which may run in another
    folder) must name one place. XDG_STATE_HOME=relative is invalid by the XDG spec: ignored."""
    from engine.jobs.state_home import state_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COPYLORA_HOME", "state")
    assert state_folder() == tmp_path / "state"
    monkeypatch.delenv("COPYLORA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", "relative")
    assert state_folder() == tmp_path / "home" / ".local" / "state" / "copylora"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert state_folder() == tmp_path / "xdg" / "copylora"


def test_commands_typed_in_a_folder_removed_since(tmp_path, monkeypatch, capsys):
    """A shell still in a folder that was deleted: `new` with absolute paths made the project,
    then said "[Errno 2] No such file or directory" (exit 1) while showing where it was; a relative
    name said only that."""
    from tests.helpers import write_png

    a, b = write_png(tmp_path / "a.png"), write_png(tmp_path / "b.png", colour=(128, 128, 128))
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert main(["new", str(tmp_path / "made"), "--a", str(a), "--b", str(b)]) == EXIT_OK
    assert capsys.readouterr().out.splitlines()[-1].endswith(f"then: copylora check {tmp_path / 'made'}")
    assert main(["new", "relative", "--a", str(a), "--b", str(b)]) == EXIT_FAILED
    assert one_line(capsys.readouterr().err) == ("copylora: error: the current folder was removed after this shell entered it: "
                                                 "cd to a folder that exists (or give absolute paths)")


def test_following_a_job_nothing_runs_says_so(home):  # noqa: F811
    from engine.jobs.queue import Queue

    job = Queue(home).enqueue("merge", "demo")
    env = {**os.environ, "COPYLORA_HOME": str(home)}
    with pytest.raises(subprocess.TimeoutExpired) as waited:
        subprocess.run([sys.executable, "-m", "copylora_tui", "logs", str(job.id), "-f"], capture_output=True, text=True,
                       cwd=REPO, env=env, timeout=8)
    said = waited.value.stderr or b""
    assert b"no worker is running" in (said if isinstance(said, bytes) else said.encode())


def test_merge_names_the_file_and_module_that_hold_nan(loras, tmp_path, capsys):  # noqa: F811
    torch = pytest.importorskip("torch")
    from engine.lora.files import load_lora_file, save_lora_file

    b, a = loras
    broken = load_lora_file(b)
    name = next(iter(broken.modules))
    mods = {n: (w.down, w.up, w.alpha) for n, w in broken.modules.items()}
    down, up, alpha = mods[name]
    mods[name] = (down, torch.full_like(up, float("nan")), alpha)
    nan_file = save_lora_file(tmp_path / "nan.safetensors", mods, {"ss_base_model_version": "sd_v1"}, "float")
    out = str(tmp_path / "m.safetensors")
    # both are inputs to fix (exit 2, README's contract), found before the first SVD: no file written
    assert main(["merge", "--save_to", out, "--models", str(nan_file), str(a), "--ratios", "1", "-1"]) == EXIT_USAGE
    assert f"nan.safetensors: module {name} holds NaN or infinite values (a training that diverged?); it cannot be merged" \
        in one_line(capsys.readouterr().err)
    assert main(["merge", "--save_to", out, "--models", str(b), str(a), "--ratios", "1e308", "1e308"]) == EXIT_USAGE
    said = one_line(capsys.readouterr().err)
    assert said.startswith("copylora: --ratios: B.safetensors: module ") and "overflows float32; use a smaller ratio" in said
    # factors that fit float32 at this ratio, but whose change does not: it failed inside the SVD ("internal error")
    assert main(["merge", "--save_to", out, "--models", str(b), str(a), "--ratios", "1", "3e37"]) == EXIT_USAGE
    assert "A.safetensors: module" in (said := one_line(capsys.readouterr().err)) and "overflows float32; use a smaller ratio" in said
    # a block weight past float32 is the input to fix, not the ratio: it was said under --ratios
    big = "[" + ",".join(["1e300"] * 17) + "]"
    assert main(["merge", "--save_to", out, "--models", str(b), str(a), "--ratios", "1", "-1", "--lbws", big, big]) == EXIT_USAGE
    said = one_line(capsys.readouterr().err)
    assert said.startswith("copylora: --lbws: B.safetensors: module ") and "use a smaller block weight" in said
    # a ratio past float32 under a block weight of 2 (≥ the ratio) is still the ratio's to fix
    two = "[" + ",".join(["2"] * 17) + "]"
    assert main(["merge", "--save_to", out, "--models", str(b), str(a), "--ratios", "1e308", "1", "--lbws", two, two]) == EXIT_USAGE
    assert one_line(capsys.readouterr().err).startswith("copylora: --ratios: B.safetensors: module ")
    # a merge whose factors fit float32 but not the fp16 it is saved in: it wrote a file of inf
    assert main(["merge", "--save_to", out, "--models", str(b), str(a), "--ratios", "1", "1e12", "--save_precision", "fp16"]) == EXIT_USAGE
    assert "does not fit float16 (fp16's largest is 65504: save as float or bf16); nothing was written" in one_line(capsys.readouterr().err)
    assert not Path(out).exists()


def test_merge_and_resize_leave_no_blank_line_where_their_bar_was(loras, tmp_path, capsys):  # noqa: F811
    """Off a terminal (a log file, a pipe), the transient progress bar printed an empty line first."""
    b, a = loras
    assert main(["merge", "--save_to", str(tmp_path / "m.safetensors"), "--models", str(b), str(a), "--ratios", "1", "-1"]) == 0
    assert main(["resize", str(tmp_path / "m.safetensors"), "--new_rank", "2", "--save_to", str(tmp_path / "r.safetensors")]) == 0
    err = capsys.readouterr().err
    assert "" not in [line.strip() for line in err.splitlines()], repr(err)


def test_a_family_override_cannot_change_a_folders_architecture(tmp_path, capsys):
    assert main(["extract", "--model_org", "tiny", "--model_tuned", "tiny", "--family", "sdxl",
                 "--save_to", str(tmp_path / "x.safetensors")]) == EXIT_USAGE
    assert "holds an sd1 model, not sdxl" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("command", ["sample", "bake", "extract"])
def test_a_base_model_that_cannot_be_used_is_an_input_to_fix(loras, tmp_path, capsys, command):  # noqa: F811
    """README: exit 2 for a missing or damaged input, found before any work; a picture given as
    the base model is one (it was exit 1, "the work failed", while a bad LoRA was 2)."""
    b, _ = loras
    picture = tmp_path / "photo.safetensors"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    out = str(tmp_path / ("out.png" if command == "sample" else "out.safetensors"))
    argv = {"sample": ["sample", str(b), "--base", str(picture), "--save_to", out],
            "bake": ["bake", "--base", str(picture), "--lora", str(b), "--save_to", out],
            "extract": ["extract", "--model_org", str(picture), "--model_tuned", "tiny", "--dim", "4", "--save_to", out]}[command]
    assert main(argv) == EXIT_USAGE
    said = one_line(capsys.readouterr().err)
    assert said.startswith("copylora: error: ") and "photo.safetensors" in said and "internal error" not in said
    assert not Path(out).exists()


def test_system_errors_name_the_place_not_a_staging_file():
    assert os_error_text(PermissionError(13, "Permission denied", "/p/.mine.x1y2")) == "cannot write in /p: Permission denied"
    assert os_error_text(OSError(36, "File name too long", "/p/long")) == "/p/long: File name too long"


def test_new_with_a_broken_base_names_the_flag_not_a_staging_folder(tmp_path, capsys):
    root = copy_example(tmp_path)
    pictures = [next((root / side).iterdir()) for side in ("a", "b")]
    (tmp_path / "g.safetensors").write_text("garbage")
    projects = tmp_path / "projects"
    assert main(["--projects", str(projects), "new", "zz", "--a", str(pictures[0]), "--b", str(pictures[1]),
                 "--base", str(tmp_path / "g.safetensors")]) == EXIT_USAGE
    line = one_line(capsys.readouterr().err)
    assert line.startswith("copylora: --base: ") and ".zz." not in line, line
    assert list(projects.iterdir()) == []  # nothing half-made left behind


def test_check_json_says_invalid_on_stdout_with_every_problem(tmp_path, capsys):
    import json

    root = copy_example(tmp_path)
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace("network_dim = 8", "network_dim = -1").replace("new_rank = 16", "new_rank = 0"))
    assert main(["check", str(root), "--json"]) == EXIT_USAGE
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["valid"] is False
    assert {p["where"] for p in verdict["problems"]} == {"train.network_dim", "merge.new_rank"}
    toml.write_text(toml.read_text().replace("network_dim = -1", "network_dim = 8").replace("new_rank = 0", "new_rank = 16"))
    assert main(["check", str(root), "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["valid"] is True


def test_a_request_the_jobs_state_refuses_is_a_usage_error(home, capsys):  # noqa: F811
    from engine.jobs.queue import Queue

    job = Queue(home).enqueue("merge", "demo")
    assert main(["pause", str(job.id)]) == EXIT_OK
    capsys.readouterr()
    assert main(["pause", str(job.id)]) == EXIT_USAGE  # already paused: the command line to change, not a failure
    assert main(["save-now", str(job.id)]) == EXIT_USAGE
    assert "Traceback" not in capsys.readouterr().err


def test_max_steps_beyond_what_a_project_may_ask_is_refused(tmp_path, capsys):
    root = copy_example(tmp_path)
    assert main(["train", str(root), "--side", "a", "--max_steps", "99999999999999999999"]) == EXIT_USAGE
    assert "--max_steps: must be between 1 and 10,000,000" in one_line(capsys.readouterr().err)


def test_a_home_folder_that_does_not_exist_is_the_inputs_problem(tmp_path, capsys):
    root = copy_example(tmp_path)
    b = next((root / "b").iterdir())
    assert main(["--projects", str(tmp_path / "p"), "new", "x", "--a", "~nosuchuser-copylora/a.png", "--b", str(b),
                 "--base", "~nosuchuser-copylora/m.safetensors"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--a: ~nosuchuser-copylora/a.png: no such user's home folder" in err and "--base: ~nosuchuser-copylora" in err


HOSTILE_PATHS = ["", "/", ".", "..", "/dev/null", "-", "nan", "99999999999999999999", "１"]


def test_hostile_paths_and_numbers_in_every_file_and_job_argument_are_one_line(loras, home, tmp_path, monkeypatch, capsys):  # noqa: F811
    """A fuzz of the path and job arguments (2026-12-06: `copylora stats /` and `copylora resize
    --new_rank 2 ""` were "internal error: PosixPath('/') has an empty name"): each answer is
    the work done (a rank beyond the inputs' is capped, with a note) or a usage or input error in
    one line, never an internal one."""
    monkeypatch.chdir(tmp_path)
    lora = str(loras[0])
    for value in HOSTILE_PATHS:
        for argv in (["stats", value], ["resize", "--new_rank", "2", value], ["resize", "--new_rank", value, lora],
                     ["merge", "--save_to", value, "--models", lora, "--ratios", "1", "--new_rank", "2"],
                     ["merge", "--save_to", str(tmp_path / "m.safetensors"), "--models", lora, value, "--ratios", "1", "-1"],
                     ["bake", "--base", "tiny", "--lora", value, "--save_to", str(tmp_path / "baked")],
                     ["check", value], ["import-kohya", value, "--into", str(tmp_path)], ["logs", value], ["move", value, "up"],
                     ["cancel", value], ["retry", value], ["pause", value], ["resume", value], ["save-now", value]):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse's refusal: a usage error
                code = exc.code
            err = capsys.readouterr().err
            assert code in (EXIT_OK, EXIT_USAGE, EXIT_FAILED) and "internal error" not in err and "Traceback" not in err, (argv, err)


def test_new_says_what_a_teacher_path_is_when_it_is_no_picture_file(tmp_path, capsys):
    """A folder, a pipe, a link to itself or to nothing were all "no such file" (they exist)."""
    from tests.helpers import write_png

    good = write_png(tmp_path / "good.png")
    (tmp_path / "folder.png").mkdir()
    os.mkfifo(tmp_path / "pipe.png")
    os.symlink("loop.png", tmp_path / "loop.png")
    os.symlink("/nowhere/b.png", tmp_path / "dangling.png")
    cases = {"folder.png": "folder.png is a folder, not a file", "pipe.png": "pipe.png is not a regular file (a pipe or a device?)",
             "loop.png": "loop.png is a link that leads back to itself (a loop of links)",
             "dangling.png": "dangling.png is a link to /nowhere/b.png, which does not exist"}
    for name, said in cases.items():
        argv = ["--projects", str(tmp_path / "projects"), "new", "p", "--a", str(tmp_path / name), "--b", str(good), "--base", "tiny"]
        assert main(argv) == EXIT_USAGE, name
        assert one_line(capsys.readouterr().err) == f"copylora: --a: {tmp_path}/{said}", name
    assert not (tmp_path / "projects" / "p").exists()
    # the project's own name a link to itself: "internal error: Symlink loop" (Path.resolve)
    (tmp_path / "projects").mkdir()
    os.symlink("p", tmp_path / "projects" / "p")
    assert main(["--projects", str(tmp_path / "projects"), "new", "p", "--a", str(good), "--b", str(good), "--base", "tiny"]) == EXIT_USAGE
    assert one_line(capsys.readouterr().err) == f"copylora: NAME: {tmp_path}/projects/p is a link to p; remove it or choose another name"


@pytest.mark.parametrize("encoding", ["ascii", "latin-1", "euc-jp"])
def test_a_terminal_that_is_not_utf8_gets_question_marks_not_a_crash(tmp_path, encoding):
    """A legacy locale (ja_JP.eucJP, en_US.ISO-8859-1) or PYTHONIOENCODING=ascii: every command,
    --help included, ended with a UnicodeEncodeError at its first "·", "━" or "コピー機"."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONIOENCODING": encoding, "COPYLORA_HOME": str(tmp_path / "state")}
    for argv in (["--help"], ["queue"]):
        done = subprocess.run([sys.executable, "-m", "copylora_tui.cli.main", *argv], capture_output=True, env=env, timeout=120)
        assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")
        assert done.stdout.decode(encoding)  # what it wrote is that encoding's, whole


def test_the_app_without_a_terminal_says_so_instead_of_drawing_into_a_pipe(tmp_path, capsys):
    """`ssh box copylora` without -t, cron, a Slurm batch script: the app drew itself into the
    pipe or file and waited for keys until killed."""
    import os
    import subprocess
    import sys

    from copylora_tui.cli.main import EXIT_USAGE, main

    assert main(["--projects", str(tmp_path)]) == EXIT_USAGE  # pytest's captured streams are no terminal
    assert "the app needs a terminal, and this input and output is not one; over SSH: `ssh -t HOST copylora`" in capsys.readouterr().err
    env = {**os.environ, "COPYLORA_HOME": str(tmp_path / "state")}
    done = subprocess.run([sys.executable, "-m", "copylora_tui.cli.main"], stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=60)
    assert done.returncode == EXIT_USAGE and done.stdout == b"" and b"needs a terminal" in done.stderr


def test_misplaced_inputs_are_said_as_what_they_are(tmp_path, capsys, monkeypatch):
    """An audit of 2026-12-07: a folder or /dev/null given as a kohya config was "no such file";
    a file where a project's picture folder goes "folder not found"; `run nosuch` said the name
    twice; `merge --project` before training blamed --models, which was never given."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "img").mkdir()
    for given, says in (("img", "copylora: img: is a folder, not a file"),
                        ("/dev/null", "copylora: /dev/null: is not a regular file (a pipe or a device?)")):
        assert main(["import-kohya", given, "--into", "x"]) == EXIT_USAGE
        assert capsys.readouterr().err.strip() == says
    assert main(["run", "nosuch", "--no_worker"]) == EXIT_USAGE
    assert capsys.readouterr().err.strip() == "copylora: nosuch: no such project folder"
    root = copy_example(tmp_path)
    assert main(["merge", "--project", str(root)]) == EXIT_USAGE
    assert one_line(capsys.readouterr().err) == (f"copylora: --project: not trained yet: no example-monochrome_B.safetensors, "
                                                 f"example-monochrome_A.safetensors in {root / 'output'}; `copylora run {root}` trains and merges")
    a = next((root / "a").iterdir())
    moved = tmp_path / "a.png"
    a.rename(moved)
    (root / "a").rmdir()
    moved.rename(root / "a")  # the picture where its folder goes
    assert main(["check", str(root)]) == EXIT_USAGE
    assert f"a.folder: {root / 'a'} is a file, not a folder" in capsys.readouterr().err


def test_the_app_on_a_dumb_terminal_says_so_instead_of_drawing_escapes_into_it(tmp_path, capsys, monkeypatch):
    """TERM=dumb (Emacs' shell-mode, an IDE's console) is a terminal that cannot draw: the app
    sent it full-screen 24-bit colour escapes, shown as text."""
    import copylora_tui.cli.terminal_text as terminal_text
    from copylora_tui.cli.main import EXIT_USAGE, main

    monkeypatch.setattr(terminal_text, "is_terminal", lambda stream: True)
    monkeypatch.setenv("TERM", "dumb")
    assert main(["--projects", str(tmp_path)]) == EXIT_USAGE
    assert "the app needs a terminal that draws (TERM=dumb here" in capsys.readouterr().err
