"""Importing kohya_ss GUI settings, sd-scripts config files and dataset TOMLs into a project.

The reference files are real kohya_ss configs (see /work/shared/reference/README.md); every
key of each must land in exactly one report (used, ignored, unknown).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from PIL import Image

from copylora_tui.cli.main import main
from engine.errors import ValidationError
from engine.project.folder import load_project, save_project
from engine.project.kohya_import import CONFIG, DATASET, GUI, _parse_args, apply_import, format_report, import_kohya
from engine.project.scaffold import create_project
from tests.helpers import REPO, copy_example

# shared/ lies beside the checkout (CI's clone too); /work/shared is the developers' copy.
REF = next((p for p in (REPO.parent / "shared" / "reference" / "kohya_ss_configs", Path("/work/shared/reference/kohya_ss_configs"))
            if p.is_dir()), Path("/work/shared/reference/kohya_ss_configs"))
REF_FILES = sorted(REF.glob("*")) if REF.is_dir() else []
needs_ref = pytest.mark.skipif(not REF_FILES, reason="reference kohya configs not present")

# A realistic sd-scripts --config_file: grouped tables, sd-scripts list values, one unknown key.
CONFIG_TOML = """\
[model_arguments]
pretrained_model_name_or_path = "/models/sd15.safetensors"
v2 = false

[additional_network_arguments]
network_module = "networks.lora"
network_dim = 16
network_alpha = 8
network_args = ["conv_dim=8", "conv_alpha=4", "rank_dropout=0.1"]
network_train_unet_only = true

[optimizer_arguments]
optimizer_type = "adamw"
learning_rate = 2e-4
optimizer_args = ["weight_decay=0.01", "betas=0.9,0.99"]
lr_scheduler = "cosine_with_restarts"
lr_scheduler_num_cycles = 3
lr_warmup_steps = 0.05

[dataset_arguments]
resolution = "512,768"
train_batch_size = 2
cache_latents = true
shuffle_caption = true

[training_arguments]
output_dir = "out"
max_train_steps = 1200
seed = 7
mixed_precision = "bf16"
xformers = true
my_custom_flag = 3

[saving_arguments]
save_every_n_steps = 200
save_model_as = "safetensors"
"""


def _input_keys(path: Path) -> list[str]:
    """The file's keys as the importer names them, read independently of it."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return list(json.loads(text))
    data = tomllib.loads(text)
    if "datasets" in data:
        keys = [f"general.{k}" for k in data.get("general", {})]
        for i, ds in enumerate(data["datasets"]):
            keys += [f"datasets[{i}].{k}" for k in ds if k != "subsets"]
            for j, sub in enumerate(ds.get("subsets", [])):
                keys += [f"datasets[{i}].subsets[{j}].{k}" for k in sub]
        return keys
    return [k for name, v in data.items() for k in (v if isinstance(v, dict) else [name])]


def _check_reports(result, keys: list[str]) -> None:
    lists = {"used": result.used, "ignored": result.ignored, "unknown": result.unknown}
    names = {name: {e.key for e in entries} for name, entries in lists.items()}
    for a in names:
        for b in names:
            assert a == b or not names[a] & names[b], f"in both {a} and {b}: {names[a] & names[b]}"
    every = set().union(*names.values())
    for key in keys:
        assert any(k == key or k.startswith(key + ".") for k in every), f"{key} not reported"


def _entry(entries, key):
    found = [e for e in entries if e.key == key]
    assert found, f"{key} not in {[e.key for e in entries]}"
    return found[0]


@pytest.fixture
def config_toml(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG_TOML, encoding="utf-8")
    return path


@needs_ref
@pytest.mark.parametrize("path", REF_FILES, ids=lambda p: p.name)
def test_every_key_is_reported_exactly_once(path: Path) -> None:
    result = import_kohya(path)
    _check_reports(result, _input_keys(path))
    assert not result.unknown  # the catalogue knows every key of the real kohya_ss files


def test_every_key_is_reported_exactly_once_config_file(config_toml: Path) -> None:
    _check_reports(import_kohya(config_toml), _input_keys(config_toml))


