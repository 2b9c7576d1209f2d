"""A project moved to another machine or folder: the same base model at another path (another
GPU box, another mount, a relative spelling) is the same training, so its LoRAs stay current and
its checkpoints resume; another model at the same path is not. Class folders count by their
place in the project. Files an earlier copylora wrote (the base by its path) stay current."""

from __future__ import annotations

import json
import shutil

import pytest

from engine.project.folder import load_project
from engine.project.outputs import SideLora
from engine.project.plan import make_plan
from engine.project.provenance import accepted_fingerprints, training_fingerprint
from tests.helpers import copy_example, quiet, set_keys

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    """The tiny model as a diffusers folder, as a user's checkpoint on disk."""
    from engine.models.tiny import tiny_pipeline

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("models") / "sd15"
    tiny_pipeline().save_pretrained(folder)
    return folder


def on_base(root, base) -> object:
    set_keys(root, "project", base_model=json.dumps(str(base)))
    return load_project(root)


def test_the_same_base_at_another_path_is_the_same_training_and_another_model_is_not(tmp_path, base_folder):
    from engine.project.model_identity import clear_cache

    root = copy_example(tmp_path / "box1")
    here = training_fingerprint(make_plan(on_base(root, base_folder)), "a")
    moved = tmp_path / "box2" / "ckpt" / "sd15"
    shutil.copytree(base_folder, moved)
    assert training_fingerprint(make_plan(on_base(root, moved)), "a") == here
    relative = "../../box2/ckpt/sd15"  # the same folder, spelled from the project
    assert training_fingerprint(make_plan(on_base(root, relative)), "a") == here
    # another checkpoint at that path: a weight file changed (a fine-tune, a merge)
    weights = next(moved.glob("unet/*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-4096:] = bytes(4096)
    weights.write_bytes(bytes(data))
    clear_cache()
    assert training_fingerprint(make_plan(on_base(root, moved)), "a") != here


def test_a_project_copied_to_another_box_resumes_and_its_loras_stay_current(tmp_path, base_folder):
    from engine.train.controls import TrainControls
    from engine.train.trainer import train

    root = copy_example(tmp_path / "box1" / "projects")
    set_keys(root, "train", save_every_n_steps=1)
    plan = make_plan(on_base(root, base_folder), max_steps=2)
    train(plan, "a", log=quiet)  # A finished (2 of 2), and a checkpoint to continue from
    box2 = tmp_path / "box2"
    shutil.copytree(base_folder, box2 / "models" / "sd15")
    shutil.copytree(root, box2 / "home" / "bob" / "example-monochrome")
    copied = box2 / "home" / "bob" / "example-monochrome"
    plan = make_plan(on_base(copied, box2 / "models" / "sd15"), max_steps=2)
    assert SideLora(plan, "a").status().state == "current"
    started = []
    longer = make_plan(load_project(copied), max_steps=3)
    train(longer, "a", resume=True, log=quiet, controls=TrainControls(on_start=lambda step, total: started.append(step)))
    assert started == [2]  # continued where box 1 left it


def test_loras_an_earlier_copylora_wrote_with_the_base_by_its_path_stay_current(tmp_path, base_folder, monkeypatch):
    """Before the base counted by its content, the fingerprint held its path: those LoRAs and
    checkpoints are this training's still (an update must not make everything stale)."""
    import engine.project.provenance as provenance
    from engine.train.trainer import train

    root = copy_example(tmp_path)
    plan = make_plan(on_base(root, base_folder), max_steps=2)
    with monkeypatch.context() as earlier:  # the earlier copylora: the base by its path
        earlier.setattr(provenance, "base_identity", lambda spec: spec)
        train(plan, "a", log=quiet)
        old = training_fingerprint(plan, "a")
    assert old != training_fingerprint(plan, "a") and old in accepted_fingerprints(plan, "a")
    assert SideLora(make_plan(load_project(root), max_steps=2), "a").status().state == "current"
    from engine.train.controls import TrainControls

    started = []  # and its checkpoint resumes
    train(make_plan(load_project(root), max_steps=3), "a", resume=True, log=quiet,
          controls=TrainControls(on_start=lambda step, total: started.append(step)))
    assert started == [2]


def test_class_folders_count_by_their_place_in_the_project(tmp_path):
    from tests.test_concepts import dreambooth_project

    first = dreambooth_project(tmp_path / "p1")
    moved = tmp_path / "p2" / "renamed"
    shutil.copytree(first, moved)
    assert training_fingerprint(make_plan(load_project(first)), "a") == training_fingerprint(make_plan(load_project(moved)), "a")


def test_an_output_folder_outside_the_project_that_is_not_there_is_said(tmp_path):
    from engine.project.plan import plan_warnings

    root = copy_example(tmp_path / "box2")
    set_keys(root, "project", output_dir=json.dumps(str(tmp_path / "box1" / "loras")))
    said = [w for w in plan_warnings(make_plan(load_project(root))) if "does not exist yet" in w]
    assert said and "point output_dir at where its LoRAs and checkpoints are now" in said[0]
    (tmp_path / "box1" / "loras").mkdir(parents=True)
    assert not [w for w in plan_warnings(make_plan(load_project(root))) if "does not exist yet" in w]


def test_new_keeps_the_link_the_base_is_named_through(tmp_path, base_folder):
    """`copylora new --base /models/sd15` through a link to this box's disk wrote the disk's
    path, which the next box (its own link to its own disk) did not have."""
    from engine.project.scaffold import create_project
    from tests.helpers import EXAMPLE

    link = tmp_path / "models"
    link.symlink_to(base_folder.parent)
    project = create_project(tmp_path / "p", EXAMPLE.parent / "example-monochrome" / "a" / "colour.png",
                             EXAMPLE.parent / "example-monochrome" / "b" / "monochrome.png", base_model=str(link / "sd15"))
    assert project.info.base_model == str(link / "sd15")


def test_check_says_a_checkpoint_of_other_settings_will_be_set_aside(tmp_path, tiny):
    """`check` said only "stale" of a side whose checkpoint `run` then drops (other settings: a
    base moved before the base counted by content, a changed rate); the app said it, check not."""
    from copylora_tui.core.plan_view import output_statuses
    from engine.train.trainer import train

    root = copy_example(tmp_path)
    set_keys(root, "train", save_every_n_steps=1)
    plan = make_plan(load_project(root), max_steps=2)
    train(plan, "a", model=tiny, log=quiet)
    (plan.side("a").lora_path).unlink()  # a half-trained side: its checkpoint alone
    assert output_statuses(make_plan(load_project(root)))["A"].state == "resumable"
    set_keys(root, "train", learning_rate=0.002)
    status = output_statuses(make_plan(load_project(root)))["A"]
    assert status.state == "missing" and "its checkpoint (step 2) was made with other settings: run starts over" in status.reason


def test_a_linked_folder_of_the_base_counts(tmp_path, base_folder):
    """A diffusers folder whose vae/ or unet/ is a link (a fixed VAE, a U-Net shared between
    models): pathlib's rglob does not enter it, so another linked U-Net was the same base."""
    from engine.project.model_identity import clear_cache, model_identity

    model = tmp_path / "model"
    model.mkdir()
    for part in base_folder.iterdir():
        (model / part.name).symlink_to(part) if part.name == "unet" else (shutil.copytree(part, model / part.name) if part.is_dir()
                                                                           else shutil.copy(part, model / part.name))
    before = model_identity(str(model))
    other = tmp_path / "other-unet"
    shutil.copytree(base_folder / "unet", other)
    weights = next(other.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-4096:] = bytes(4096)
    weights.write_bytes(bytes(data))
    (model / "unet").unlink()
    (model / "unet").symlink_to(other)
    clear_cache()
    assert model_identity(str(model)) != before
    (other / "loop").symlink_to(other)  # a link back up: walked once
    assert model_identity(str(model))


def test_an_earlier_copyloras_lora_is_stale_once_another_checkpoint_sits_at_its_base_path(tmp_path, tiny, monkeypatch):
    """Accepted by its path-based fingerprint, it would stay current over any file at that path:
    its kohya model hash (ss_sd_model_hash) tells the checkpoint it trained on."""
    from safetensors.torch import load_file, save_file

    import engine.project.provenance as provenance
    from engine.hashing import legacy_model_hash
    from engine.train.trainer import train

    base = tmp_path / "sd15.safetensors"
    base.write_bytes(bytes(range(256)) * 8192)  # 2 MiB: what the hash reads
    root = copy_example(tmp_path / "p")
    set_keys(root, "project", base_model=json.dumps(str(base)))
    plan = make_plan(load_project(root, check_files=False), max_steps=2)
    with monkeypatch.context() as earlier:  # trained by an earlier copylora, on the checkpoint at that path
        earlier.setattr(provenance, "base_identity", lambda spec: spec)
        lora = train(plan, "a", model=tiny, log=quiet).lora_path
    tensors = load_file(str(lora))
    from safetensors import safe_open

    with safe_open(str(lora), "pt") as f:
        meta = dict(f.metadata())
    meta["ss_sd_model_hash"] = legacy_model_hash(base)
    save_file(tensors, str(lora), metadata=meta)
    assert SideLora(make_plan(load_project(root, check_files=False), max_steps=2), "a").status().state == "current"
    base.write_bytes(bytes(reversed(range(256))) * 8192)  # another checkpoint, the same path
    plan = make_plan(load_project(root, check_files=False), max_steps=2)
    status = SideLora(plan, "a").status()
    assert status.state == "stale" and "another checkpoint than the one it was trained on" in status.reason
    # nor is its checkpoint resumed, or offered (it trained on that other checkpoint too)
    from copylora_tui.core.plan_view import output_statuses
    from engine.train.controls import TrainControls

    assert list(plan.side("a").run_dir.glob("state-*.pt"))
    assert output_statuses(plan)["A"].state == "stale"
    started = []
    train(plan, "a", resume=True, model=tiny, log=quiet, controls=TrainControls(on_start=lambda step, total: started.append(step)))
    assert started == [0]


def test_a_weight_file_diffusers_does_not_load_is_no_part_of_the_base(tmp_path, base_folder):
    """Deleting a folder's fp16 variant (or its .bin beside the .safetensors) to save space left
    every LoRA stale; an SD2 file's .yaml (v-prediction or not) counts."""
    from engine.project.model_identity import clear_cache, model_identity

    model = tmp_path / "model"
    shutil.copytree(base_folder, model)
    plain = next((model / "unet").glob("*.safetensors"))
    before = model_identity(str(model))
    shutil.copy(plain, plain.with_name(plain.name.replace(".safetensors", ".fp16.safetensors")))
    shutil.copy(plain, plain.with_name(plain.name.replace(".safetensors", ".bin")))
    text = next((model / "text_encoder").glob("*.safetensors"))  # transformers' names: model.safetensors
    shutil.copy(text, text.with_name("pytorch_model.bin"))
    shutil.copy(plain, model / "v1-5-pruned-emaonly.safetensors")  # a single file at the top, as HF repositories hold
    clear_cache()
    assert model_identity(str(model)) == before
    with open(text, "r+b") as handle:  # but the text encoder's own weights count
        handle.seek(-4096, 2)
        handle.write(bytes(4096))
    clear_cache()
    assert model_identity(str(model)) != before
    single = tmp_path / "sd2.safetensors"
    single.write_bytes(b"x" * 4096)
    alone = model_identity(str(single))
    single.with_suffix(".yaml").write_text("parameterization: v\n")
    assert model_identity(str(single)) != alone
