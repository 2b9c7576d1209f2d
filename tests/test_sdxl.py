"""SDXL end to end on the built-in ``tiny-sdxl`` model, on CPU: topology and kohya names,
conditioning (two encoders, pooled embedding, time ids), single-file loading, LoRA files that
diffusers reads (and diffusers-named / PEFT files that we read), training with resume, merge,
bake/extract, previews, and the project example."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from engine.lora.files import load_lora_file, save_lora_file
from engine.lora.metadata import lora_metadata  # noqa: E402
from engine.lora.network import LoRANetwork
from engine.lora.weights import lora_delta
from engine.models.loading import load_base_model  # noqa: E402
from engine.project.folder import load_project  # noqa: E402
from engine.project.plan import make_plan  # noqa: E402
from engine.train.controls import TrainControls
from engine.train.trainer import train  # noqa: E402
from tests.helpers import REPO  # noqa: E402

REFERENCE = REPO.parent / "shared" / "reference"
EXAMPLE = REPO / "projects" / "example-sdxl"


def quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def xl():
    torch.set_num_threads(1)
    return load_base_model("tiny-sdxl")


def reference(table: str) -> dict[str, tuple]:
    path = REFERENCE / table
    if not path.is_file():
        pytest.skip(f"reference table {path} not present")
    rows = (line.split("\t") for line in path.read_text().splitlines() if line.strip())
    return {key: tuple(int(n) for n in shape.split(",")) if shape else () for key, shape, _ in rows}


def key_names(network: LoRANetwork) -> set[str]:
    return {f"{lora.name}{s}" for lora in network.loras() for s in (".lora_down.weight", ".lora_up.weight", ".alpha")}


def randomise(network: LoRANetwork, seed: int = 0, std: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lora in network.loras():
            lora.lora_up.weight.copy_(torch.randn(lora.lora_up.weight.shape, generator=g) * std)


def copy_example(tmp_path: Path) -> Path:
    import shutil

    dest = tmp_path / EXAMPLE.name
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("output"))
    return dest


def example_plan(tmp_path: Path, steps: int, **train_params):
    project = load_project(copy_example(tmp_path))
    project.train = replace(project.train, **train_params)
    return make_plan(project, max_steps=steps)


# --------------------------------------------------------------------------- the model


def test_tiny_sdxl_has_sdxl_topology(xl):
    from engine.models import tiny as tiny_model

    unet, (te1, te2) = xl.unet, xl.text_encoders
    assert xl.family == "sdxl" and xl.is_sdxl and xl.name == "tiny-sdxl" and xl.kohya_version == "sdxl_base_v1-0"
    assert xl.prediction_type == "epsilon" and type(xl.scheduler).__name__ == "EulerDiscreteScheduler"
    assert [type(b).__name__ for b in unet.down_blocks] == ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    assert [type(b).__name__ for b in unet.up_blocks] == ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
    assert [len(a.transformer_blocks) for a in unet.down_blocks[2].attentions] == [10, 10]
    assert [len(a.transformer_blocks) for a in unet.down_blocks[1].attentions] == [2, 2]
    assert len(unet.mid_block.attentions[0].transformer_blocks) == 10
    assert isinstance(unet.down_blocks[1].attentions[0].proj_in, torch.nn.Linear)
    cfg = unet.config
    assert cfg.addition_embed_type == "text_time"
    assert cfg.cross_attention_dim == te1.config.hidden_size + te2.config.hidden_size
    assert cfg.projection_class_embeddings_input_dim == te2.config.projection_dim + 6 * cfg.addition_time_embed_dim
    assert type(te1).__name__ == "CLIPTextModel" and te1.config.num_hidden_layers == 12
    assert type(te2).__name__ == "CLIPTextModelWithProjection" and te2.config.num_hidden_layers == 32
    assert xl.tokenizers[1].pad_token == "!" and xl.tokenizers[0].pad_token == "<|endoftext|>"
    assert xl.vae.config.scaling_factor == 0.13025 and xl.vae.config.force_upcast
    assert tiny_model.tiny_sdxl_dir().name == tiny_model.TINY_SDXL_NAME != tiny_model.TINY_NAME
    rebuilt = tiny_model.build_tiny_sdxl_components()["text_encoder_2"].state_dict()  # same seed, same weights
    assert all(torch.equal(v, rebuilt[k]) for k, v in te2.state_dict().items())


@pytest.mark.parametrize("table, conv", [("kohya_sdxl_r8.tsv", 0), ("kohya_sdxl_r8_conv8.tsv", 8)])
def test_tiny_sdxl_names_equal_kohya_sdxl(xl, table, conv):
    network = LoRANetwork(xl.unet, xl.text_encoders, family="sdxl", rank=8, alpha=1.0, conv_rank=conv, conv_alpha=1.0)
    assert key_names(network) == set(reference(table))


def test_diffusers_sgm_map_is_one_table():
    """The diffusers -> SGM block map is data (a bijection), and names convert at "." and "_" alike."""
    from engine.lora.names import SDXL_LAYOUT, diffusers_to_sgm, kohya_module_names, sgm_block_map

    table = sgm_block_map(*SDXL_LAYOUT)
    assert len(set(table.values())) == len(table)
    assert table["down_blocks.1.attentions.0"] == "input_blocks.4.1" and table["up_blocks.0.upsamplers.0"] == "output_blocks.2.2"
    assert diffusers_to_sgm("down_blocks.2.resnets.0.conv_shortcut.weight", *SDXL_LAYOUT) == "input_blocks.7.0.skip_connection.weight"
    assert diffusers_to_sgm("conv_in", *SDXL_LAYOUT) == "input_blocks.0.0"  # outside the numbered blocks too
    assert diffusers_to_sgm("add_embedding.linear_2.weight", *SDXL_LAYOUT) == "label_emb.0.2.weight"
    assert diffusers_to_sgm("some.other.path", *SDXL_LAYOUT) == "some.other.path"
    names = ["lora_unet_down_blocks_0_downsamplers_0_conv", "lora_unet_mid_block_resnets_1_time_emb_proj",
             "lora_unet_up_blocks_1_attentions_2_transformer_blocks_1_ff_net_0_proj", "lora_te_text_model_encoder_layers_0_mlp_fc1"]
    assert list(kohya_module_names(names, {}).values()) == [
        "lora_unet_input_blocks_3_0_op", "lora_unet_middle_block_2_emb_layers_1",
        "lora_unet_output_blocks_5_1_transformer_blocks_1_ff_net_0_proj", "lora_te_text_model_encoder_layers_0_mlp_fc1"]
    sd1 = ["lora_unet_down_blocks_0_attentions_0_proj_in", "lora_te_text_model_encoder_layers_0_mlp_fc1"]
    assert kohya_module_names(sd1, {"ss_base_model_version": "sd_v1"}) == {n: n for n in sd1}  # SD1 names stay


def test_conditioning_is_the_pipelines(xl):
    """Hidden states of both encoders (penultimate layer, concatenated) and the pooled
    embedding, exactly as StableDiffusionXLPipeline.encode_prompt computes them."""
    from engine.train.conditioning import encode_prompt, encode_text

    pipe = xl.pipeline()
    for prompt, clip_skip in [("", 1), ("a red house", 1), ("a red house", 2)]:
        ours = encode_text(xl, prompt, clip_skip)
        hidden, _, pooled, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False,
                                                  clip_skip=None if clip_skip == 1 else clip_skip - 1)
        assert ours.hidden.shape == (1, 77, 96) and ours.pooled.shape == (1, 64)
        assert torch.equal(ours.hidden, hidden) and torch.equal(ours.pooled, pooled)
        assert torch.equal(encode_prompt(xl, prompt, clip_skip), hidden)


def test_time_ids_are_original_crop_and_bucket(xl, tmp_path):
    """Per sample: original (h, w), crop top-left (top, left) in the resized image, bucket (h, w)."""
    from tests.helpers import write_png

    plan = example_plan(tmp_path, 1)
    image = plan.side("a").images[0].path
    write_png(image, size=(150, 200))  # 3:4, so the 2:3 portrait... bucket crops it
    plan = make_plan(plan.project, max_steps=1)
    assert plan.side("a").buckets == ((128, 128),)
    seen = []
    hook = xl.unet.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["added_cond_kwargs"]), with_kwargs=True)
    try:
        train(plan, "a", model=xl, log=quiet)
    finally:
        hook.remove()
    # 150x200 scaled by 128/150 to cover 128x128 -> 128x171, centre crop from top 21.
    # The training step's batch of one; the copy checks (step 0 and the end) draw two seeds
    # under the same size conditions.
    steps = [s for s in seen if s["time_ids"].shape[0] == 1]
    checks = [s for s in seen if s["time_ids"].shape[0] == 2]
    assert steps[0]["time_ids"].tolist() == [[200.0, 150.0, 21.0, 0.0, 128.0, 128.0]]
    assert steps[0]["text_embeds"].shape == (1, 64)
    assert len(checks) == 2 * 4  # 4 DDIM steps at step 0 and at the end
    assert all(c["time_ids"].tolist() == [[200.0, 150.0, 21.0, 0.0, 128.0, 128.0]] * 2 for c in checks)


def test_latents_are_encoded_in_fp32_whatever_the_vae_dtype(xl, tmp_path):
    import copy

    from engine.train.teacher import cache_teacher_latents
    from tests.helpers import write_png

    image = write_png(tmp_path / "t.png", size=(64, 64), colour=(250, 250, 10))
    half = copy.deepcopy(xl.vae).to(torch.float16)  # as a model loaded for fp16 training has it
    full = copy.deepcopy(half).to(torch.float32)  # the same weights, encoding in fp32
    want = cache_teacher_latents(full, [image], [(64, 64)], flip=False, random_crop=False, seed=0).latents[0]
    got = cache_teacher_latents(half, [image], [(64, 64)], flip=False, random_crop=False, seed=0)
    assert half.dtype == torch.float16  # given back as it was
    assert got.latents[0].dtype == torch.float32 and torch.equal(got.latents[0], want)
    assert got.sizes == [(64, 64)] and got.crops == [(0, 0)]


# --------------------------------------------------------------------------- single-file checkpoints


def sdxl_single_file_state_dict(pipe) -> dict:
    """An SGM (A1111/ComfyUI) SDXL checkpoint's state dict for a diffusers SDXL pipeline: the
    inverse of diffusers' single-file conversion, OpenCLIP's fused q/k/v included."""
    from engine.models.ldm_keys import UNET_PREFIX, unet_to_ldm, vae_to_ldm

    state = {}
    for key, value in unet_to_ldm(pipe.unet).items():
        key = key.replace(UNET_PREFIX + "add_embedding.linear_1.", UNET_PREFIX + "label_emb.0.0.")
        state[key.replace(UNET_PREFIX + "add_embedding.linear_2.", UNET_PREFIX + "label_emb.0.2.")] = value
    state.update(vae_to_ldm(pipe.vae))
    for key, value in pipe.text_encoder.state_dict().items():
        state["conditioner.embedders.0.transformer." + (key if key.startswith("text_model.") else "text_model." + key)] = value
    te2 = {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in pipe.text_encoder_2.state_dict().items()}
    prefix = "conditioner.embedders.1.model."
    state[prefix + "token_embedding.weight"] = te2.pop("embeddings.token_embedding.weight")
    state[prefix + "positional_embedding"] = te2.pop("embeddings.position_embedding.weight")
    state[prefix + "ln_final.weight"] = te2.pop("final_layer_norm.weight")
    state[prefix + "ln_final.bias"] = te2.pop("final_layer_norm.bias")
    state[prefix + "text_projection"] = te2.pop("text_projection.weight").T
    renames = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
               "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for i in range(pipe.text_encoder_2.config.num_hidden_layers):
        layer, block = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for param in ("weight", "bias"):
            state[block + f"attn.in_proj_{param}"] = torch.cat(
                [te2.pop(f"{layer}self_attn.{p}_proj.{param}") for p in "qkv"])
            for old, new in renames.items():
                state[block + f"{new}.{param}"] = te2.pop(f"{layer}{old}.{param}")
    te2.pop("embeddings.position_ids", None)
    assert not te2, f"unconverted text_encoder_2 keys: {list(te2)[:5]}"
    return {k: v.detach().contiguous() for k, v in state.items()}


def test_sdxl_single_file_loads_exactly(xl, tmp_path):
    from safetensors.torch import save_file

    from engine.formats.model_files import detect_family, peek_family
    from engine.models.loading import legacy_model_hash
    from engine.models.tiny import tiny_sdxl_dir, tiny_sdxl_pipeline

    path = tmp_path / "tiny_xl.safetensors"
    save_file(sdxl_single_file_state_dict(tiny_sdxl_pipeline()), str(path))
    assert peek_family(str(path)) == "sdxl" and peek_family("tiny-sdxl") == "sdxl" and peek_family("tiny") == "sd1"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert detect_family({k: f.get_slice(k).get_shape() for k in f.keys()}) == "sdxl"
    model = load_base_model(str(path), config_dir=tiny_sdxl_dir())
    assert model.family == "sdxl" and model.name == "tiny_xl" and model.model_hash == legacy_model_hash(path)
    pairs = [(model.unet, xl.unet), (model.vae, xl.vae), *zip(model.text_encoders, xl.text_encoders)]
    for ours, ref in pairs:
        got, want = ours.state_dict(), ref.state_dict()
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), type(ours).__name__


# --------------------------------------------------------------------------- LoRA files


def unet_inputs(xl, prompt: str = "a red house"):
    from engine.train.conditioning import added_conditions, encode_text, sdxl_time_ids

    text = encode_text(xl, prompt)
    g = torch.Generator().manual_seed(0)
    added = added_conditions([text], [sdxl_time_ids((96, 64), (0, 0), (96, 64))])
    return torch.randn(1, 4, 12, 8, generator=g), torch.tensor([500]), text, added


def outputs(xl, inputs):
    """(te1 hidden, te2 hidden, pooled, unet output with our conditioning) under whatever is applied."""
    from engine.train.conditioning import encode_text

    latents, t, _, _ = inputs
    with torch.no_grad():
        text = encode_text(xl, "a red house")
        added = {"text_embeds": text.pooled, "time_ids": inputs[3]["time_ids"]}
        return text.hidden, text.pooled, xl.unet(latents, t, text.hidden, added_cond_kwargs=added).sample


def test_diffusers_load_lora_weights_matches_ours(tmp_path):
    """Our SDXL file (SGM U-Net names, lora_te1_/lora_te2_, LoCon convs, mixed alphas) in
    diffusers' load_lora_weights: no missing or unexpected keys, same outputs as our network."""
    pytest.importorskip("peft")
    from engine.models.loading import _from_pipeline
    from engine.models.tiny import tiny_sdxl_pipeline

    pipe = tiny_sdxl_pipeline()
    xl = _from_pipeline(pipe, "sdxl", "tiny-sdxl", None)
    network = LoRANetwork(pipe.unet, [pipe.text_encoder, pipe.text_encoder_2], family="sdxl", rank=4, alpha=1.0,
                          conv_rank=2, conv_alpha=0.5)
    randomise(network)
    for i, lora in enumerate(network.loras()):
        if i % 3 == 0:
            lora.set_alpha(2.0)
    inputs = unet_inputs(xl)
    base = outputs(xl, inputs)
    network.apply_to()
    ours = outputs(xl, inputs)
    network.remove()
    path = network.save(tmp_path / "ours.safetensors", dtype="float", metadata=lora_metadata({}, "sdxl"))

    from tests.helpers_models import diffusers_load_problems

    assert not diffusers_load_problems(pipe, path)
    theirs = outputs(xl, inputs)
    diffs = [(a - b).abs().max().item() for a, b in zip(theirs, ours)]
    print(f"diffusers vs ours (SDXL): hidden {diffs[0]:.2e}, pooled {diffs[1]:.2e}, unet {diffs[2]:.2e}")
    assert all((a - b).abs().max() > 0.05 for a, b in zip(ours, base))  # the LoRA changes all three
    assert max(diffs) < 1e-4

    # diffusers' own PEFT-format file of the same LoRA reads back as the same kohya modules.
    from peft.utils import get_peft_model_state_dict

    peft_dir = tmp_path / "peft"
    parts = {"unet": pipe.unet, "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2}
    (adapter,) = pipe.unet.peft_config
    pipe.save_lora_weights(
        str(peft_dir),
        **{f"{n}_lora_layers": get_peft_model_state_dict(m, adapter_name=adapter) for n, m in parts.items()},
        **{f"{n}_lora_adapter_metadata": m.peft_config[adapter].to_dict() for n, m in parts.items()},
    )
    peft_file = next(peft_dir.glob("*.safetensors"))
    assert any(k.startswith("text_encoder_2.") and k.endswith("lora_A.weight") for k in _keys(peft_file))
    assert_same_deltas(load_lora_file(peft_file).modules, network.weights())


def _keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def assert_same_deltas(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name, w in want.items():
        expected = lora_delta(*w)
        assert torch.allclose(lora_delta(*got[name]), expected, atol=1e-6 + 1e-5 * float(expected.abs().max())), name


def test_reads_sdxl_files_with_diffusers_names(xl, tmp_path):
    """kohya keys built from diffusers paths (lora_unet_down_blocks_1_...) and PEFT keys
    (unet./text_encoder./text_encoder_2. + lora_A/lora_B, alphas from lora_adapter_metadata)
    of an SDXL LoRA come back under kohya's SGM names, and apply to the model."""
    from engine.lora.names import diffusers_to_sgm, find_targets, sgm_layout

    network = LoRANetwork(xl.unet, xl.text_encoders, family="sdxl", rank=4, alpha=2.0, conv_rank=2, conv_alpha=2.0)
    randomise(network)
    mine = network.weights()
    layout = sgm_layout(xl.unet)
    where = {id(m): (i, p) for i, root in enumerate([xl.unet, *xl.text_encoders]) for p, m in root.named_modules()}
    diffusers_named, peft = {}, {}
    for target in find_targets(xl.unet, xl.text_encoders, "sdxl", with_conv=True):
        root, path = where[id(target.module)]
        w = mine[target.name]
        if root == 0:
            assert "lora_unet_" + diffusers_to_sgm(path, *layout).replace(".", "_") == target.name
            diffusers_named["lora_unet_" + path.replace(".", "_")] = w
            key = f"unet.{path}"
        else:
            diffusers_named[target.name] = w
            key = f"{['', 'text_encoder', 'text_encoder_2'][root]}.text_model.{path.removeprefix('text_model.')}"
        peft[f"{key}.lora_A.weight"] = w.down
        peft[f"{key}.lora_B.weight"] = w.up
    file = save_lora_file(tmp_path / "diffusers_names.safetensors", diffusers_named, {}, "float")
    assert any(k.startswith("lora_unet_down_blocks_2_attentions_1_transformer_blocks_9") for k in _keys(file))
    assert_same_deltas(load_lora_file(file).modules, mine)

    from safetensors.torch import save_file

    adapter = {f"{c}.lora_alpha": 2.0 for c in ("unet", "text_encoder", "text_encoder_2")}
    save_file(peft, str(tmp_path / "peft.safetensors"), {"lora_adapter_metadata": json.dumps(adapter)})
    assert_same_deltas(load_lora_file(tmp_path / "peft.safetensors").modules, mine)
    unet_only = {k: v for k, v in peft.items() if k.startswith("unet.")}  # no SDXL hint but its names
    save_file(unet_only, str(tmp_path / "peft_unet.safetensors"))
    got = load_lora_file(tmp_path / "peft_unet.safetensors").modules
    assert set(got) == {n for n in mine if n.startswith("lora_unet_")}
    assert all(w.alpha == w.rank for w in got.values())  # no metadata: alpha = rank, as PEFT

    inputs = unet_inputs(xl)
    from engine.lora.network import apply_lora_file

    applied = apply_lora_file(tmp_path / "diffusers_names.safetensors", xl)
    try:
        via_file = outputs(xl, inputs)
    finally:
        applied.remove()
    network.apply_to()
    try:
        direct = outputs(xl, inputs)
    finally:
        network.remove()
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(via_file, direct))


def test_sd15_lora_and_sdxl_lora_do_not_merge(xl, tmp_path):
    from engine.merge.svd import MergeError, merge_loras

    sd15 = load_base_model("tiny")
    one = LoRANetwork(sd15.unet, sd15.text_encoders, rank=4)
    randomise(one)
    a = one.save(tmp_path / "sd15.safetensors", metadata=lora_metadata({}, "sd1"))
    other = LoRANetwork(xl.unet, xl.text_encoders, family="sdxl", rank=4)
    randomise(other)
    b = other.save(tmp_path / "sdxl.safetensors", metadata=lora_metadata({}, "sdxl"))
    with pytest.raises(MergeError, match=r"different model families \(sdxl.safetensors: sdxl, sd15.safetensors: sd1\)"):  # which is which
        merge_loras([b, a], [1.0, -1.0], new_rank=8)
    assert not list(tmp_path.glob("*merged*"))


# --------------------------------------------------------------------------- training, merge, previews


def _tensors(path):
    return {n: (w.down, w.up) for n, w in load_lora_file(path).modules.items()}


def test_resume_is_bit_identical(xl, tmp_path):
    straight = example_plan(tmp_path / "straight", 8, save_precision="float")
    full = train(straight, "a", model=xl, log=quiet)
    split = example_plan(tmp_path / "split", 8, save_precision="float")
    done = []
    first = train(split, "a", model=xl, log=quiet, controls=TrainControls(on_progress=lambda p: done.append(p.step), should_stop=lambda: len(done) >= 4))
    assert first.status == "stopped" and first.step == 4
    second = train(split, "a", model=xl, resume=True, log=quiet)
    assert second.status == "done" and second.step == 8
    expected, got = _tensors(full.lora_path), _tensors(second.lora_path)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[n][0], got[n][0]) and torch.equal(expected[n][1], got[n][1]) for n in expected)
    assert any(float(up.abs().max()) > 0 for _, up in got.values())