@needs_ref
def test_standard_adamw8bit() -> None:
    result = import_kohya(REF / "Standard-AdamW8bit.json")
    assert result.kind == GUI
    t = result.train
    assert t["optimizer_type"] == "AdamW8bit" and t["optimizer_args"] == {}
    assert t["learning_rate"] == 1e-4 and t["train_batch_size"] == 4
    assert t["resolution"] == [512, 512]
    assert t["min_snr_gamma"] == 10 and t["seed"] == 1234 and t["clip_skip"] == 2
    assert t["max_train_epochs"] == 4 and t["max_train_steps"] is None  # GUI "epoch", steps 0
    assert t["lr_scheduler"] == "cosine" and t["mixed_precision"] == "bf16" and t["save_precision"] == "fp16"
    # kohya_ss passes noise_offset only with noise_offset_type "Original"; this file uses Multires.
    assert "noise_offset" not in t
    assert "Multires" in _entry(result.ignored, "noise_offset").note
    assert result.extra == {"sample": {"sampler": "euler_a"}}  # SD1.5: model_family stays auto; its sample_sampler is read
    assert "paths" in _entry(result.ignored, "output_dir").note


@needs_ref
def test_sd15_edg_string_numbers() -> None:
    result = import_kohya(REF / "sd15-EDG_LoraOptiSettings.json")
    t = result.train
    assert t["network_dim"] == 64 and t["network_alpha"] == 64
    assert t["learning_rate"] == 1e-4 and t["unet_lr"] == 1e-4  # from "0.0001"
    assert t["text_encoder_lr"] == 5e-05 and t["network_train_unet_only"] is False
    assert t["noise_offset"] == 0.05  # "0.05", no noise_offset_type: Original
    assert t["seed"] == 1234 and t["min_snr_gamma"] is None  # "1234"; 0 = off
    assert t["resolution"] == [512, 650] and t["train_batch_size"] == 3
    assert t["max_train_epochs"] == 1
    assert "conv_dim" not in t  # Standard LoRA: kohya_ss trains no convs
    assert "lr_scheduler_num_cycles" not in t  # "" keeps the project's value


@needs_ref
def test_sdxl_standard() -> None:
    result = import_kohya(REF / "SDXL-Standard-AdamW8bit.json")
    assert result.extra == {"project": {"model_family": "sdxl"}, "sample": {"sampler": "euler_a"}}
    t = result.train
    assert t["network_train_unet_only"] is True  # text_encoder_lr 0.0
    assert t["unet_lr"] == 1e-6 and t["noise_offset"] == 0.0357
    assert t["resolution"] == [1024, 1024] and t["max_train_epochs"] == 1
    assert "seed" not in t and "unset" in _entry(result.ignored, "seed").note


@needs_ref
def test_sdxl_lokr_prodigy_preset() -> None:
    result = import_kohya(REF / "SDXL-1-image-LoRA-v1.0.json")
    assert result.extra["project"]["model_family"] == "sdxl"
    assert "not supported" in _entry(result.ignored, "optimizer").note
    assert "Prodigy" in _entry(result.ignored, "optimizer_args").note
    for key in ("network_dim", "network_alpha", "conv_dim", "conv_alpha"):
        assert "LoKr" in _entry(result.ignored, key).note
    assert "not supported" in _entry(result.ignored, "LoRA_type").note
    t = result.train
    assert not {"optimizer_type", "network_dim", "learning_rate", "unet_lr"} & set(t)  # Prodigy lr 1.0
    # kohya_ss only computes max_train_steps from "epoch" when max_train_steps is empty.
    assert t["max_train_steps"] == 160 and t["max_train_epochs"] is None
    assert _entry(result.ignored, "epoch").value == 100
    assert t["seed"] == 12345 and t["min_snr_gamma"] == 5 and t["mixed_precision"] == "bf16"


@needs_ref
def test_dataset_toml() -> None:
    result = import_kohya(REF / "dataset.toml")
    assert result.kind == DATASET
    assert result.train == {"resolution": [512, 512], "train_batch_size": 4, "num_repeats": 10}
    assert "paths" in _entry(result.ignored, "datasets[0].subsets[0].image_dir").note
    assert "caption" in _entry(result.ignored, "datasets[0].subsets[0].class_tokens").note


