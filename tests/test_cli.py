"""The command line: exit codes, one-line errors, and the commands of the project issue."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from copylora_tui.cli.main import EXIT_FAILED, EXIT_USAGE, main, run_guarded
from engine.errors import CopyloraError
from tests.helpers import REPO, copy_example, mount_tmpfs, one_line, snapshot, write_png


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "copylora_tui", *args], capture_output=True, text=True, cwd=cwd or REPO, timeout=120
    )


def test_help_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("new", "check", "import-kohya"):
        assert command in result.stdout


def test_every_help_fits_80_columns(capsys, monkeypatch):
    """`copylora --help` was 98 columns wide, bake's 117, extract's 174: raw text as written."""
    from rich.cells import cell_len

    from copylora_tui.cli.main import build_parser

    monkeypatch.setenv("COLUMNS", "80")
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction)).choices
    for command in ["", *commands]:
        with pytest.raises(SystemExit):
            main([command, "--help"] if command else ["--help"])
        wide = [line for line in capsys.readouterr().out.splitlines() if cell_len(line) > 80]
        assert not wide, (command, wide)


def test_every_environment_variable_read_is_in_help_and_readme():
    """The variables the code reads (COPYLORA_*, found in the source) are listed by `copylora
    --help` and named in the README; the two the worker sets for its jobs are internal."""
    import re

    internal = {"COPYLORA_THREADS_AUTO", "COPYLORA_JOBS_AT_ONCE"}
    read = set()
    for path in [*(REPO / "engine").rglob("*.py"), *(REPO / "copylora_tui").rglob("*.py")]:
        read |= set(re.findall(r"\bCOPYLORA_[A-Z_]+\b", path.read_text(encoding="utf-8")))
    read -= internal
    assert {"COPYLORA_HOME", "COPYLORA_FONT", "COPYLORA_THREADS"} <= read
    help_text = run_cli("--help").stdout.split("environment:", 1)[1]
    listed = set(re.findall(r"^  (COPYLORA_[A-Z_]+) ", help_text, flags=re.M))
    assert listed == read, (sorted(read - listed), sorted(listed - read))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert all(name in readme for name in read), sorted(name for name in read if name not in readme)


def test_check_valid_project_prints_plan(capsys, tmp_path):
    root = copy_example(tmp_path)
    assert main(["check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "128x192" in out and "example-monochrome.safetensors" in out
    assert main(["check", str(root), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["sides"]["a"]["total_steps"] == 200


def test_check_says_a_copied_project_kept_the_name_of_one_beside_it(capsys, tmp_path):
    """`cp -r mono night` keeps [project] name: both write mono_A.safetensors, mono.safetensors.
    check says so, naming the other folder (one named by its folder counts under that name,
    an unreadable one is passed over); a project whose name is its own says nothing."""
    root = copy_example(tmp_path)  # tmp_path/example-monochrome, name "example-monochrome"
    shutil.copytree(root, tmp_path / "night")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "copylora.toml").write_text("[project\nname = ")
    assert main(["check", str(tmp_path / "night")]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "also the name of" in line]
    assert warned == [f"warning: project.name: 'example-monochrome' is also the name of example-monochrome/ beside it (a copied "
                      f"project keeps its [project] name): their LoRAs and grids have the same file names "
                      f"(example-monochrome_A.safetensors …); set [project] name in {tmp_path / 'night' / 'copylora.toml'}"]
    toml = tmp_path / "night" / "copylora.toml"
    toml.write_text(toml.read_text().replace('name = "example-monochrome"', 'name = ""'))  # named by its folder: night
    assert main(["check", str(tmp_path / "night")]) == 0 and "also the name of" not in capsys.readouterr().err
    shutil.copytree(tmp_path / "night", tmp_path / "day")
    (tmp_path / "day" / "copylora.toml").write_text(toml.read_text().replace('name = ""', 'name = "night"'))
    assert main(["check", str(tmp_path / "night")]) == 0 and "is also the name of day/" in capsys.readouterr().err
    (tmp_path / "day" / "copylora.toml").write_text(toml.read_text())  # day, named by its folder: the name night/ takes now
    toml.write_text(toml.read_text().replace('name = ""', 'name = "day"'))
    assert main(["check", str(tmp_path / "night")]) == 0 and "'day' is also the name of day/" in capsys.readouterr().err


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


@pytest.mark.parametrize("given", ["-1,0,1", "-0.5, 0, 0.5", "-1e-1,1"])
def test_a_list_of_numbers_starting_negative_is_a_value_not_a_flag(given):
    """`sample --strengths -1,0,1` said "expected one argument": argparse took the list for a flag."""
    from copylora_tui.cli.main import build_parser

    assert build_parser().parse_args(["sample", "proj", "--strengths", given]).strengths == given


def test_a_picture_named_with_a_leading_dash_is_told_how_to_write(tmp_path, capsys, monkeypatch):
    """`new mono --a -dash.png` said only "argument --a: expected one argument", after the user
    gave it one: argparse takes a value that starts with '-' for an option."""
    write_png(tmp_path / "-dash.png", size=(128, 192))
    with pytest.raises(SystemExit) as exit_:
        main(["new", str(tmp_path / "mono"), "--a", "-dash.png", "--b", str(tmp_path / "-dash.png")])
    assert exit_.value.code == EXIT_USAGE
    assert "(-dash.png starts with '-': write --a=-dash.png or --a ./-dash.png)" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert main(["new", str(tmp_path / "mono"), "--a=-dash.png", "--b", "./-dash.png"]) == 0
    with pytest.raises(SystemExit):  # a missing value is not given the hint
        main(["new", str(tmp_path / "other"), "--b", "x.png", "--a"])
    assert "starts with" not in capsys.readouterr().err


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


def test_the_global_options_after_the_command_too(tmp_path, monkeypatch, capsys):
    """`copylora new --projects DIR mono …` said "unrecognized arguments: --projects mono"; after
    the command it is taken, and one not given there leaves the one before the command alone."""
    from copylora_tui.cli.main import build_parser

    monkeypatch.chdir(tmp_path)
    a, b = write_png(tmp_path / "a.png"), write_png(tmp_path / "b.png", colour=(128, 128, 128))
    projects = tmp_path / "many"
    assert main(["new", "--projects", str(projects), "mono", "--a", str(a), "--b", str(b)]) == 0
    assert (projects / "mono" / "copylora.toml").is_file() and not (tmp_path / "projects").exists()
    capsys.readouterr()
    assert main(["check", "mono", "--json", "--projects", str(projects)]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "mono"
    parse = build_parser().parse_args
    assert (parse(["--projects", "x", "--debug", "queue"]).projects, parse(["--projects", "x", "--debug", "queue"]).debug) == ("x", True)
    assert (parse(["queue", "--debug"]).projects, parse(["queue", "--debug"]).debug) == ("projects", True)
    assert parse(["--projects", "x", "check", "m", "--projects", "y"]).projects == "y"
    assert parse(["check", "m"]).debug is False


def test_a_project_is_found_by_the_name_new_gave_it(tmp_path, monkeypatch, home, capsys):
    """`copylora new mono` makes projects/mono; every command that takes a project then takes
    `mono` (it said "mono: no such project folder"). A path, or a name that is here, is itself."""
    monkeypatch.chdir(tmp_path)
    a, b = write_png(tmp_path / "a.png"), write_png(tmp_path / "b.png", colour=(128, 128, 128))
    projects = tmp_path / "many"
    assert main(["--projects", str(projects), "new", "mono", "--a", str(a), "--b", str(b)]) == 0
    capsys.readouterr()
    assert main(["--projects", str(projects), "check", "mono", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "mono"
    assert main(["--projects", str(projects), "run", "mono", "--no_worker"]) == 0  # run's PROJECT… too
    assert f"{projects / 'mono'}: train" in capsys.readouterr().out
    assert main(["--projects", str(projects), "stats", "mono"]) == EXIT_USAGE  # found; its result is not made yet
    assert f"{projects / 'mono' / 'output' / 'mono.stats.json'}: no merge statistics" in capsys.readouterr().err
    # Without --projects the name is looked for under ./projects, as `new` would have made it.
    assert main(["check", "mono"]) == EXIT_USAGE
    assert "mono: no such project folder" in capsys.readouterr().err
    # A folder of that name here wins: the name means what it meant before.
    shutil.copytree(projects / "mono", tmp_path / "mono")
    assert main(["--projects", str(projects), "run", "mono", "--no_worker", "--force"]) == 0
    out = capsys.readouterr().out
    assert "mono: train" in out and str(projects) not in out


def test_a_japanese_project_copied_from_a_mac_is_found_by_its_name_as_typed(tmp_path, monkeypatch, home, capsys):
    """A folder copied from a Mac spells が as か + ゛ (NFD); the name typed on Linux is one code
    point (NFC). The two look the same in ls and in the app, but `check P/がぎぐ` said "no such
    project folder", and `new がぎぐ` made a second folder that looks like the first."""
    import unicodedata

    monkeypatch.chdir(tmp_path)
    a, b = write_png(tmp_path / "a.png"), write_png(tmp_path / "b.png", colour=(128, 128, 128))
    typed, on_disk = unicodedata.normalize("NFC", "がぎぐ"), unicodedata.normalize("NFD", "がぎぐ")
    projects = tmp_path / "P"
    assert main(["--projects", str(projects), "new", typed, "--a", str(a), "--b", str(b)]) == 0
    (projects / typed).rename(projects / on_disk)  # as unzipped from a Mac
    capsys.readouterr()
    for given in (typed, f"P/{typed}", f"P/{typed}/copylora.toml", f"./P/{typed}"):
        assert main(["--projects", str(projects), "check", given, "--json"]) == 0, capsys.readouterr().err
        assert json.loads(capsys.readouterr().out)["name"] == typed  # the name the file gives, as written there
    assert main(["--projects", str(projects), "new", typed, "--a", str(a), "--b", str(b)]) == EXIT_USAGE
    assert f"{projects / on_disk} already exists: the same name in another Unicode form (NFD" in capsys.readouterr().err
    assert os.listdir(projects) == [on_disk]