def test_example_trains_merges_bakes_and_samples(xl, tmp_path):
    """projects/example-sdxl end to end (few steps): A, B, the SVD merge, a preview grid whose
    strength 0 is the base pipeline bit for bit; method 1 (bake + extract) agrees with the merge."""
    import numpy as np

    from engine.jobs.enqueue import enqueue_project
    from engine.jobs.queue import Queue
    from engine.merge.bake import bake_lora
    from engine.merge.extract import extract_lora
    from engine.merge.svd import merge_loras, save_merge
    from engine.models.tiny import tiny_sdxl_dir
    from engine.train.sample import SampleSettings, generate, read_grid_parameters, sample_lora

    root = copy_example(tmp_path)
    queue = Queue(tmp_path / "home")
    steps = enqueue_project(queue, root, max_steps=4)
    assert [(s.what, s.action) for s in steps][:2] == [("train A+B", "queued"), ("merge", "queued")]
    plan = make_plan(load_project(root), max_steps=4)
    assert plan.project.info.base_model == "tiny-sdxl" and plan.side("a").buckets == ((128, 192),)
    from engine.train.twin import train_twin

    results = train_twin(plan, model=xl, log=quiet)  # as the queue trains them: one batch of two (SDXL's size conditions too)
    for result in results.values():
        meta = load_lora_file(result.lora_path).metadata
        assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_resolution"] == "(128, 192)"
        assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
        assert result.status == "done" and result.final_loss == result.final_loss

    merged = merge_loras([results["b"].lora_path, results["a"].lora_path], [1.0, -1.0], new_rank=16)
    path, stats_path = save_merge(merged, plan.merged_path, "float")
    stats = json.loads(stats_path.read_text())
    assert merged.family == stats["family"] == "sdxl" and len(merged.modules) == 722
    assert any(m["name"].startswith("lora_unet_input_blocks_") for m in stats["modules"])
    assert load_lora_file(path).metadata["ss_base_model_version"] == "sdxl_base_v1-0"

    settings = SampleSettings.from_params(plan.project.sample)
    settings = replace(settings, steps=3, size=[64, 96])
    grid = sample_lora(xl, path, settings, plan.samples_dir / "grid.png", model_name="tiny-sdxl")
    assert read_grid_parameters(grid)["settings"]["size"] == [64, 96]
    base = generate(xl, settings, None)
    network = LoRANetwork.from_file(path, xl.unet, xl.text_encoders, "sdxl")
    scaled = generate(xl, replace(settings, strengths=[0.0, 4.0]), network)
    assert np.array_equal(np.asarray(base[0][0]), np.asarray(scaled[0][0]))  # strength 0: the base, bit for bit
    assert not np.array_equal(np.asarray(base[0][0]), np.asarray(scaled[0][1]))

    # Method 1 on the diffusers folder: bake A and B, extract B - A; same LoRA as the merge.
    folder = str(tiny_sdxl_dir())
    baked = {s: bake_lora(folder, results[s].lora_path, tmp_path / f"baked_{s}", save_precision="float") for s in "ab"}
    assert baked["a"].family == "sdxl" and baked["a"].format == "diffusers"
    extracted = extract_lora(str(baked["a"].path), str(baked["b"].path), dim=16, save_to=tmp_path / "x.safetensors",
                             save_precision="float")
    assert extracted.family == "sdxl"
    for name, w in extracted.modules.items():
        want = lora_delta(*merged.modules[name])
        assert torch.allclose(lora_delta(*w), want, atol=1e-6 + 1e-3 * float(want.abs().max())), name