def test_dataset_inheritance_and_conflicts(tmp_path: Path) -> None:
    path = tmp_path / "ds.toml"
    path.write_text(
        "[general]\nresolution = [512, 768]\nnum_repeats = 2\nflip_aug = true\n"
        "[[datasets]]\nbatch_size = 2\n"
        "  [[datasets.subsets]]\n  image_dir = 'a'\n  num_repeats = 5\n"
        "  [[datasets.subsets]]\n  image_dir = 'b'\n  num_repeats = 7\n"
        "  [[datasets.subsets]]\n  image_dir = 'reg'\n  is_reg = true\n  num_repeats = 1\n",
        encoding="utf-8",
    )
    result = import_kohya(path)
    assert result.train == {"resolution": [512, 768], "num_repeats": 5, "flip_aug": True, "train_batch_size": 2}
    # A class subset makes it the DreamBooth flow (tests/test_concepts.py): the second subset is a concept.
    assert result.extra["concept[1]"] == {"folder": "b", "num_repeats": 7}
    assert result.extra["reg"] == {"folder": "reg", "num_repeats": 1}
    assert "overridden" in _entry(result.ignored, "general.num_repeats").note
    assert _entry(result.used, "general.flip_aug").note == "flip_aug"
    _check_reports(result, _input_keys(path))
    # Without class subsets or class_tokens, subsets are the sides' pictures: one num_repeats.
    path.write_text(path.read_text().split("  [[datasets.subsets]]\n  image_dir = 'reg'")[0], encoding="utf-8")
    result = import_kohya(path)
    assert result.train["num_repeats"] == 5 and "concept[1]" not in result.extra and "reg" not in result.extra
    assert "differs" in _entry(result.ignored, "datasets[0].subsets[1].num_repeats").note
    _check_reports(result, _input_keys(path))


def test_sd_scripts_config_file(config_toml: Path) -> None:
    result = import_kohya(config_toml)
    assert result.kind == CONFIG
    t = result.train
    assert t["optimizer_type"] == "AdamW"  # canonical spelling of "adamw"
    assert t["optimizer_args"] == {"weight_decay": 0.01, "betas": [0.9, 0.99]}
    assert t["network_dim"] == 16 and t["network_alpha"] == 8
    assert t["conv_dim"] == 8 and t["conv_alpha"] == 4  # LoCon via network_args
    assert "rank_dropout" in _entry(result.ignored, "network_args.rank_dropout").key
    assert t["resolution"] == [512, 768] and t["train_batch_size"] == 2
    assert t["max_train_steps"] == 1200 and t["max_train_epochs"] is None
    assert t["lr_warmup_steps"] == 60  # ratio 0.05 of 1200 steps
    assert t["lr_scheduler"] == "cosine_with_restarts" and t["lr_scheduler_num_cycles"] == 3
    assert t["seed"] == 7 and t["save_every_n_steps"] == 200 and t["network_train_unet_only"] is True
    assert [e.key for e in result.unknown] == ["my_custom_flag"]
    assert "always cached" in _entry(result.ignored, "cache_latents").note


def test_sdxl_clip_skip_is_not_imported(tmp_path: Path) -> None:
    """sdxl_train_network ignores clip_skip (always the penultimate layers); copylora applies it
    to SDXL as A1111 does, so importing 2 would train on another layer than kohya did."""
    result = import_kohya(_gui(tmp_path, sdxl=True, clip_skip=2))
    assert "clip_skip" not in result.train and "penultimate" in _entry(result.ignored, "clip_skip").note
    assert import_kohya(_gui(tmp_path, clip_skip=2)).train["clip_skip"] == 2  # SD1.5: kohya applies it
    assert import_kohya(_gui(tmp_path, sdxl=True, clip_skip=1)).train["clip_skip"] == 1


def test_sdxl_clip_skip_of_a_config_without_the_sdxl_key_is_not_imported_into_an_sdxl_project(tmp_path: Path, capsys) -> None:
    """An sd-scripts config for sdxl_train_network.py has no `sdxl` key: the project's family says it."""
    from copylora_tui.cli.main import main

    config = tmp_path / "sdxl.toml"
    config.write_text("clip_skip = 2\nlearning_rate = 2e-4\n", encoding="utf-8")
    sdxl = copy_example(tmp_path, "sdxl", "example-sdxl")
    assert main(["import-kohya", str(config), "--into", str(sdxl)]) == 0
    assert "penultimate" in capsys.readouterr().err
    assert load_project(sdxl).train.clip_skip == 1
    sd = copy_example(tmp_path, "sd")
    assert main(["import-kohya", str(config), "--into", str(sd), "--quiet"]) == 0
    assert load_project(sd).train.clip_skip == 2  # SD1.5: kohya applies it


def test_parse_optimizer_args() -> None:
    assert _parse_args('"d0=1e-5" "weight_decay=0.4" "decouple=True"') == {"d0": 1e-5, "weight_decay": 0.4, "decouple": True}
    assert _parse_args("weight_decay=0.01 betas=0.9,0.99") == {"weight_decay": 0.01, "betas": [0.9, 0.99]}
    assert _parse_args("") == {}
    with pytest.raises(ValueError):
        _parse_args("weight_decay")


