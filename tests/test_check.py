"""`copylora check` refuses bad input before the work, with one clear line: numbers, the base
model, the output folder.

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
from tests.helpers import REPO, Boom, check, copy_example, set_keys, write_png

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

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


def test_optimizer_args_that_no_optimizer_takes_fail_at_check(tmp_path, capsys):
    """betas = [0.9] passed check and bitsandbytes' AdamW8bit, and failed at its first step (an
    IndexError); lr = ... is [train] learning_rate. Both refused before a job starts."""
    root = copy_example(tmp_path)
    set_keys(root, "train", optimizer_args="{ betas = [0.9], lr = 0.1, weight_decay = 0.1 }")
    code, out = check(root, capsys)
    assert code == EXIT_USAGE
    assert "train.optimizer_args.betas: betas are two numbers in [0, 1), e.g. [0.9, 0.999], got [0.9]" in out
    assert "train.optimizer_args.lr: lr is [train] learning_rate" in out and "weight_decay" not in out
    set_keys(root, "train", optimizer_args="{ betas = [0.9, 0.99], weight_decay = 0.1 }")
    assert check(root, capsys)[0] == 0



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
        "first_stage_model.encoder.conv_in.weight": torch.zeros(8, 3, 3, 3),
    }


def sdxl_tensors() -> dict:
    """The smallest state dict that reads as an SDXL single-file checkpoint."""
    return {**{k: v for k, v in sd1_tensors().items() if not k.startswith("cond_stage_model.")},
            "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(4, 8),
            "conditioner.embedders.1.model.token_embedding.weight": torch.zeros(4, 8)}


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
    save_file({k: v for k, v in sd1_tensors().items() if not k.startswith("first_stage_model.")}, str(folder / "no_vae.safetensors"))
    save_file({"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3)}, str(folder / "vae_only.safetensors"))
    save_file({k: v.to(torch.int8) if k.startswith("model.") else v for k, v in sd1_tensors().items()}, str(folder / "int8.safetensors"))
    # same architecture, another target: NoobAI-XL V-Pred (ComfyUI's v_pred/ztsnr keys: trained as sdxl-v), Playground v2.5
    # (EDM), an SD1 v-prediction model (refused)
    save_file({**sdxl_tensors(), "v_pred": torch.zeros(0), "ztsnr": torch.zeros(0)}, str(folder / "vpred_xl.safetensors"))
    save_file({**sd1_tensors(), "v_pred": torch.zeros(0)}, str(folder / "vpred_sd1.safetensors"))
    torch.save({"state_dict": {**sd1_tensors(), "v_pred": torch.zeros(0)}}, folder / "vpred_sd1.ckpt")
    save_file({**sdxl_tensors(), "edm_mean": torch.zeros(1, 4, 1, 1), "edm_std": torch.ones(1, 4, 1, 1)}, str(folder / "edm_xl.safetensors"))
    torch.save({"state_dict": {**sdxl_tensors(), "v_pred": torch.zeros(0)}}, folder / "vpred_xl.ckpt")
    torch.save({"state_dict": {k: v for k, v in sd1_tensors().items() if not k.startswith("first_stage_model.")}}, folder / "no_vae.ckpt")
    save_file({k.replace(".transformer.text_model.", ".transformer."): v for k, v in sd1_tensors().items()}, str(folder / "old_clip.safetensors"))
    save_file({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(4, 4),
               "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight": torch.zeros(4),
               "first_stage_model.decoder.conv_in.weight": torch.zeros(4, 16, 3, 3)}, str(folder / "sd35.safetensors"))
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(4, 4)}, str(folder / "flux1-dev.safetensors"))
    vpred_folder = folder / "vpred_diffusers"
    (vpred_folder / "scheduler").mkdir(parents=True)
    (vpred_folder / "unet").mkdir()
    (vpred_folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    (vpred_folder / "unet" / "config.json").write_text(json.dumps({"in_channels": 4, "addition_embed_type": "text_time"}))
    (vpred_folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "v_prediction"}))
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
    ("no_vae.safetensors", "no_vae.safetensors: it has no VAE weights (first_stage_model.*): a checkpoint saved without its VAE"),
    ("evil.ckpt", "refused: loading this .ckpt would unpickle arbitrary Python objects (posix.system)"),
    ("evil_zip.ckpt", "refused: loading this .ckpt would unpickle arbitrary Python objects"),
    ("not_sd.ckpt", "no U-Net weights"),
    ("vae_only.safetensors", "not a Stable Diffusion checkpoint"),
    ("int8.safetensors", "int8.safetensors: 2 of its weights are stored as I8 (e.g. model.diffusion_model.input_blocks.0.0.weight): "
                         "a quantized checkpoint"),
    ("diffusers", "unet/ has no weights file"),
    # these passed check and trained as epsilon: a LoRA of the wrong target, without a word
    # (an SDXL v-prediction model trains as such: test_vpred_sdxl_bases_pass_check_saying_so)
    ("vpred_sd1.safetensors", "vpred_sd1.safetensors: an SD1 model trained for v-prediction (its v_pred key; "
                              "e.g. NoobAI-XL V-Pred and other v-pred fine-tunes); copylora trains SD1 models for epsilon-prediction only"),
    ("vpred_sd1.ckpt", "vpred_sd1.ckpt: an SD1 model trained for v-prediction"),
    ("edm_xl.safetensors", "an SDXL model trained for the EDM objective (its edm_mean/edm_std keys; e.g. Playground v2.5); "
                           "copylora trains SDXL models for epsilon- or v-prediction only"),
    # these passed check and failed the training minutes later, in diffusers' words or ours
    ("old_clip.safetensors", "old_clip.safetensors: its text encoder is stored under an old key layout"),
    ("no_vae.ckpt", "no_vae.ckpt: it has no VAE weights"),
    # SD3 was "not a Stable Diffusion checkpoint: no CLIP text encoder weights"
    ("sd35.safetensors", "sd35.safetensors: unsupported checkpoint: an SD3/SD3.5 model (MMDiT: joint_blocks.*)"),
    ("flux1-dev.safetensors", "flux1-dev.safetensors: unsupported checkpoint: a Flux model"),
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


def test_vpred_sdxl_bases_pass_check_saying_so(tmp_path, capsys):
    """NoobAI-XL V-Pred's markers (and a diffusers folder's scheduler) were refused: they now train
    as v-prediction, and the plan says what the file says; model_family "sdxl" on one is the wrong target."""
    bases = make_bases(tmp_path / "bases")
    root = copy_example(tmp_path)
    for base in ("vpred_xl.safetensors", "vpred_xl.ckpt"):
        set_keys(root, "project", base_model=json.dumps(str(bases / base)))
        code, out = check(root, capsys)
        assert code == 0, out
    set_keys(root, "project", base_model=json.dumps(str(bases / "vpred_xl.safetensors")))
    code, out = check(root, capsys)
    assert "vpred_xl.safetensors, family auto (SDXL, v-prediction, zero-terminal SNR)" in " ".join(out.split()), out
    set_keys(root, "project", model_family='"sdxl-v"')
    assert check(root, capsys)[0] == 0
    set_keys(root, "project", model_family='"sdxl"')
    code, out = check(root, capsys)
    assert code == EXIT_USAGE and ("project.model_family: 'sdxl' is epsilon-prediction, but vpred_xl.safetensors says v-prediction "
                                   "(SDXL, v-prediction, zero-terminal SNR): use sdxl-v or auto") in " ".join(out.split()), out



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
    ("out\u0000put", "holds a NUL character (\\0), which no file name can"),  # was taken as valid: pathlib says such a path does not exist
])
def test_output_dir_must_be_writable(tmp_path, capsys, output_dir, message):
    root = copy_example(tmp_path)
    set_keys(root, "project", output_dir=json.dumps(output_dir))
    code, out = check(root, capsys)
    assert code == EXIT_USAGE and "project.output_dir: " in out and message in out, out



@pytest.mark.parametrize("target", ["loop", "elsewhere"])
def test_an_output_folder_that_is_a_broken_symlink_is_refused_by_check(tmp_path, capsys, target):
    """A link left dangling (its disk unmounted) or pointing at itself: `check` walked past it
    to its parent and said yes, and the first write failed (mkdir cannot make a folder where
    the link's name is)."""
    root = copy_example(tmp_path)
    link = root / "output"
    link.symlink_to(link if target == "loop" else tmp_path / "unmounted" / "out")
    code, out = check(root, capsys)
    assert code == EXIT_USAGE and "project.output_dir: " in out and "is a broken symlink (it points to" in out, out


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


def test_an_sd2_file_that_says_nothing_of_its_target_is_said_in_the_plan(tmp_path, capsys):
    """SD2's weights are the same for 768-v and 512-base: with model_family auto a file that says
    neither trained as v-prediction, the guess said only in the job's log. The plan says it now,
    and what an A1111 .yaml beside it says."""
    bases = tmp_path / "bases"
    bases.mkdir()
    sd2 = {**{k: v for k, v in sd1_tensors().items() if not k.startswith("cond_stage_model.")},
           "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(8, 1024),
           "cond_stage_model.model.token_embedding.weight": torch.zeros(4, 1024)}
    save_file(sd2, str(bases / "sd21.safetensors"))
    root = copy_example(tmp_path)
    set_keys(root, "project", base_model=json.dumps(str(bases / "sd21.safetensors")))

    def plan_base_line() -> str:
        code, out = check(root, capsys)
        assert code == 0, out
        return " ".join(out.split())

    assert ('family auto (SD2, nothing says v or epsilon: auto trains it as v-prediction (768-v); model_family = "sd2" '
            "for a 512-base model)") in plan_base_line()
    set_keys(root, "project", model_family='"sd2"')
    assert "family sd2 (SD2)" in plan_base_line()  # said: no guess
    set_keys(root, "project", model_family='"auto"')
    (bases / "sd21.yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")  # A1111's v2-inference.yaml: epsilon
    assert "family auto (SD2, epsilon (its .yaml))" in plan_base_line()
    (bases / "sd21.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    assert "family auto (SD2, v-prediction)" in plan_base_line()