def test_new_sdxl_project_gets_sdxl_sized_buckets(tmp_path):
    from safetensors.torch import save_file

    from engine.project.scaffold import create_project
    from tests.helpers import write_png

    # Real checkpoints' headers (the family is read from them; the built-in models have their
    # own CPU-sized presets, see test_new_project_on_a_builtin_model_gets_cpu_sized_defaults).
    unet = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3), "first_stage_model.decoder.conv_out.weight": torch.zeros(3, 8, 3, 3)}
    save_file({**unet, "conditioner.embedders.1.model.ln_final.weight": torch.zeros(8)}, str(tmp_path / "xl.safetensors"))
    save_file({**unet, "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(8)}, str(tmp_path / "sd.safetensors"))
    a, b = write_png(tmp_path / "a.png"), write_png(tmp_path / "b.png", colour=(90, 90, 90))
    xl_project = create_project(tmp_path / "xl", a, b, base_model=str(tmp_path / "xl.safetensors"))
    assert xl_project.train.resolution == [832, 1216] and xl_project.sample.size == [832, 1216]
    assert "resolution = [832, 1216]" in xl_project.toml_path.read_text()
    sd_project = create_project(tmp_path / "sd", a, b, base_model=str(tmp_path / "sd.safetensors"))
    assert sd_project.train.resolution == [600, 900] and sd_project.sample.size == [512, 768]
    from engine.project.plan import bucket_size

    assert bucket_size(832, 1216, xl_project.train.resolution) == (832, 1216)
    assert bucket_size(600, 900, xl_project.train.resolution) == (768, 1216)  # [1024, 1024] would give 640x1024


# --------------------------------------------------------------------------- v-prediction (NoobAI-XL V-Pred and the like)


def kohya_zero_terminal_snr_alphas_cumprod():
    """sd-scripts' fix_noise_scheduler_betas_for_zero_terminal_snr (custom_train_functions.py), as written there."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    alphas_bar_sqrt = (1 - betas).cumprod(0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= last
    alphas_bar_sqrt *= first / (first - last)
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return torch.cumprod(alphas, dim=0)


@pytest.fixture(scope="module")
def vpred_file(tmp_path_factory):
    """The tiny SDXL model as a single file with ComfyUI's v_pred and ztsnr keys, as NoobAI-XL V-Pred carries them."""
    from safetensors.torch import save_file

    from engine.models.tiny import tiny_sdxl_pipeline

    path = tmp_path_factory.mktemp("vpred") / "noob_vpred.safetensors"
    save_file({**sdxl_single_file_state_dict(tiny_sdxl_pipeline()), "v_pred": torch.zeros(0), "ztsnr": torch.zeros(0)}, str(path))
    return path


@pytest.fixture(scope="module")
def vxl(vpred_file):
    from engine.models.tiny import tiny_sdxl_dir

    return load_base_model(str(vpred_file), config_dir=tiny_sdxl_dir())


def test_a_vpred_ztsnr_sdxl_file_loads_as_v_prediction_with_zero_terminal_snr(vxl, vpred_file, tmp_path):
    from safetensors.torch import load_file, save_file

    from engine.errors import ModelError
    from engine.formats.model_files import inspect_base_model
    from engine.models.tiny import tiny_sdxl_dir

    assert inspect_base_model(vpred_file).describe() == "SDXL, v-prediction, zero-terminal SNR"
    assert vxl.family == "sdxl-v" and vxl.is_sdxl and vxl.prediction_type == "v_prediction" and vxl.zero_snr
    schedule = vxl.noise_scheduler
    assert schedule.config.prediction_type == "v_prediction" and schedule.config.rescale_betas_zero_snr
    assert float(schedule.alphas_cumprod[-1]) == 0.0  # t = 999 is pure noise
    assert torch.allclose(schedule.alphas_cumprod, kohya_zero_terminal_snr_alphas_cumprod(), rtol=1e-5, atol=1e-7)
    sampling = vxl.scheduler.config  # the single file's configs are SDXL's epsilon ones: told its target here
    assert (sampling.prediction_type, sampling.rescale_betas_zero_snr, sampling.timestep_spacing) == ("v_prediction", True, "trailing")
    # the weights are the same model's: only the target differs
    plain = load_base_model("tiny-sdxl")
    assert all(torch.equal(a, b) for a, b in zip(vxl.unet.state_dict().values(), plain.unet.state_dict().values()))

    with pytest.raises(ModelError, match=r"model_family sdxl is epsilon-prediction, but this model says v-prediction \(its v_pred key\): use sdxl-v or auto"):
        load_base_model(str(vpred_file), "sdxl", config_dir=tiny_sdxl_dir())
    # without markers (e.g. saved by kohya), model_family sdxl-v says it; no ztsnr key: the original betas
    unmarked = tmp_path / "unmarked.safetensors"
    save_file({k: v for k, v in load_file(str(vpred_file)).items() if k not in ("v_pred", "ztsnr")}, str(unmarked))
    said = load_base_model(str(unmarked), "sdxl-v", config_dir=tiny_sdxl_dir())
    assert said.family == "sdxl-v" and said.prediction_type == "v_prediction" and not said.zero_snr
    assert float(said.noise_scheduler.alphas_cumprod[-1]) > 0.004
    assert load_base_model(str(unmarked), config_dir=tiny_sdxl_dir()).family == "sdxl"


def test_a_vpred_diffusers_folder_says_it_in_its_scheduler(tmp_path):
    import shutil

    from engine.formats.model_files import inspect_base_model
    from engine.models.tiny import tiny_sdxl_dir

    folder = tmp_path / "vpred_folder"
    shutil.copytree(tiny_sdxl_dir(), folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True}))
    assert inspect_base_model(folder).describe() == "SDXL, v-prediction, zero-terminal SNR"
    model = load_base_model(str(folder))
    assert model.family == "sdxl-v" and model.zero_snr and float(model.noise_scheduler.alphas_cumprod[-1]) == 0.0
    assert model.scheduler.config.timestep_spacing == "trailing"