def _gui(tmp_path: Path, **settings) -> Path:
    path = tmp_path / "gui.json"
    path.write_text(json.dumps({"LoRA_type": "Standard", "optimizer": "AdamW", **settings}), encoding="utf-8")
    return path


def test_gui_steps_epochs_and_warmup_percent(tmp_path: Path) -> None:
    result = import_kohya(_gui(tmp_path, epoch=10, max_train_steps="1000", lr_warmup=10, lr_scheduler="cosine"))
    assert result.train["max_train_steps"] == 1000 and result.train["lr_warmup_steps"] == 100
    # the constant schedule (sd-scripts' default) has no warm-up: sd-scripts refuses the pair
    for scheduler in ({"lr_scheduler": "constant"}, {}):
        result = import_kohya(_gui(tmp_path, max_train_steps="1000", lr_warmup=10, **scheduler))
        assert "lr_warmup_steps" not in result.train and "constant_with_warmup" in _entry(result.ignored, "lr_warmup").note
        _check_reports(result, {"LoRA_type", "optimizer", "max_train_steps", "lr_warmup", *scheduler})
    # sd-scripts trains max_train_epochs when it is set, whatever max_train_steps says.
    result = import_kohya(_gui(tmp_path, max_train_epochs="5", max_train_steps="1000", lr_warmup=10))
    assert result.train["max_train_epochs"] == 5 and result.train["max_train_steps"] is None
    assert "epochs" in _entry(result.ignored, "max_train_steps").note
    # With epochs the total steps depend on the project's images: the percent is reported.
    assert "by hand" in _entry(result.ignored, "lr_warmup").note
    assert "lr_warmup_steps" not in result.train
    # a GUI file of both at 0: one warm-up of 0 steps, reported once (it said lr_warmup_steps twice)
    result = import_kohya(_gui(tmp_path, max_train_steps="1000", lr_warmup=0, lr_warmup_steps=0, lr_scheduler="cosine"))
    assert [e.key for e in result.used if e.note == "lr_warmup_steps"] == ["lr_warmup_steps"] and result.train["lr_warmup_steps"] == 0
    assert "lr_warmup_steps is used" in _entry(result.ignored, "lr_warmup").note


def test_gui_learning_rate_rules(tmp_path: Path) -> None:
    both_zero = import_kohya(_gui(tmp_path, learning_rate="1e-4", unet_lr="", text_encoder_lr=""))
    assert both_zero.train["network_train_unet_only"] is False and both_zero.train["unet_lr"] is None
    te_only = import_kohya(_gui(tmp_path, unet_lr=0, text_encoder_lr="1e-5"))
    assert "text-encoder-only" in _entry(te_only.ignored, "text_encoder_lr").note
    assert "unet_lr" not in te_only.train


def test_invalid_values_are_ignored_not_written(tmp_path: Path) -> None:
    result = import_kohya(_gui(tmp_path, lr_scheduler="cosine_with_min_lr", max_resolution="32,32", train_batch_size="0", clip_skip="x"))
    for key in ("lr_scheduler", "max_resolution", "train_batch_size"):
        assert "not valid" in _entry(result.ignored, key).note
    assert _entry(result.ignored, "clip_skip").note == "not a number"
    assert not {"lr_scheduler", "resolution", "train_batch_size", "clip_skip"} & set(result.train)


def test_numbers_no_step_count_or_size_can_hold_and_arguments_that_are_no_list_are_ignored(tmp_path: Path) -> None:
    """A fuzz of 32 keys × 24 values (2026-12-06) ended 19 imports as internal errors: a size of
    "inf" or "1e400" (float() reads it, int() cannot), a warmup of 1e308 % or "nan", and a number
    or true as network_args or optimizer_args."""
    for value in ("inf", "-inf", "1e400"):
        result = import_kohya(_gui(tmp_path, max_resolution=value))
        assert "not valid" in _entry(result.ignored, "max_resolution").note and "resolution" not in result.train
    for value, note in ((1e308, "too large for a number of steps"), ("nan", "not a finite number"), ("inf", "not a finite number")):
        result = import_kohya(_gui(tmp_path, max_train_steps="1000", lr_warmup=value))
        assert _entry(result.ignored, "lr_warmup").note == note and "lr_warmup_steps" not in result.train
    for key in ("network_args", "optimizer_args"):
        for value in (-5, 1e308, True):
            result = import_kohya(_gui(tmp_path, **{key: value}))
            assert _entry(result.ignored, key).note == f"cannot read: {value!r} is not a list of key=value arguments", (key, value)