def test_the_command_new_suggests_runs_as_pasted_into_a_shell(tmp_path, monkeypatch, home, capsys):
    """A project called "my style" is a name users give: the suggested `copylora check projects/my
    style` ran `check` on "projects/my" and "style". Printed quoted, pasted as printed, it runs."""
    import shlex

    monkeypatch.chdir(tmp_path)
    a, b = write_png(tmp_path / "a.png"), write_png(tmp_path / "b.png", colour=(128, 128, 128))
    assert main(["new", "my style", "--a", str(a), "--b", str(b)]) == 0
    said = capsys.readouterr().out.splitlines()[-1]
    assert said == "edit 'projects/my style/copylora.toml', then: copylora check 'projects/my style'"
    pasted = shlex.split(said.split("then: ")[1])
    assert pasted[0] == "copylora" and main(pasted[1:]) == 0
    capsys.readouterr()
    assert main(["new", "plain", "--a", str(a), "--b", str(b)]) == 0  # nothing to quote: printed as before
    assert capsys.readouterr().out.splitlines()[-1] == "edit projects/plain/copylora.toml, then: copylora check projects/plain"


def test_new_refuses_a_name_that_cannot_name_files(tmp_path, capsys):
    a, b = write_png(tmp_path / "a.png"), write_png(tmp_path / "b.png", colour=(128, 128, 128))
    for name, says in (("two\nlines", "no '\\n'"), ("a:b", "no ':'"), (".hidden", "must not start with '.'"),
                       ("-x", "must not start with '-': every command would read it as an option (`copylora check -x`)")):
        assert main(["--projects", str(tmp_path / "p"), "new", "--a", str(a), "--b", str(b), "--", name]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert err.startswith("copylora: NAME: ") and says in err, err
    assert not (tmp_path / "p").exists()
    # "" named the projects folder itself ("... already exists"), and --base "" the current folder
    for argv, says in ((["new", "", "--a", str(a), "--b", str(b)], "copylora: NAME: is empty"),
                       (["new", "q", "--a", str(a), "--b", str(b), "--base", " "], "copylora: --base: is empty")):
        assert main(["--projects", str(tmp_path / "p"), *argv]) == EXIT_USAGE
        assert capsys.readouterr().err.strip() == says
    # a projects folder that cannot take it is the input to fix (exit 2), said as what it is
    (tmp_path / "afile").write_text("")
    assert main(["--projects", str(tmp_path / "afile"), "new", "q", "--a", str(a), "--b", str(b)]) == EXIT_USAGE
    assert capsys.readouterr().err.strip() == f"copylora: NAME: {tmp_path / 'afile'} is a file, not a folder"
    assert main(["--projects", "/proc", "new", "q", "--a", str(a), "--b", str(b)]) == EXIT_USAGE
    assert "cannot write in /proc" in capsys.readouterr().err


def test_every_input_error_is_exit_2_and_only_those(capsys):
    """README's contract for scripts: exit 2 means fix the input, 1 that the work failed. Every
    engine error about an input (a picture, a LoRA, a base model, a merge's inputs, a device
    asked for) is an InputError; failures of the work are not."""
    from engine.errors import InputError, LoRAFileError, ModelError
    from engine.jobs.queue import QueueError
    from engine.lbw_vectors import BlockWeightError
    from engine.merge.bake import BakeError
    from engine.merge.extract import ExtractError
    from engine.merge.svd import MergeError
    from engine.train.optim import OptimizerError
    from engine.train.results import TrainingError
    from engine.train.sample import SampleError
    from engine.train.teacher import TeacherImageError

    class Args:
        debug = False

    for kind in (LoRAFileError, ModelError, MergeError, ExtractError, SampleError, TeacherImageError, OptimizerError):
        def given(_args, kind=kind):
            raise kind(f"{kind.__name__} said this")

        assert run_guarded(given, Args()) == EXIT_USAGE, kind
        assert capsys.readouterr().err.strip() == f"copylora: error: {kind.__name__} said this"
    assert issubclass(BlockWeightError, InputError)
    for kind in (TrainingError, BakeError, QueueError):
        assert not issubclass(kind, InputError), kind


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


# ----------------------------------------------------------------------------- the destination is checked before the work


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
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    yield from mount_tmpfs(tmp_path / "ro", "64k", "ro,")



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


# ----------------------------------------------------------------------------- stats


def test_stats_unknown_block_is_a_usage_error_naming_the_blocks(merged, capsys):
    assert main(["stats", str(merged), "--block", "FOO"]) == EXIT_USAGE
    line = one_line(capsys.readouterr().err)
    assert "--block: no module of this file is in 'FOO'; its blocks (LBW naming): " in line
    assert "IN01" in line and "OUT03" in line and "BASE" in line and "in0" not in line
    assert main(["stats", str(merged), "--blocks", "unet", "--block", "FOO"]) == EXIT_USAGE
    line = one_line(capsys.readouterr().err)
    assert "(U-Net naming)" in line and "in0" in line and "IN01" not in line
    assert main(["stats", str(merged), "--block", ""]) == EXIT_USAGE  # an empty one showed every block
    assert "--block: no module of this file is in ''" in one_line(capsys.readouterr().err)
    assert main(["stats", str(merged), "--block", "in0", "--json"]) == 0  # the other naming still works



def test_stats_at_80_columns_keeps_every_column_readable(merged, capsys, monkeypatch):
    """At 80 columns the cos column got one cell: each row ended in a bare "+"."""
    import re

    monkeypatch.setenv("COLUMNS", "80")
    assert main(["stats", str(merged)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("module"))
    assert header.split() == ["module", "block", "kind", "ranks", "kept", "energy", "error", "‖result‖", "cos"]
    rows = [line for line in lines if re.match(r"(te|down|up|mid)\S*\s+(BASE|IN|OUT|M)", line)]
    assert len(rows) == 3 and all(len(line) <= 80 and re.search(r" [+-]\d\.\d{3}$", line) for line in rows), rows


def test_stats_json_names_blocks_as_the_table_does(merged, capsys):
    assert main(["stats", str(merged), "--json", "--top", "0"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["block"] for r in rows} == {"BASE", "IN01", "OUT03"}
    assert all(r["block"] == r["lbw_block"] and r["unet_block"] for r in rows)
    assert main(["stats", str(merged), "--json", "--top", "0", "--blocks", "unet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(r["block"] == r["unet_block"] != r["lbw_block"] for r in rows)
    for top in ("-1", "x"):  # -1 dropped the last row (Python's slicing)
        with pytest.raises(SystemExit) as caught:
            main(["stats", str(merged), "--top", top])
        assert caught.value.code == 2 and "--top" in capsys.readouterr().err


# ----------------------------------------------------------------------------- usage errors and output


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



def test_new_help_lists_every_builtin_base(capsys):
    from engine.formats.model_files import BUILTIN_MODELS

    with pytest.raises(SystemExit):
        main(["new", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    for name in BUILTIN_MODELS:
        assert f'"{name}"' in text



def test_queue_in_a_pipe_keeps_full_names(tmp_path, home):
    name = "example-monochrome-with-a-project-name-far-longer-than-eighty-columns-allow"
    root = copy_example(tmp_path, name)
    assert main(["run", str(root), "--no-worker"]) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    shown = subprocess.run([sys.executable, "-m", "copylora_tui", "queue"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert name in shown.stdout and "…" not in shown.stdout
    assert "queued" in shown.stdout


@pytest.mark.parametrize("columns", ["0", "-5", "abc", ""])
def test_a_columns_that_is_no_width_is_ignored(tmp_path, home, columns):
    """COLUMNS=0 (a broken shell profile, a CI runner) made Rich print nothing at all, exit 0:
    `copylora queue` showed no jobs and `copylora run --wait` said nothing. Now it is ignored."""
    name = "example-monochrome-" + "long" * 20
    root = copy_example(tmp_path, name)
    assert main(["run", str(root), "--no-worker"]) == 0
    env = {**{k: v for k, v in os.environ.items() if k != "LINES"}, "COLUMNS": columns}
    shown = subprocess.run([sys.executable, "-m", "copylora_tui", "queue"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert name in shown.stdout and "queued" in shown.stdout and "…" not in shown.stdout, shown.stdout
    env["COLUMNS"] = "60"  # a width is still a width
    shown = subprocess.run([sys.executable, "-m", "copylora_tui", "queue"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert max(len(line) for line in shown.stdout.splitlines()) <= 60


def test_stats_of_files_named_with_brackets_print_as_written(tmp_path, capsys, monkeypatch):
    """File and module names come from anyone's LoRA ("[Pony] style.safetensors"): printed as
    Rich markup they lost their brackets, and a "[/]" ended `copylora stats` with a MarkupError."""
    import json

    from tests.test_app_support import write_stats

    monkeypatch.setenv("COLUMNS", "240")
    path = write_stats(tmp_path / "[Pony] style.stats.json")
    document = json.loads(path.read_text())
    document["inputs"][0]["file"] = "b[/]c.safetensors"
    document["modules"][0]["name"] = "lora_unet_[/]odd"
    path.write_text(json.dumps(document))
    assert main(["stats", str(path), "--top", "50"]) == 0
    out = capsys.readouterr().out
    assert "[Pony] style.safetensors" in out and "b[/]c.safetensors" in out and "[/]odd" in out, out


def test_merge_suggests_its_stats_command_as_pasted_into_a_shell(loras, tmp_path, capsys):
    import shlex

    b, a = loras
    out = tmp_path / "my merge.safetensors"
    assert main(["merge", "--save_to", str(out), "--models", str(b), str(a), "--ratios", "1", "-1"]) == 0
    said = capsys.readouterr().out.splitlines()[-1]
    pasted = shlex.split(said.split("(", 1)[1].rstrip(")"))
    assert pasted == ["copylora", "stats", str(out)] and main(pasted[1:]) == 0