def test_vpred_training_learns_v_and_its_lora_says_so(vxl, tmp_path, monkeypatch):
    """The target is v (at t = 999, with zero-terminal SNR: the input is the noise itself and v = -x0),
    min-SNR stays finite, the LoRA's metadata says v and zero-terminal SNR as kohya writes them,
    and its preview draws."""
    import numpy as np

    from engine.train.sample import SampleSettings, generate
    from engine.train.side_run import SideRun, min_snr_weights

    drawn = []
    real_latents, real_draw = SideRun.draw_latents, SideRun.draw

    def latents(self, step, datas):
        batch, x0s, noise = real_latents(self, step, datas)
        drawn.append({"x0": x0s[0].clone(), "noise": noise.clone()})
        return batch, x0s, noise

    def draw(self, step, scheduler, v_prediction):
        assert v_prediction
        result = real_draw(self, step, scheduler, v_prediction)
        drawn[-1].update(noisy=result.noisy, target=result.target, t=result.timesteps)
        return result

    monkeypatch.setattr(SideRun, "draw_latents", latents)
    monkeypatch.setattr(SideRun, "draw", draw)
    result = train(example_plan(tmp_path / "last", 2, min_timestep=999, max_timestep=1000), "a", model=vxl, log=quiet)
    assert result.status == "done" and len(drawn) == 2
    for d in drawn:
        assert d["t"].tolist() == [999]
        assert torch.equal(d["noisy"], d["noise"]) and torch.allclose(d["target"], -d["x0"])  # pure noise in, -x0 out
    drawn.clear()
    result = train(example_plan(tmp_path / "all", 3, min_snr_gamma=5.0), "a", model=vxl, log=quiet)
    assert result.status == "done" and result.final_loss == result.final_loss  # finite, min-SNR on
    for d in drawn:
        want = vxl.noise_scheduler.get_velocity(d["x0"], d["noise"], d["t"])
        assert torch.allclose(d["target"], want) and not torch.allclose(d["target"], d["noise"])
    t = torch.tensor([0, 500, 999])
    v_weights = min_snr_weights(t, vxl.noise_scheduler, 5.0, True)
    eps_weights = min_snr_weights(t, vxl.noise_scheduler, 5.0, False)
    assert torch.isfinite(v_weights).all() and float(v_weights[2]) == 0.0 and torch.isfinite(eps_weights).all() and float(eps_weights[2]) == 1.0

    meta = load_lora_file(result.lora_path).metadata
    assert meta["modelspec.prediction_type"] == "v" and meta["ss_zero_terminal_snr"] == "True"
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["ss_v2"] == "False"

    network = LoRANetwork.from_file(result.lora_path, vxl.unet, vxl.text_encoders, vxl.family)
    images = generate(vxl, SampleSettings(prompts=["a red house"], steps=3, size=[64, 64], strengths=[0.0, 1.0]), network)
    assert all(np.isfinite(np.asarray(image, dtype=float)).all() and np.asarray(image).std() > 0 for image in images[0])