def test_reg_only_with_reg_data_dir(tmp_path: Path) -> None:
    result = import_kohya(_gui(tmp_path, reg_data_dir="/data/reg", prior_loss_weight=0.5, v2=True, v_parameterization=True))
    assert result.extra == {"reg": {"prior_loss_weight": 0.5}, "project": {"model_family": "sd2-v"}}


def test_sdxl_v_parameterization_is_sdxl_v(tmp_path: Path) -> None:
    """An SDXL v-prediction config (NoobAI-XL V-Pred's: --v_parameterization --zero_terminal_snr) was
    imported as epsilon SDXL, v_parameterization ignored: the LoRA would learn the wrong target."""
    result = import_kohya(_gui(tmp_path, sdxl=True, v_parameterization=True, zero_terminal_snr=True))
    assert result.extra == {"project": {"model_family": "sdxl-v"}}
    assert "zero-terminal SNR is read from the base model itself" in _entry(result.ignored, "zero_terminal_snr").note
    assert import_kohya(_gui(tmp_path, sdxl=True, v_parameterization=False)).extra == {"project": {"model_family": "sdxl"}}
    sd1 = import_kohya(_gui(tmp_path, v_parameterization=True))
    assert _entry(sd1.ignored, "v_parameterization").note == "v-prediction is supported for SD2 and SDXL only (model_family sd2-v, sdxl-v)"


def test_apply_import_round_trip(tmp_path: Path) -> None:
    for name, color in (("a.png", "red"), ("b.png", "blue")):
        Image.new("RGB", (64, 96), color).save(tmp_path / name)
    # An SDXL config on an SDXL base (an SD1 base would be refused: model_family mismatch).
    project = create_project(tmp_path / "proj", tmp_path / "a.png", tmp_path / "b.png", base_model="tiny-sdxl")
    path = _gui(tmp_path, sdxl=True, learning_rate="0.0002", epoch=3, max_resolution="768,1024",
                network_dim=32, network_alpha="16", text_encoder_lr=0, unet_lr="0.0002",
                optimizer_args='"weight_decay=0.1"', reg_data_dir="reg_src", prior_loss_weight=0.8)
    result = import_kohya(path)
    updated = apply_import(project, result)
    assert project.train.learning_rate == 1e-3  # the original (tiny-sdxl's preset) is not changed
    (updated.root / "reg").mkdir()
    Image.new("RGB", (64, 64), "gray").save(updated.root / "reg" / "c.png")
    save_project(updated)
    loaded = load_project(tmp_path / "proj")
    t = loaded.train
    assert t.learning_rate == 2e-4 and t.unet_lr == 2e-4 and t.max_train_epochs == 3 and t.max_train_steps is None
    assert t.resolution == [768, 1024] and t.network_dim == 32 and t.network_alpha == 16.0
    assert t.optimizer_args == {"weight_decay": 0.1} and t.network_train_unet_only is True
    assert t.num_repeats == project.train.num_repeats  # keys not in the file keep the project's value
    assert loaded.info.model_family == "sdxl" and loaded.reg.prior_loss_weight == 0.8


def test_folder_names_are_read_as_sd_scripts_reads_them() -> None:
    from engine.project.kohya_import import kohya_name

    assert kohya_name("5_sks girl") == (5, "sks girl") and kohya_name("5_sks_girl") == (5, "sks_girl")
    assert kohya_name("10") == (10, "") and kohya_name("+5_x") == (5, "x") and kohya_name("05_x") == (5, "x")
    assert kohya_name("0_x") is None and kohya_name("no prefix") is None and kohya_name("x_5") is None


