"""What a kohya/A1111 user looks for (issue 29): starting from an existing LoRA (network_weights),
the DPM++ Karras preview samplers, and TensorBoard training logs (log_with)."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from engine.errors import ValidationError  # noqa: E402
from engine.project.folder import load_project  # noqa: E402
from engine.project.plan import make_plan  # noqa: E402
from engine.train.controls import TrainControls
from tests.helpers import copy_example, quiet  # noqa: E402


def set_keys(root, table: str, **values) -> None:
    """Set keys of ``[table]`` in the project file (comments are dropped: tests only)."""
    import tomli_w

    from engine.project.folder import tomllib

    toml = root / "copylora.toml"
    data = tomllib.loads(toml.read_text())
    data.setdefault(table, {}).update(values)
    toml.write_text(tomli_w.dumps(data))


# --- the preview samplers -------------------------------------------------------------------


@pytest.mark.parametrize("sampler, label", [("euler_a", "Euler a"), ("dpmpp_2m_karras", "DPM++ 2M Karras"),
                                            ("DPM++ SDE Karras", "DPM++ SDE Karras")])
def test_each_sampler_draws_and_the_png_records_it(tiny, tmp_path, sampler, label):
    import numpy as np
    from PIL import Image

    from engine.train.sample import SampleSettings, generate, read_grid_parameters, sample_lora

    settings = SampleSettings(prompts=[""], steps=3, size=[64, 64], strengths=[0.0], seed=3, sampler=sampler)
    out = sample_lora(tiny, None, settings, tmp_path / "grid.png", model_name="tiny")
    with Image.open(out) as image:
        text = dict(image.text)
        drawn = np.asarray(image.convert("RGB"))
    assert f"Sampler: {label}," in text["parameters"]
    assert read_grid_parameters(out)["settings"]["sampler"] == sampler
    assert drawn.std() > 0  # a picture, not a blank canvas
    # Same seed, same picture (the SDE sampler's Brownian noise is seeded too).
    again = generate(tiny, settings, None)[0][0]
    first = generate(tiny, settings, None)[0][0]
    assert np.array_equal(np.asarray(again), np.asarray(first))


# sd-scripts' sample_sampler choices (train_util.add_training_arguments), every one a sampler here
KOHYA_SAMPLERS = ("ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++", "dpmsingle",
                  "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a")


def test_every_kohya_sample_sampler_is_imported_and_draws(tiny, tmp_path):
    """A kohya config's sample_sampler = "k_dpm_2" was offered "dpmsolver++" and kept the project's:
    every name sd-scripts takes is now its own sampler, each drawing a picture."""
    import numpy as np

    from engine.project.kohya_import import import_kohya
    from engine.train.sample import SAMPLERS, SampleSettings, generate

    drawn = {}
    for name in KOHYA_SAMPLERS:
        config = tmp_path / f"{name}.toml"
        config.write_text(f'sample_sampler = "{name}"\n')
        sampler = import_kohya(config).extra["sample"]["sampler"]
        assert sampler in SAMPLERS and sampler == name.removeprefix("k_"), name
        if sampler not in drawn:
            settings = SampleSettings(prompts=[""], steps=3, size=[64, 64], strengths=[0.0], seed=3, sampler=sampler)
            drawn[sampler] = np.asarray(generate(tiny, settings, None)[0][0])
            assert drawn[sampler].std() > 0, name
    assert not np.array_equal(drawn["dpm_2"], drawn["dpm_2_a"]) and not np.array_equal(drawn["dpmsolver"], drawn["dpmsolver++"])


def test_karras_samplers_are_not_their_plain_versions(tiny):
    import numpy as np

    from engine.train.sample import SampleSettings, generate

    settings = SampleSettings(prompts=[""], steps=4, size=[64, 64], strengths=[0.0], seed=3)
    plain, karras = (np.asarray(generate(tiny, replace(settings, sampler=s), None)[0][0]) for s in ("dpmsolver++", "dpmpp_2m_karras"))
    assert not np.array_equal(plain, karras)


def test_sampler_names_in_a_project_aliases_and_a_did_you_mean(tmp_path):
    root = copy_example(tmp_path)
    set_keys(root, "sample", sampler="DPM++ 2M Karras")
    assert load_project(root).sample.sampler == "dpmpp_2m_karras"  # A1111's label, stored by its name
    for alias, name in (("k_euler_a", "euler_a"), ("dpmpp_sde_karras", "dpmpp_sde_karras"), ("DPM++ 2M", "dpmsolver++")):
        root = copy_example(tmp_path / alias)
        set_keys(root, "sample", sampler=alias)
        assert load_project(root).sample.sampler == name
    root = copy_example(tmp_path / "typo")
    set_keys(root, "sample", sampler="dpm++ 2m karas")
    with pytest.raises(ValidationError) as caught:
        load_project(root)
    assert "sample.sampler: unknown value 'dpm++ 2m karas' (did you mean 'dpmpp_2m_karras'?)" in str(caught.value)


def test_sample_command_takes_a1111_names_and_refuses_unknown_ones(tmp_path, tiny, capsys):
    from copylora_tui.cli.main import EXIT_USAGE, main
    from engine.train.sample import read_grid_parameters

    root = copy_example(tmp_path)
    out = tmp_path / "g.png"
    assert main(["sample", str(root), "--lora", "none", "--steps", "2", "--size", "64x64", "--sampler", "DPM++ 2M Karras",
                 "--out", str(out)]) == 0
    assert read_grid_parameters(out)["settings"]["sampler"] == "dpmpp_2m_karras"
    capsys.readouterr()
    assert main(["sample", str(root), "--lora", "none", "--sampler", "dpmpp_2m_karas"]) == EXIT_USAGE
    assert "did you mean 'dpmpp_2m_karras'?" in capsys.readouterr().err


# --- starting from an existing LoRA ---------------------------------------------------------


def start_file(tiny, path, *, rank: int = 8, alpha: float = 1.0, conv_rank: int = 0, text: bool = False, seed: int = 5):
    """A LoRA for tiny with random (non-zero) weights, as another tool would have left it."""
    from engine.lora.network import LoRANetwork

    network = LoRANetwork(tiny.unet, tiny.text_encoders, rank=rank, alpha=alpha, conv_rank=conv_rank, text_encoder=text)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in network.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return network.save(path, dtype="float")


def plan_from(root, steps: int, **train):
    project = load_project(root)
    project.train = replace(project.train, save_precision="float", **train)
    return make_plan(project, max_steps=steps)


def test_training_starts_from_the_network_weights_file(tmp_path, tiny):
    from engine.lora.files import load_lora_file
    from engine.project.provenance import training_fingerprint
    from engine.train.checkpoint import load_latest_state
    from engine.train.trainer import train

    root = copy_example(tmp_path)
    source = start_file(tiny, root / "start.safetensors")
    set_keys(root, "train", network_weights="start.safetensors")
    plan = plan_from(root, 3)
    # Step 0: stopped before the first step, the checkpoint holds the file's weights exactly.
    lines: list[str] = []
    stopped = train(plan, "a", model=tiny, log=lines.append, controls=TrainControls(should_stop=lambda: True))
    assert stopped.status == "stopped" and stopped.step == 0
    state = load_latest_state(plan.side("a").run_dir, training_fingerprint(plan, "a"), quiet)
    expected = load_lora_file(source).modules
    assert set(state["lora"]) == set(expected)
    for name, w in expected.items():
        assert torch.equal(state["lora"][name]["down"], w.down) and torch.equal(state["lora"][name]["up"], w.up)
    assert any("A starts from start.safetensors" in line for line in lines)
    # A few steps on: trained from there (not from the seed's fresh LoRA, whose up is zero).
    done = train(plan, "a", model=tiny, log=quiet)
    trained = load_lora_file(done.lora_path)
    moved = max(float((trained.modules[n].up - w.up).abs().max()) for n, w in expected.items())
    assert 0 < moved < 0.05  # three small steps from the file, far from a zero-initialised up
    record = json.loads(trained.metadata["copylora_network_weights"])
    assert record["file"] == "start.safetensors" and len(record["sha256"]) == 64
    # `run` knows A is current, and after the start file changes it says that is why A is stale.
    from engine.project.outputs import SideLora

    assert SideLora(plan, "a").status().pair() == (True, done.lora_path.name)
    start_file(tiny, root / "start.safetensors", seed=6)  # other weights than the seed-5 file it trained from
    assert SideLora(plan_from(root, 3), "a").status().pair() == (False, "network_weights (the LoRA it starts from) changed since it was trained")


def test_linear_factors_on_a_1x1_conv_start_training_as_the_conv_ones(tmp_path, tiny):
    """A start file storing SD1's 1x1 proj_in/proj_out as Linear factors (as other tools, and a
    merge listing such a file first, write them) was refused: "has rank 8, this project trains
    it at rank 8"; sample and bake took it."""
    from safetensors.torch import load_file, save_file

    from engine.project.provenance import training_fingerprint
    from engine.train.checkpoint import load_latest_state
    from engine.train.trainer import train

    root = copy_example(tmp_path)
    source = start_file(tiny, root / "start.safetensors")
    tensors = load_file(str(source))
    flat = {k: (v.reshape(v.shape[0], v.shape[1]) if v.dim() == 4 and v.shape[2:] == (1, 1) else v) for k, v in tensors.items()}
    assert sum(v.dim() == 4 for v in tensors.values()) > 0 and all(v.dim() < 4 for v in flat.values())
    save_file(flat, str(root / "flat.safetensors"))
    set_keys(root, "train", network_weights="flat.safetensors")
    plan = plan_from(root, 3)
    stopped = train(plan, "a", model=tiny, log=quiet, controls=TrainControls(should_stop=lambda: True))
    assert stopped.status == "stopped" and stopped.step == 0
    state = load_latest_state(plan.side("a").run_dir, training_fingerprint(plan, "a"), quiet)
    for key, value in tensors.items():
        if key.endswith(".alpha"):
            continue
        name, _, factor = key.partition(".")
        assert torch.equal(state["lora"][name]["down" if factor.startswith("lora_down") else "up"], value), key


