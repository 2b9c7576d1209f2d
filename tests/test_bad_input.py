"""Bad input fails before the work, with one clear line (issue 12).

Each case was reproduced on the code before the fix: it passed ``check`` and failed after
training started (or allocated terabytes, or trained to the end and lost the weights).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest

from copylora_tui.cli.main import EXIT_USAGE, main
from engine.project.folder import load_project
from tests.helpers import REPO, copy_example, write_png

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402


def set_keys(root, table: str, **values) -> None:
    """Replace (or add) keys of one table of the project's TOML, as a user's editor would."""
    toml = root / "copylora.toml"
    lines = toml.read_text().splitlines()
    start = lines.index(f"[{table}]")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    for key, value in values.items():
        found = [i for i in range(start, end) if lines[i].split("=")[0].strip() == key]
        if found:
            lines[found[0]] = f"{key} = {value}"
        else:
            lines.insert(start + 1, f"{key} = {value}")
            end += 1
    toml.write_text("\n".join(lines) + "\n")


def check(root, capsys) -> tuple[int, str]:
    code = main(["check", str(root)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# ----------------------------------------------------------------------------- numbers


def test_nan_inf_and_absurd_values_are_validation_errors(tmp_path, capsys):
    root = copy_example(tmp_path)
    set_keys(root, "train", learning_rate="nan", network_alpha="inf", network_dim="1e11", noise_offset="-inf")
    set_keys(root, "sample", strengths="[0.0, nan]", size="[100000, 512]")
    set_keys(root, "merge", ratios="[1.0, -inf]")
    code, out = check(root, capsys)
    assert code == EXIT_USAGE, out
    assert "train.learning_rate: must be a finite number, got nan" in out
    assert "train.network_alpha: must be a finite number, got inf" in out
    assert "train.network_dim: must be at most 1_280, got 100000000000" in out
    assert "sample.size: each side must be at most 4096 pixels" in out
    assert "Traceback" not in out and "internal error" not in out


def test_sample_size_not_a_multiple_of_8_fails_at_check(tmp_path, capsys):
    """600x900 passed check and failed the preview after both trainings (GPU acceptance run)."""
    root = copy_example(tmp_path)
    set_keys(root, "sample", size="[600, 900]")
    code, out = check(root, capsys)
    assert code == EXIT_USAGE, out
    assert "sample.size: 600x900: both sides must be multiples of 8 (pictures are drawn in 8-pixel cells), e.g. 600x896" in out
    set_keys(root, "sample", size="[600, 896]")
    assert check(root, capsys)[0] == 0


def test_semantic_numbers_finite_and_bounded(tmp_path, capsys):
    root = copy_example(tmp_path)
    set_keys(root, "sample", strengths="[0.0, nan]")
    set_keys(root, "merge", ratios="[1.0, -inf]")
    set_keys(root, "train", optimizer_args="{ weight_decay = nan }")
    code, out = check(root, capsys)
    assert code == EXIT_USAGE
    assert "sample.strengths[1]: must be a finite number" in out
    assert "merge.ratios[1]: must be a finite number" in out
    assert "train.optimizer_args.weight_decay: must be a finite number" in out


def test_rank_bounded_by_the_base_models_layers(tmp_path, capsys):
    root = copy_example(tmp_path)
    set_keys(root, "train", network_dim="200", conv_dim="500")
    code, out = check(root, capsys)
    assert code == EXIT_USAGE
    # the tiny model's widest layer is 96 channels (SD1.5's: 1280)
    assert "train.network_dim: 200 is more than this base model's layers can use" in out and "at most 96" in out
    assert "train.conv_dim: 500 is more than this base model's convolutions can use" in out


def test_empty_required_number_says_required(tmp_path):
    from engine.errors import Problem
    from engine.project.validate import coerce_value

    problems: list[Problem] = []
    coerce_value(None, "int", {}, "train.network_dim", problems)
    assert str(problems[0]) == "train.network_dim: required: an integer"


# ----------------------------------------------------------------------------- the base model


def sd1_tensors() -> dict:
    """The smallest state dict that reads as an SD1 single-file checkpoint."""
    return {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(8, 768),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(4, 8),
    }


class Boom:
    """A pickle payload whose loading would run a command (never executed by the check)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def make_bases(folder):
    folder.mkdir()
    good = folder / "good.safetensors"
    save_file(sd1_tensors(), str(good))
    data = good.read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) - 100])
    (folder / "random.safetensors").write_bytes(os.urandom(4096))
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)}, str(folder / "a_lora.safetensors"))
    write_png(folder / "picture.png")
    shutil.copy(folder / "picture.png", folder / "renamed.safetensors")
    torch.save({"state_dict": {k: v for k, v in sd1_tensors().items()}, "global_step": 3}, folder / "plain.ckpt")
    with open(folder / "evil.ckpt", "wb") as handle:
        pickle.dump({"state_dict": {"model.diffusion_model.x": 1}, "payload": Boom(str(folder / "pwned"))}, handle, protocol=2)
    torch.save({"state_dict": sd1_tensors(), "callbacks": Boom(str(folder / "pwned"))}, folder / "evil_zip.ckpt")
    torch.save({"something": torch.zeros(2)}, folder / "not_sd.ckpt")
    (folder / "vae_only.safetensors").write_bytes(b"")
    save_file({"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3)}, str(folder / "vae_only.safetensors"))
    diffusers = folder / "diffusers"
    (diffusers / "unet").mkdir(parents=True)
    (diffusers / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (diffusers / "unet" / "config.json").write_text(json.dumps({"in_channels": 4, "cross_attention_dim": 768, "block_out_channels": [32]}))
    return folder


@pytest.mark.parametrize("base, message", [
    ("truncated.safetensors", "truncated: "),
    ("random.safetensors", "not a safetensors file"),
    ("a_lora.safetensors", "a_lora.safetensors is a LoRA (2 LoRA tensors"),
    ("renamed.safetensors", "not a safetensors file (a PNG image)"),
    ("evil.ckpt", "refused: loading this .ckpt would unpickle arbitrary Python objects (posix.system)"),
    ("evil_zip.ckpt", "refused: loading this .ckpt would unpickle arbitrary Python objects"),
    ("not_sd.ckpt", "no U-Net weights"),
    ("vae_only.safetensors", "not a Stable Diffusion checkpoint"),
    ("diffusers", "unet/ has no weights file"),
    ("picture.png", "expected a .safetensors checkpoint or a diffusers folder; this is a PNG image"),
])
def test_unusable_base_model_fails_at_check(tmp_path, capsys, base, message):
    bases = make_bases(tmp_path / "bases")
    root = copy_example(tmp_path)
    set_keys(root, "project", base_model=json.dumps(str(bases / base)))
    code, out = check(root, capsys)
    assert code == EXIT_USAGE, out
    assert "project.base_model: " in out and message in out, out
    assert "\x1b" not in out and "Traceback" not in out
    assert not (bases / "pwned").exists()  # the pickle was read, never run


def test_good_single_files_pass_check_and_family_must_match(tmp_path, capsys):
    bases = make_bases(tmp_path / "bases")
    root = copy_example(tmp_path)
    for base in ("good.safetensors", "plain.ckpt"):
        set_keys(root, "project", base_model=json.dumps(str(bases / base)))
        code, out = check(root, capsys)
        assert code == 0, out
    set_keys(root, "project", base_model=json.dumps(str(bases / "good.safetensors")), model_family='"sdxl"')
    code, out = check(root, capsys)
    assert code == EXIT_USAGE and "project.model_family: 'sdxl', but good.safetensors is an sd1 model" in out


def test_check_of_a_single_file_base_imports_no_torch(tmp_path):
    bases = make_bases(tmp_path / "bases")
    root = copy_example(tmp_path)
    set_keys(root, "project", base_model=json.dumps(str(bases / "good.safetensors")))
    probe = ("import sys, json\nfrom copylora_tui.cli.main import main\n"
             f"code = main(['check', {str(root)!r}])\nprint(json.dumps([code, 'torch' in sys.modules]))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [0, False], result.stderr


# ----------------------------------------------------------------------------- output folder


@pytest.mark.parametrize("output_dir, message", [
    ("copylora.toml/out", "lies under the file"),
    ("copylora.toml", "is a file, not a folder"),
    ("/proc/copylora-out", "kernel's /proc filesystem"),
    ("/sys/out", "kernel's /sys filesystem"),
])
def test_output_dir_must_be_writable(tmp_path, capsys, output_dir, message):
    root = copy_example(tmp_path)
    set_keys(root, "project", output_dir=json.dumps(output_dir))
    code, out = check(root, capsys)
    assert code == EXIT_USAGE and "project.output_dir: " in out and message in out, out


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: mode bits do not bind it")
def test_output_dir_without_write_permission(tmp_path, capsys):
    root = copy_example(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    set_keys(root, "project", output_dir=json.dumps(str(locked / "out")))
    code, out = check(root, capsys)
    assert code == EXIT_USAGE and "is not writable" in out


def test_run_refuses_before_queueing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COPYLORA_HOME", str(tmp_path / "state"))
    root = copy_example(tmp_path)
    set_keys(root, "project", output_dir='"copylora.toml/out"')
    assert main(["run", str(root), "--no-worker"]) == EXIT_USAGE
    assert "project.output_dir" in capsys.readouterr().err
    from engine.jobs.queue import Queue

    assert Queue(tmp_path / "state").jobs() == []


def test_final_save_failure_keeps_the_trained_weights(tmp_path, monkeypatch):
    """The output folder breaks during the run (here: a folder where the LoRA goes)."""
    from engine.project.plan import make_plan
    from engine.train.rescue import rescue_folder
    from engine.train.trainer import TrainingError, train

    root = copy_example(tmp_path)
    plan = make_plan(load_project(root), max_steps=2)
    plan.side("a").lora_path.mkdir(parents=True)  # os.replace onto a folder fails
    lines: list[str] = []
    with pytest.raises(TrainingError) as info:
        train(plan, "a", log=lines.append)
    message = str(info.value)
    state = plan.side("a").run_dir / "state-00000002.pt"
    rescued = rescue_folder() / plan.side("a").lora_path.name
    assert "training finished (2 steps) but could not write" in message
    assert str(state) in message and state.is_file()
    assert str(rescued) in message and rescued.is_file()
    from engine.lora.files import load_lora_file

    assert load_lora_file(rescued).metadata["copylora_steps"] == "2"
    rescued.unlink()


def test_nan_loss_does_not_name_a_checkpoint_that_does_not_exist(tmp_path, monkeypatch):
    from engine.project.plan import make_plan
    from engine.train.trainer import TrainingError, train
    from tests.helpers import diverge_at

    root = copy_example(tmp_path)
    plan = make_plan(load_project(root), max_steps=3)
    diverge_at(monkeypatch, None)
    with pytest.raises(TrainingError) as info:
        train(plan, "a", log=lambda _l: None)
    assert "no checkpoint had been written yet" in str(info.value) and "runs/A is kept" not in str(info.value)


# ----------------------------------------------------------------------------- merge


@pytest.fixture
def loras(tmp_path):
    g = torch.Generator().manual_seed(1)
    mods = {
        "lora_unet_down_blocks_0_attentions_0_proj_in": (torch.randn(6, 32, generator=g), torch.randn(32, 6, generator=g), 6.0),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (torch.randn(6, 32, generator=g), torch.randn(32, 6, generator=g), 6.0),
    }
    from engine.lora.files import save_lora_file

    b = save_lora_file(tmp_path / "B.safetensors", mods, {"ss_base_model_version": "sd_v1"}, "float")
    fewer = dict(list(mods.items())[:1])
    a = save_lora_file(tmp_path / "A.safetensors", fewer, {"ss_base_model_version": "sd_v1"}, "float")
    return b, a


def test_merge_new_rank_zero_is_an_error(loras, tmp_path, capsys):
    b, a = loras
    for flag in ("--new_rank", "--new_conv_rank"):
        code = main(["merge", "--save_to", str(tmp_path / "m.safetensors"), "--models", str(b), str(a), "--ratios", "1", "-1", flag, "0"])
        assert code == EXIT_USAGE and f"{flag}: must be greater than 0, got 0" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()


def test_merge_caps_the_rank_says_so_once_and_records_it(loras, tmp_path, capsys):
    from engine.lora.files import load_lora_file

    b, a = loras
    out = tmp_path / "m.safetensors"
    assert main(["merge", "--save_to", str(out), "--models", str(b), str(a), "--ratios", "1", "-1", "--new_rank", "100000"]) == 0
    err = capsys.readouterr().err
    assert err.count("new_rank 100000 is more than the inputs hold: written at rank 12") == 1
    # the module sets differ: said, with the module named
    assert "A.safetensors lacks 1 module(s) that another input has (lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q)" in err
    merged = load_lora_file(out)
    assert merged.metadata["ss_network_dim"] == "12" and merged.metadata["ss_network_alpha"] == "12.0"
    assert max(w.rank for w in merged.modules.values()) == 12


@pytest.mark.parametrize("name, message", [
    ("picture.png", "not a LoRA file (a PNG image)"),
    ("picture.safetensors", "not a safetensors file (a PNG image)"),
    ("evil.pt", "refused: loading it would unpickle arbitrary Python objects (posix.system)"),
])
def test_non_lora_inputs_get_our_own_one_line_error(loras, tmp_path, capsys, name, message):
    b, _a = loras
    bad = tmp_path / name
    if name.endswith(".pt"):
        with open(bad, "wb") as handle:
            pickle.dump(Boom(str(tmp_path / "pwned")), handle, protocol=2)
    else:
        shutil.copy(write_png(tmp_path / "any.png"), bad)
    code = main(["merge", "--save_to", str(tmp_path / "m.safetensors"), "--models", str(b), str(bad), "--ratios", "1", "-1"])
    err = capsys.readouterr().err
    assert code != 0 and message in err, err
    assert "weights_only" not in err.replace("weights_only=True", "") and "\x1b" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "pwned").exists()


def test_plain_text_strips_terminal_escapes():
    from engine.errors import first_line, plain_text

    assert plain_text("a \x1b[1mbold\x1b[0m word") == "a bold word"
    assert first_line(RuntimeError("\n \x1b[31mred\x1b[0m line\nsecond")) == "red line"


# ----------------------------------------------------------------------------- pictures


def test_small_pictures_warn_in_check_and_json(tmp_path, capsys):
    root = copy_example(tmp_path)
    for old in (root / "a").iterdir():
        old.unlink()
    write_png(root / "a" / "tiny.png", size=(1, 1))
    set_keys(root, "train", resolution="[576, 896]")
    code, out = check(root, capsys)
    assert code == 0
    assert "warning: a.folder tiny.png: 1×1 is enlarged 704.0× to its 704×704 training bucket" in out
    assert main(["check", str(root), "--json"]) == 0
    warnings = json.loads(capsys.readouterr().out)["warnings"]
    assert len(warnings) == 3 and "b.folder monochrome.png: 128×192 is enlarged" in warnings[1]
    assert "a.folder tiny.png is 1×1 but b.folder monochrome.png is 128×192" in warnings[2]  # A and B apart (issue 29)


def test_decompression_bomb_limits_are_our_words(tmp_path, capsys, monkeypatch):
    import warnings as pywarnings

    from PIL import Image

    root = copy_example(tmp_path)
    # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that. The example's 128×192
    # pictures (24576 px) are made "huge" by lowering the limit instead of writing 200 Mpx.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)
    with pywarnings.catch_warnings():
        pywarnings.simplefilter("error")  # any Python warning text would fail the test
        code, out = check(root, capsys)
    assert code == 0 and "128×192 (0 Mpx) is very large" in out
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    code, out = check(root, capsys)
    assert code == EXIT_USAGE and "a.folder colour.png: too large to decode safely" in out and "downscale it first" in out


def test_small_picture_warning_reaches_the_form_and_the_training_log(tmp_path):
    from copylora_tui.screens.project import plan_summary
    from engine.project.plan import make_plan
    from engine.train.trainer import train
    from tests.helpers import rendered

    root = copy_example(tmp_path)
    for old in (root / "a").iterdir():
        old.unlink()
    write_png(root / "a" / "small.png", size=(32, 48))
    project = load_project(root)
    assert "⚠ a.folder small.png: 32×48 is enlarged 4.0× to its 128×192 training bucket" in rendered(plan_summary(project))
    lines: list[str] = []
    train(make_plan(project, max_steps=1), "a", log=lines.append)
    assert any(line.startswith("warning: a.folder small.png: 32×48 is enlarged") for line in lines)


def test_project_list_reads_picture_headers_only(tmp_path):
    """The app's project list must come quickly: sizes from headers (check decodes fully)."""
    from engine.errors import ValidationError

    root = copy_example(tmp_path)
    picture = root / "a" / "colour.png"
    picture.write_bytes(picture.read_bytes()[:-40])  # pixel data cut short, header intact
    assert load_project(root, decode_images=False).name == "example-monochrome"
    with pytest.raises(ValidationError, match="corrupt image"):
        load_project(root)