def test_a_kohya_ss_gui_dreambooth_layout_becomes_the_projects_reg(tmp_path: Path) -> None:
    """kohya_ss's own layout, img/5_sks girl and reg/1_girl: the import said "put the class images
    in the project's reg folder" and left both prompts empty (check then warned that class
    pictures train under the teachers' prompt). The first class folder is [reg]'s now, its name
    read as kohya reads it, and the training folder's words are the instance prompt."""
    for name, color in (("a.png", "red"), ("b.png", "blue")):
        Image.new("RGB", (64, 96), color).save(tmp_path / name)
    for folder in ("img/5_sks girl", "reg/2_girl", "reg/3_woman", "reg/no prefix"):
        (tmp_path / folder).mkdir(parents=True)
        Image.new("RGB", (64, 96), "gray").save(tmp_path / folder / "x.png")
    path = _gui(tmp_path, reg_data_dir=str(tmp_path / "reg"), train_data_dir=str(tmp_path / "img"), prior_loss_weight=0.5)
    result = import_kohya(path)
    assert result.extra["reg"] == {"folder": str((tmp_path / "reg" / "2_girl").resolve()), "class_prompt": "girl",
                                   "num_repeats": 2, "num_class_images": 0, "instance_prompt": "sks girl", "prior_loss_weight": 0.5}
    note = _entry(result.used, "reg_data_dir").note
    assert "3_woman not used" in note and "no prefix" not in note
    assert "instance_prompt = 'sks girl'" in _entry(result.used, "train_data_dir").note
    _check_reports(result, {"reg_data_dir", "train_data_dir", "prior_loss_weight", "LoRA_type", "optimizer"})
    project = create_project(tmp_path / "proj", tmp_path / "a.png", tmp_path / "b.png", base_model="tiny")
    save_project(apply_import(project, result))
    reg = load_project(tmp_path / "proj").reg
    assert (reg.class_prompt, reg.instance_prompt, reg.num_repeats) == ("girl", "sks girl", 2)
    # a class folder whose name is no UTF-8 (made on another system) is passed over: the TOML could not hold it
    import os

    os.mkdir(os.fsencode(tmp_path / "reg") + b"/1_caf\xe9")
    Image.new("RGB", (64, 96), "gray").save(os.fsdecode(os.fsencode(tmp_path / "reg") + b"/1_caf\xe9/x.png"))
    assert import_kohya(path).extra["reg"]["folder"].endswith("2_girl")
    # not here (another machine's path), or no kohya subfolder: as before
    for missing in ("/data/reg", str(tmp_path / "img" / "5_sks girl")):
        result = import_kohya(_gui(tmp_path, reg_data_dir=missing, train_data_dir=str(tmp_path / "img")))
        assert result.extra["reg"] == {} and "put the class images" in _entry(result.used, "reg_data_dir").note


@needs_ref
def test_format_report() -> None:
    text = format_report(import_kohya(REF / "Standard-AdamW8bit.json"))
    assert "  used     learning_rate = 0.0001 (from learning_rate)" in text
    assert "  ignored  " in text and "output_dir" in text
    assert text.splitlines()[-1].endswith("0 unknown")