def test_a_different_alpha_is_folded_so_step_zero_is_the_files_lora(tmp_path, tiny):
    from engine.lora.files import load_lora_file
    from engine.lora.weights import lora_delta
    from engine.project.provenance import training_fingerprint
    from engine.train.checkpoint import load_latest_state
    from engine.train.trainer import train

    root = copy_example(tmp_path)
    source = start_file(tiny, root / "start.safetensors", alpha=4.0)  # the project trains at alpha 1
    set_keys(root, "train", network_weights="start.safetensors")
    plan = plan_from(root, 2)
    train(plan, "a", model=tiny, log=quiet, controls=TrainControls(should_stop=lambda: True))
    state = load_latest_state(plan.side("a").run_dir, training_fingerprint(plan, "a"), quiet)
    for name, w in load_lora_file(source).modules.items():
        mine = state["lora"][name]
        assert float(mine["alpha"]) == 1.0
        assert torch.allclose(lora_delta(mine["down"], mine["up"], 1.0), lora_delta(w.down, w.up, 4.0), atol=1e-6)


def test_the_start_file_is_part_of_the_fingerprint_and_check_shows_it(tmp_path, tiny, capsys):
    from copylora_tui.cli.main import main
    from engine.project.provenance import training_fingerprint

    root = copy_example(tmp_path)
    plan = make_plan(load_project(root))
    fresh = {side: training_fingerprint(plan, side) for side in "ab"}
    start_file(tiny, root / "start.safetensors", seed=1)
    set_keys(root, "a", network_weights="start.safetensors")  # A only, as any [train] key per side
    plan = make_plan(load_project(root))
    first = training_fingerprint(plan, "a")
    assert first != fresh["a"] and training_fingerprint(plan, "b") == fresh["b"]
    start_file(tiny, root / "start.safetensors", seed=2)  # the same path, other weights: A is stale
    assert training_fingerprint(make_plan(load_project(root)), "a") not in (first, fresh["a"])
    assert main(["check", str(root)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^A +starts from .*start.safetensors", out, re.M)
    assert main(["check", str(root), "--json"]) == 0
    sides = json.loads(capsys.readouterr().out)["sides"]
    assert sides["a"]["network_weights"].endswith("start.safetensors") and sides["b"]["network_weights"] is None


def test_a_start_file_that_does_not_fit_is_a_validation_error(tmp_path, tiny):
    cases = [
        ({"rank": 4}, "train.network_weights", "has rank 4 modules, but network_dim = 8: set network_dim = 4"),
        ({"conv_rank": 4}, "train.network_weights", "has 3x3 conv modules (LoCon, rank 4), but conv_dim = 0: set conv_dim = 4"),
        ({"text": True}, "train.network_weights", "has text-encoder modules, but network_train_unet_only = true: set it to false"),
    ]
    for n, (shape, where, message) in enumerate(cases):
        root = copy_example(tmp_path / str(n))
        start_file(tiny, root / "start.safetensors", **shape)
        set_keys(root, "train", network_weights="start.safetensors")
        with pytest.raises(ValidationError) as caught:
            load_project(root)
        assert {p.where: p.message for p in caught.value.problems}[where] == f"start.safetensors {message}", caught.value
    # conv_in is a 3x3 conv no training adapts: "set conv_dim = 8" led to the next refusal, at training
    from engine.lora.files import load_lora_file, save_lora_file

    root = copy_example(tmp_path / "extra")
    modules = dict(load_lora_file(start_file(tiny, tmp_path / "plain.safetensors")).modules)
    conv_in = tiny.unet.conv_in.weight.shape
    modules["lora_unet_conv_in"] = (torch.zeros(8, *conv_in[1:]), torch.zeros(conv_in[0], 8, 1, 1), 8.0)
    save_lora_file(root / "start.safetensors", modules, {}, "float")
    set_keys(root, "train", network_weights="start.safetensors")
    with pytest.raises(ValidationError) as caught:
        load_project(root)
    assert [p.message for p in caught.value.problems] == [
        "start.safetensors adapts layers no training here adapts (lora_unet_conv_in: LyCORIS' full preset, ComfyUI's extraction): "
        "a project cannot start from it (merges, previews and bakes take it)"]
    root = copy_example(tmp_path / "missing")
    set_keys(root, "b", network_weights="nowhere.safetensors")
    with pytest.raises(ValidationError, match=r"b\.network_weights: no such LoRA file: .*nowhere\.safetensors"):
        load_project(root)


def test_a_module_set_that_differs_is_said_when_training_starts(tmp_path, tiny, capsys):
    from engine.lora.files import load_lora_file, save_lora_file
    from engine.train.start_weights import StartWeightsError
    from engine.train.trainer import train

    root = copy_example(tmp_path)
    full = load_lora_file(start_file(tiny, tmp_path / "full.safetensors")).modules
    dropped = sorted(full)[0]
    save_lora_file(root / "start.safetensors", {n: w for n, w in full.items() if n != dropped}, {}, "float")
    set_keys(root, "train", network_weights="start.safetensors")
    with pytest.raises(StartWeightsError, match=f"1 module\\(s\\) this project trains are not in it \\({dropped}\\)"):
        train(plan_from(root, 2), "a", model=tiny, log=quiet)
    from copylora_tui.cli.main import EXIT_USAGE, main

    assert main(["train", str(root), "--side", "a", "--max-steps", "2"]) == EXIT_USAGE  # an input to fix, as any unusable LoRA file
    assert dropped in capsys.readouterr().err


# --- TensorBoard logs -----------------------------------------------------------------------


def scalars(folder, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


def test_log_with_tensorboard_writes_each_sides_loss_per_step(tmp_path, tiny):
    pytest.importorskip("tensorboard")
    from engine.train.twin import train_twin

    root = copy_example(tmp_path)
    set_keys(root, "train", log_with="tensorboard")
    plan = plan_from(root, 4)
    seen: dict[int, tuple[float, float]] = {}
    train_twin(plan, model=tiny, log=quiet, controls=TrainControls(on_progress=lambda p: seen.__setitem__(p.step, (p.loss, p.loss_b))))
    for index, side in enumerate("AB"):
        runs = list((root / "output" / "logs" / side).iterdir())
        assert len(runs) == 1  # one folder per run, named by its start time
        losses = scalars(runs[0], "loss/current")
        assert sorted(losses) == [1, 2, 3, 4]
        assert all(losses[step] == pytest.approx(seen[step][index], rel=1e-6) for step in losses)
        assert list(scalars(runs[0], "lr/unet").values()) == pytest.approx([plan.side("a").params.learning_rate] * 4)


def test_logging_dir_alone_turns_it_on_and_check_says_when_tensorboard_is_missing(tmp_path, monkeypatch):
    from engine.project import training_logs

    root = copy_example(tmp_path)
    set_keys(root, "train", logging_dir="tb")
    project = load_project(root)
    assert training_logs.tensorboard_wanted(project.side_params("a"))
    assert training_logs.logs_folder(project, "b") == root.resolve() / "tb" / "B"
    monkeypatch.setattr(training_logs, "tensorboard_missing", lambda: True)
    with pytest.raises(ValidationError, match=r'train\.logging_dir: TensorBoard logs need the tensorboard package.*copylora\[tensorboard\]'):
        load_project(root)
    root = copy_example(tmp_path / "wandb")
    set_keys(root, "train", log_with="wandb")
    with pytest.raises(ValidationError, match=r"train\.log_with: unknown value 'wandb' \(one of: \"\", tensorboard\)"):
        load_project(root)


# --- import-kohya ---------------------------------------------------------------------------


def test_import_kohya_maps_network_weights_and_tensorboard_logging(tmp_path, tiny, capsys):
    from copylora_tui.cli.main import main
    from engine.project.kohya_import import import_kohya

    lora = start_file(tiny, tmp_path / "mine.safetensors")
    config = tmp_path / "gui.json"
    config.write_text(json.dumps({"LoRA_type": "Standard", "optimizer": "AdamW", "lora_network_weights": str(lora),
                                  "log_with": "", "logging_dir": "/kohya/logs", "dim_from_weights": True}))
    result = import_kohya(config)
    assert result.train["network_weights"] == str(lora.resolve()) and result.train["log_with"] == "tensorboard"
    assert {e.key for e in result.used} >= {"lora_network_weights", "logging_dir"} and not result.unknown
    assert "network_dim" in next(e.note for e in result.ignored if e.key == "dim_from_weights")
    # A file that is not on this machine is said, not written (the project could not be saved with it).
    config.write_text(json.dumps({"network_weights": "/elsewhere/x.safetensors", "log_with": "wandb", "network_dim": 8}))
    result = import_kohya(config)
    assert "network_weights" not in result.train and "log_with" not in result.train
    assert {e.key: e.note for e in result.ignored}["network_weights"].startswith("no such file here")
    # --into: the project starts from the file and logs for TensorBoard, and is valid.
    root = copy_example(tmp_path / "p")
    config.write_text(json.dumps({"network_weights": str(lora), "log_with": "tensorboard", "network_dim": 8}))
    assert main(["import-kohya", str(config), "--into", str(root), "--quiet"]) == 0
    train = load_project(root).train
    assert train.network_weights == str(lora.resolve()) and train.log_with == "tensorboard"


def test_import_kohya_maps_sample_sampler_to_the_previews_sampler(tmp_path, capsys):
    """kohya's sample_sampler (k_ names, A1111 labels) becomes [sample] sampler; a sampler copylora
    cannot draw with is said with a did-you-mean, and the project's own is kept."""
    from copylora_tui.cli.main import main
    from engine.project.kohya_import import import_kohya

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"LoRA_type": "Standard", "optimizer": "AdamW", "sample_sampler": "DPM++ 2M Karras"}))
    result = import_kohya(config)
    assert result.extra["sample"] == {"sampler": "dpmpp_2m_karras"} and not result.unknown
    root = copy_example(tmp_path / "p")
    assert main(["import-kohya", str(config), "--into", str(root), "--quiet"]) == 0
    assert load_project(root).sample.sampler == "dpmpp_2m_karras"
    capsys.readouterr()
    assert main(["import-kohya", str(config), "--quiet"]) == 0  # print mode shows the table to paste
    assert '[sample]\nsampler = "dpmpp_2m_karras"' in capsys.readouterr().out
    config.write_text(json.dumps({"LoRA_type": "Standard", "optimizer": "AdamW", "sample_sampler": "dpm_fastt"}))
    result = import_kohya(config)
    assert "sample" not in result.extra
    assert "[sample] sampler is kept" in {e.key: e.note for e in result.ignored}["sample_sampler"]