def test_format_report_unknown(config_toml: Path) -> None:
    assert "  unknown  my_custom_flag" in format_report(import_kohya(config_toml)).splitlines()


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("missing.json", None, "no such file"),
        ("garbage.txt", "{not json = [", "neither JSON nor TOML"),
        ("list.json", "[1, 2]", "not a kohya"),
        ("other.json", '{"name": "x", "version": 2}', "not a kohya"),
        ("other.toml", "[tool.black]\nline-length = 100\n", "not a kohya"),
    ],
)
def test_bad_files(tmp_path: Path, name: str, text: str | None, message: str) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(ValidationError) as info:
        import_kohya(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_import_does_not_load_torch() -> None:
    code = "import sys, engine.project.kohya_import; sys.exit('torch' in sys.modules or 'copylora_tui' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent).returncode == 0


def test_base_weights_map_to_the_differential_route(tmp_path: Path) -> None:
    """sd-scripts' differential learning (--base_weights A --base_weights_multiplier M) is the
    project's differential route; what cannot map is reported, never dropped."""
    path = tmp_path / "config.toml"
    path.write_text('network_dim = 8\nbase_weights = ["copier_A.safetensors"]\nbase_weights_multiplier = [0.8]\n', encoding="utf-8")
    result = import_kohya(path)
    _check_reports(result, _input_keys(path))
    assert result.extra == {"project": {"method": "differential"}, "b": {"base_weights_multiplier": 0.8}}
    assert "not read" in format_report(result) and "copier_A.safetensors" in format_report(result)

    for name, color in (("a.png", "red"), ("b.png", "blue")):
        Image.new("RGB", (64, 96), color).save(tmp_path / name)
    project = create_project(tmp_path / "proj", tmp_path / "a.png", tmp_path / "b.png")
    save_project(apply_import(project, result))
    loaded = load_project(tmp_path / "proj")
    assert loaded.info.method == "differential" and loaded.b.base_weights_multiplier == 0.8

    path.write_text('base_weights = "one.safetensors"\n', encoding="utf-8")  # a plain string, no multiplier
    assert import_kohya(path).extra == {"project": {"method": "differential"}}
    path.write_text('base_weights = ["x.safetensors", "y.safetensors"]\nbase_weights_multiplier = [1.0, 0.5]\n', encoding="utf-8")
    several = import_kohya(path)
    assert "project" not in several.extra and "several LoRAs" in _entry(several.ignored, "base_weights").note
    assert "no single" in _entry(several.ignored, "base_weights_multiplier").note
    path.write_text('base_weights = ["x.safetensors"]\nbase_weights_multiplier = [50]\n', encoding="utf-8")
    far = import_kohya(path)
    assert far.extra == {"project": {"method": "differential"}} and "-10 to 10" in _entry(far.ignored, "base_weights_multiplier").note


# ----------------------------------------------------------------------------- import-kohya prints every config


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


def test_a_shift_jis_config_from_japanese_windows_is_read(tmp_path: Path) -> None:
    """sd-scripts opens its config in the locale's encoding: on Japanese Windows a config with a
    Japanese name or path is cp932 (Shift-JIS). It failed here as 'not UTF-8'; now it is read,
    and the report says how."""
    text = 'output_name = "白黒コピー"\ntrain_data_dir = "C:/Users/太郎/学習"\nnetwork_dim = 16\nlearning_rate = 1e-4\n'
    path = tmp_path / "設定.toml"
    path.write_bytes(text.encode("cp932"))
    with pytest.raises(UnicodeDecodeError):
        path.read_bytes().decode("utf-8")
    result = import_kohya(path)
    assert result.kind == CONFIG and result.encoding == "cp932"
    assert result.train["network_dim"] == 16 and result.train["learning_rate"] == 1e-4
    report = format_report(result)
    assert report.splitlines()[0] == f"{CONFIG}: {path} (read as cp932: not UTF-8)"
    assert "白黒コピー" in report  # the ignored output_name, shown as written
    utf8 = tmp_path / "utf8.toml"
    utf8.write_text(text, encoding="utf-8")
    assert import_kohya(utf8).encoding == "utf-8" and "read as" not in format_report(import_kohya(utf8))


def test_a_dataset_of_class_tokens_without_class_subsets_trains_no_class_pictures(tmp_path: Path, capsys) -> None:
    """sd-scripts' own example dataset (class_tokens, no is_reg subset) trains no class pictures:
    the import made a [reg] whose default folder "reg" was asked for (refused in a new project;
    in one with a reg/ folder, trained with class pictures kohya never used)."""
    from copylora_tui.cli.main import main

    config = tmp_path / "dataset.toml"
    config.write_text("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'img/10_sks person'\nnum_repeats = 10\n"
                      "class_tokens = 'sks person'\ncaption_extension = '.txt'\n", encoding="utf-8")
    root = copy_example(tmp_path, "p")
    (root / "a" / "colour.txt").write_text("a photo")
    (root / "b" / "monochrome.txt").write_text("a photo, monochrome")
    assert main(["import-kohya", str(config), "--into", str(root), "--quiet"]) == 0
    reg = load_project(root).reg
    assert reg is not None and (reg.folder, reg.class_prompt, reg.num_class_images) == ("", "", 0)
    assert reg.instance_prompt == "[filewords]" and reg.caption_extension == ".txt"
    said = capsys.readouterr().out
    assert "[reg] folder, class_prompt, num_class_images, caption_extension, instance_prompt)" in said, said


def test_a_second_import_says_it_replaces_the_projects_concepts(tmp_path: Path, capsys) -> None:
    """The second `import-kohya --into` replaced concepts added in the app since, and said only
    "(4 [train] keys)"."""
    from copylora_tui.cli.main import main

    root = copy_example(tmp_path, "p", "example-dreambooth")
    config = tmp_path / "dataset.toml"
    config.write_text("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nclass_tokens = 'sks house'\n"
                      "[[datasets.subsets]]\nimage_dir = '3_zwx sun'\nclass_tokens = 'zwx sun'\n"
                      "[[datasets.subsets]]\nimage_dir = 'reg'\nis_reg = true\nclass_tokens = 'a house'\n", encoding="utf-8")
    before = len(load_project(root).concepts)
    assert before and main(["import-kohya", str(config), "--into", str(root), "--quiet"]) == 0
    said = capsys.readouterr().out
    assert f"1 [[concept]] table, replacing the project's {before}" in said, said


def test_subsets_of_other_caption_extensions_are_said_not_taken_as_the_first(tmp_path: Path) -> None:
    """A project reads one caption extension: the last subset's won, reported as the first's."""
    config = tmp_path / "dataset.toml"
    config.write_text("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nclass_tokens = 'sks'\ncaption_extension = '.txt'\n"
                      "[[datasets.subsets]]\nimage_dir = 'c'\nclass_tokens = 'zwx'\ncaption_extension = '.caption'\n", encoding="utf-8")
    result = import_kohya(config)
    assert result.extra["reg"]["caption_extension"] == ".txt"
    note = _entry(result.ignored, "datasets[0].subsets[1].caption_extension").note
    assert "'.txt', the first subset's, for every subset" in note
    _check_reports(result, _input_keys(config))


def test_prior_loss_weight_of_a_config_with_a_dataset_config_says_where_it_goes(tmp_path: Path) -> None:
    """sd-scripts' class pictures come from the dataset config's is_reg subsets too: "no
    regularisation images (reg_data_dir is empty)" was wrong there."""
    config = tmp_path / "config.toml"
    config.write_text('dataset_config = "dataset.toml"\nprior_loss_weight = 0.7\n', encoding="utf-8")
    note = _entry(import_kohya(config).ignored, "prior_loss_weight").note
    assert "is_reg subsets of its dataset_config" in note and "[reg] prior_loss_weight = 0.7" in note


def test_a_concept_subset_without_num_repeats_repeats_once_as_in_kohya(tmp_path: Path) -> None:
    """In a dataset config kohya repeats a subset once unless it says otherwise, whatever its
    folder's "3_" prefix; the project took the prefix's 3."""
    config = tmp_path / "dataset.toml"
    config.write_text("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nclass_tokens = 'sks'\nnum_repeats = 5\n"
                      "[[datasets.subsets]]\nimage_dir = '3_zwx sun'\nclass_tokens = 'zwx'\n", encoding="utf-8")
    result = import_kohya(config)
    assert result.extra["concept[1]"]["num_repeats"] == 1 and result.extra["concept[1]"]["folder"] == "3_zwx sun"
    _check_reports(result, _input_keys(config))


def test_an_is_reg_that_is_no_boolean_is_said_not_taken(tmp_path: Path) -> None:
    """is_reg = "false" (a string) made the subset a class subset: truthy. sd-scripts refuses it."""
    config = tmp_path / "dataset.toml"
    config.write_text("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nnum_repeats = 5\n"
                      "[[datasets.subsets]]\nimage_dir = 'b'\nis_reg = 'false'\nnum_repeats = 5\n", encoding="utf-8")
    result = import_kohya(config)
    assert "must be true or false" in _entry(result.ignored, "datasets[0].subsets[1].is_reg").note
    assert "reg" not in result.extra and result.train["num_repeats"] == 5
    _check_reports(result, _input_keys(config))


def test_a_first_subset_without_num_repeats_repeats_once_as_in_kohya(tmp_path: Path) -> None:
    """The sides' subset likewise: kohya repeats it once; the project kept its own 5 (the key
    was simply absent from the import). Set anywhere above the subset, that value is taken."""
    config = tmp_path / "dataset.toml"
    config.write_text("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\n", encoding="utf-8")
    result = import_kohya(config)
    assert result.train["num_repeats"] == 1
    assert "kohya's default in a dataset config" in _entry(result.used, "datasets[0].subsets[0].num_repeats").note
    _check_reports(result, _input_keys(config))
    config.write_text("[general]\nnum_repeats = 4\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\n", encoding="utf-8")
    assert import_kohya(config).train["num_repeats"] == 4


def test_a_first_subsets_flip_aug_that_flips_every_subset_here_is_said(tmp_path: Path) -> None:
    """kohya flips only the subset that says flip_aug; a project has one, for all its pictures."""
    config = tmp_path / "dataset.toml"
    config.write_text("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nclass_tokens = 'sks'\nflip_aug = true\n"
                      "[[datasets.subsets]]\nimage_dir = 'reg'\nis_reg = true\nclass_tokens = 'girl'\n", encoding="utf-8")
    result = import_kohya(config)
    assert result.train["flip_aug"] is True
    notes = [e.note for e in result.used if e.key == "datasets[0].subsets[0].flip_aug"]
    assert any("kohya flips this subset alone, not datasets[0].subsets[1]" in n for n in notes), notes
    _check_reports(result, _input_keys(config))
