"""LoRA files other tools write, as they write them (an interop review of 2026-12-07 against
sd-scripts, A1111, ComfyUI, diffusers and the LoRA Block Weight extension's sources):

- ComfyUI's LoraSave: the U-Net's own keys (``diffusion_model.input_blocks.1.1.proj_in``), no
  alphas, and every layer of the difference, conv_in, the time embedding and conv_out included;
- LyCORIS' full preset: kohya names for those layers (``lora_unet_conv_in``);
- diffusers' kohya conversion of an SD1 LoRA: ``lora_te1_`` for SD1's one text encoder;
- Linear factors on a 1x1 conv (A1111 and ComfyUI reshape them);
- old kohya SD2 files (``ss_v2`` and no ``ss_base_model_version``), PEFT rsLoRA alphas.

Each was refused as "wrong base model family?", read as another family, or read at the wrong
strength. A1111 and ComfyUI apply all of them.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from engine.errors import LoRAFileError  # noqa: E402
from engine.lora.files import load_lora_file, save_lora_file  # noqa: E402
from engine.lora.names import UNET_TOP, diffusers_to_sgm, find_targets, kohya_module_names, sgm_layout  # noqa: E402
from engine.lora.network import LoRANetwork  # noqa: E402
from engine.merge.svd import MergeError, family_of, merge_loras  # noqa: E402


def delta(w) -> torch.Tensor:
    """A module's change, as its base weight's shape flattened to (out, in·k·k)."""
    return (w.up.reshape(w.up.shape[0], -1).double() @ w.down.reshape(w.down.shape[0], -1).double()) * (w.alpha / w.rank)


def random_network(tiny) -> LoRANetwork:
    network = LoRANetwork(tiny.unet, tiny.text_encoders, family="sd1", rank=4, alpha=2.0, conv_rank=2, conv_alpha=1.0,
                          text_encoder=False)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for lora in network.loras():
            lora.lora_up.weight.copy_(torch.randn(lora.lora_up.weight.shape, generator=g) * 0.05)
    return network


def comfy_file(tiny, network, path, extras, text=None):
    """The file ComfyUI's LoraSave writes for these modules: ``diffusion_model.`` + the LDM path,
    no alphas (the scale folded into lora_up), fp16. ``extras``: {LDM path: (down, up)} more;
    ``text``: {key without its factor suffix: (down, up)} of the text encoder."""
    where = {id(m): p for p, m in tiny.unet.named_modules()}
    layout = sgm_layout(tiny.unet)
    mine = network.weights()
    tensors = {}
    for target in find_targets(tiny.unet, [], "sd1", with_conv=True):
        if target.name not in mine:
            continue
        w, path_in_unet = mine[target.name], where[id(target.module)]
        key = "diffusion_model." + (UNET_TOP.get(path_in_unet) or diffusers_to_sgm(path_in_unet, *layout))
        tensors[f"{key}.lora_down.weight"] = w.down.half()
        tensors[f"{key}.lora_up.weight"] = (w.up * (w.alpha / w.rank)).half()
    for key, (down, up) in extras.items():
        tensors[f"diffusion_model.{key}.lora_down.weight"], tensors[f"diffusion_model.{key}.lora_up.weight"] = down.half(), up.half()
    for key, (down, up) in (text or {}).items():
        tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = down.half(), up.half()
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    return path


def test_a_comfyui_extracted_lora_reads_under_our_names_and_applies_its_other_layers_too(tiny, tmp_path):
    network = random_network(tiny)
    g = torch.Generator().manual_seed(6)
    unet = tiny.unet
    extras = {  # layers outside kohya's targets, shaped as LoraSave shapes them
        "input_blocks.0.0": (torch.randn(2, unet.conv_in.in_channels, 3, 3, generator=g) * 0.1,
                             torch.randn(unet.conv_in.out_channels, 2, 1, 1, generator=g) * 0.1),
        "time_embed.0": (torch.randn(2, unet.time_embedding.linear_1.in_features, generator=g) * 0.1,
                         torch.randn(unet.time_embedding.linear_1.out_features, 2, generator=g) * 0.1),
        "out.2": (torch.randn(2, unet.conv_out.in_channels, 3, 3, generator=g) * 0.1,
                  torch.randn(unet.conv_out.out_channels, 2, 1, 1, generator=g) * 0.1),
    }
    fc1 = next(m for name, m in tiny.text_encoders[0].named_modules() if name.endswith("layers.0.mlp.fc1"))  # (transformers 4 and 5)
    text = {"text_encoders.clip_l.transformer.text_model.encoder.layers.0.mlp.fc1":  # its text encoder, under ComfyUI's name
            (torch.randn(2, fc1.in_features, generator=g) * 0.1, torch.randn(fc1.out_features, 2, generator=g) * 0.1)}
    path = comfy_file(tiny, network, tmp_path / "ComfyUI_extracted_lora_00001_.safetensors", extras, text)

    read = load_lora_file(path)
    ours = network.weights()
    extra_names = {"lora_unet_conv_in", "lora_unet_time_embedding_linear_1", "lora_unet_conv_out", "lora_te_text_model_encoder_layers_0_mlp_fc1"}
    assert set(read.modules) == set(ours) | extra_names
    assert family_of(read) == "sd1"
    for name, w in ours.items():
        assert torch.allclose(delta(read.modules[name]), delta(w), atol=2e-4), name

    applied = LoRANetwork.from_file(path, tiny.unet, tiny.text_encoders, "sd1")
    assert set(applied.weights()) == set(read.modules)
    x = torch.randn(1, unet.conv_in.in_channels, 8, 8, generator=g)
    with torch.no_grad():
        before = unet.conv_in(x)
        applied.apply_to()
        try:
            after = unet.conv_in(x)
        finally:
            applied.remove()
        w = read.modules["lora_unet_conv_in"]
        expected = torch.nn.functional.conv2d(x, delta(w).float().reshape(unet.conv_in.weight.shape), padding=1)
    assert torch.allclose(after - before, expected, atol=1e-4)  # the 3x3 change, at conv_in's own geometry

    from safetensors.torch import load_file

    from engine.merge.bake import bake_lora

    bake_lora("tiny", path, tmp_path / "baked", save_precision="float")
    baked = load_file(str(tmp_path / "baked" / "unet" / "diffusion_pytorch_model.safetensors"))
    for key, module, name in (("conv_in.weight", unet.conv_in, "lora_unet_conv_in"),
                              ("conv_out.weight", unet.conv_out, "lora_unet_conv_out"),
                              ("down_blocks.0.attentions.0.proj_in.weight", unet.down_blocks[0].attentions[0].proj_in,
                               "lora_unet_down_blocks_0_attentions_0_proj_in")):
        change = delta(read.modules[name]).float().reshape(module.weight.shape)
        assert torch.allclose(baked[key] - module.weight.float(), change, atol=1e-4), key


def test_a_comfyui_file_with_bias_differences_is_refused_saying_so(tmp_path):
    """ComfyUI's extraction writes full differences of norm weights (.diff) and biases (.diff_b)
    with bias_diff on (its default): no LoRA holds them, and they were "LoHa/DoRA" to us."""
    from safetensors.torch import save_file

    key = "diffusion_model.input_blocks.1.1.proj_in"
    save_file({f"{key}.lora_down.weight": torch.zeros(2, 32), f"{key}.lora_up.weight": torch.zeros(32, 2),
               f"{key}.diff_b": torch.zeros(32), "diffusion_model.input_blocks.1.1.norm.diff": torch.zeros(32)}, str(tmp_path / "c.safetensors"))
    with pytest.raises(LoRAFileError) as caught:
        load_lora_file(tmp_path / "c.safetensors")
    assert "holds 2 full weight or bias difference(s) such as" in str(caught.value) and "with bias_diff off" in str(caught.value)


def test_linear_factors_on_a_1x1_conv_apply_as_the_conv(tiny, tmp_path):
    """SD1's proj_in is a 1x1 conv; a LoRA trained where it is a Linear (SD2, diffusers) stores 2-D factors."""
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    conv = tiny.unet.down_blocks[0].attentions[0].proj_in
    assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (1, 1)
    g = torch.Generator().manual_seed(7)
    down, up = torch.randn(4, conv.in_channels, generator=g), torch.randn(conv.out_channels, 4, generator=g)
    path = save_lora_file(tmp_path / "linear.safetensors", {name: (down, up, 4.0)}, {"ss_base_model_version": "sd_v1"}, "float")
    applied = LoRANetwork.from_file(path, tiny.unet, tiny.text_encoders, "sd1")
    lora = applied.unet_loras[name]
    assert torch.equal(lora.lora_down.weight.reshape(4, -1), down) and torch.equal(lora.lora_up.weight.reshape(-1, 4), up)

    too_big = save_lora_file(tmp_path / "big.safetensors", {name: (torch.randn(4, conv.in_channels + 1), up, 4.0)},
                             {"ss_base_model_version": "sd_v1"}, "float")
    with pytest.raises(LoRAFileError, match="do not fit"):
        LoRANetwork.from_file(too_big, tiny.unet, tiny.text_encoders, "sd1")


def test_a_name_no_layer_has_is_named_without_blaming_the_family(tiny, tmp_path):
    mods = {"lora_unet_down_blocks_0_attentions_0_proj_in": (torch.randn(4, 32), torch.randn(32, 4), 4.0),
            "lora_unet_conv_norm_out": (torch.randn(4, 32), torch.randn(32, 4), 4.0)}  # a GroupNorm: no Linear or conv
    path = save_lora_file(tmp_path / "odd.safetensors", mods, {"ss_base_model_version": "sd_v1"}, "float")
    with pytest.raises(LoRAFileError) as caught:
        LoRANetwork.from_file(path, tiny.unet, tiny.text_encoders, "sd1")
    assert "1 LoRA module(s) match nothing in this sd1 model (of 2; no layer of it has these names): lora_unet_conv_norm_out" in str(caught.value)
    xl_only = save_lora_file(tmp_path / "xl.safetensors", {"lora_te2_text_model_encoder_layers_0_mlp_fc1": (torch.randn(4, 32), torch.randn(32, 4), 4.0)},
                             {}, "float")
    with pytest.raises(LoRAFileError, match="wrong base model family"):
        LoRANetwork.from_file(xl_only, tiny.unet, tiny.text_encoders, "sd1")


@pytest.mark.parametrize("names, metadata, sdxl", [
    # diffusers' convert_state_dict_to_kohya writes lora_te1_ for SD1's one text encoder
    (["lora_unet_down_blocks_0_attentions_0_proj_in", "lora_te1_text_model_encoder_layers_0_mlp_fc1"], {}, False),
    # SGM-layout U-Net names beside SD1's text encoder prefix: SD1 (kohya's SDXL files never have lora_te_)
    (["lora_unet_input_blocks_4_1_proj_in", "lora_te_text_model_encoder_layers_0_mlp_fc1"], {}, False),
    # slots only SD1 has decide without a text encoder (ComfyUI's files have none)
    (["lora_unet_output_blocks_11_1_proj_out"], {}, False),
    (["lora_unet_input_blocks_4_1_proj_in"], {"ss_v2": "True"}, False),
    # SDXL's own: two text encoders, a second transformer block, label_emb; or its metadata
    (["lora_unet_input_blocks_4_1_proj_in", "lora_te1_text_model_encoder_layers_0_mlp_fc1"], {}, True),
    (["lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q", "lora_te_text_model_encoder_layers_0_mlp_fc1"], {}, True),
    (["lora_unet_label_emb_0_0"], {}, True),
    (["lora_unet_down_blocks_1_attentions_0_proj_in"], {"ss_base_model_version": "sdxl_base_v1-0"}, True),
])
def test_the_family_of_a_file_is_read_from_what_only_one_family_has(names, metadata, sdxl):
    from engine.lora.names import is_sdxl_file

    assert is_sdxl_file(names, metadata) is sdxl


def test_other_layouts_become_the_names_kohya_writes_for_the_family():
    sd1 = kohya_module_names(["diffusion_model.input_blocks.1.0.in_layers.2", "diffusion_model.input_blocks.3.0.op",
                              "diffusion_model.output_blocks.2.1.conv", "diffusion_model.output_blocks.11.1.proj_out",
                              "lora_te1_text_model_encoder_layers_0_mlp_fc1"], {})
    assert list(sd1.values()) == ["lora_unet_down_blocks_0_resnets_0_conv1", "lora_unet_down_blocks_0_downsamplers_0_conv",
                                  "lora_unet_up_blocks_0_upsamplers_0_conv", "lora_unet_up_blocks_3_attentions_2_proj_out",
                                  "lora_te_text_model_encoder_layers_0_mlp_fc1"]
    xl = kohya_module_names(["lora_unet_conv_in", "lora_unet_time_embedding_linear_1", "lora_unet_add_embedding_linear_2",
                             "lora_unet_conv_out", "lora_te1_text_model_encoder_layers_0_mlp_fc1"], {"ss_base_model_version": "sdxl_base_v1-0"})
    assert list(xl.values()) == ["lora_unet_input_blocks_0_0", "lora_unet_time_embed_0", "lora_unet_label_emb_0_2",
                                 "lora_unet_out_2", "lora_te1_text_model_encoder_layers_0_mlp_fc1"]


def test_an_old_kohya_sd2_file_stays_sd2_through_a_merge(tmp_path):
    mods = {"lora_unet_down_blocks_0_attentions_0_proj_in": (torch.randn(4, 32), torch.randn(32, 4), 4.0)}
    paths = [save_lora_file(tmp_path / f"{n}.safetensors", mods, {}, "float") for n in "ba"]
    for path in paths:  # as kohya wrote them before ss_base_model_version
        from safetensors.torch import load_file, save_file

        save_file(load_file(str(path)), str(path), metadata={"ss_v2": "True", "ss_network_module": "networks.lora"})
    result = merge_loras(paths, [1.0, -0.5], new_rank=4)
    assert result.family == "sd2"
    assert result.metadata["ss_v2"] == "True" and result.metadata["ss_base_model_version"].startswith("sd_v2")


@pytest.mark.parametrize("width, family", [(1024, "sd2"), (768, "sd1")])
def test_a_peft_file_without_metadata_is_told_sd2_from_sd1_by_its_widths(tmp_path, width, family):
    """SD1 and SD2 LoRAs have the same names; a PEFT file says no family: it read as SD1, so a
    merge with the user's own SD2 LoRA was refused as "LoRAs for different model families"."""
    from safetensors.torch import save_file

    key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    text = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    tensors = {f"{key}.lora_A.weight": torch.randn(4, width), f"{key}.lora_B.weight": torch.randn(320, 4) * 0.01,
               f"{text}.lora_A.weight": torch.randn(4, width), f"{text}.lora_B.weight": torch.randn(width, 4) * 0.01}
    save_file(tensors, str(tmp_path / "peft.safetensors"))
    peft = load_lora_file(tmp_path / "peft.safetensors")
    assert family_of(peft) == family
    kohya = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (torch.randn(4, width), torch.randn(320, 4), 4.0)}
    mine = save_lora_file(tmp_path / "mine.safetensors", kohya, {"ss_base_model_version": "sd_v2_v"}, "float")
    if family == "sd2":  # an SD2 768-v LoRA of the user's and the PEFT file: one architecture, the result says 768-v
        result = merge_loras([tmp_path / "peft.safetensors", mine], [1.0, -1.0], new_rank=4)
        assert result.family == "sd2-v" and result.metadata["ss_base_model_version"] == "sd_v2_v"
    else:
        with pytest.raises(MergeError, match=r"different model families \(peft.safetensors: sd1, mine.safetensors: sd2-v\)"):
            merge_loras([tmp_path / "peft.safetensors", mine], [1.0, -1.0], new_rank=4)


@pytest.mark.parametrize("version, name, conv", [
    ("sd_v1", "lora_unet_down_blocks_0_attentions_0_proj_in", True),  # SD1's proj_in is a 1x1 conv
    ("sdxl_base_v1-0", "lora_unet_input_blocks_4_1_proj_in", False),  # SDXL's a Linear
    ("sdxl_base_v1-0", "lora_unet_input_blocks_4_0_skip_connection", True),  # a conv_shortcut everywhere
])
def test_a_merge_of_linear_and_conv_factors_on_one_module_writes_kohyas_layout(tmp_path, version, name, conv):
    """Linear factors on a 1x1 conv (as some converters write them) put first made the merged
    module Linear-factored whatever the model's module is: kohya's loader refuses the shape."""
    g = torch.Generator().manual_seed(3)
    down, up = torch.randn(4, 32, generator=g), torch.randn(32, 4, generator=g)
    flat = save_lora_file(tmp_path / "flat.safetensors", {name: (down, up, 4.0)}, {"ss_base_model_version": version}, "float")
    square = save_lora_file(tmp_path / "square.safetensors", {name: (down[:, :, None, None] * 2, up[:, :, None, None], 4.0)},
                            {"ss_base_model_version": version}, "float")
    wanted = 3 * (up.double() @ down.double())  # x + 2x: the two layouts read as one
    for order in ([flat, square], [square, flat]):
        w = merge_loras(order, [1.0, 1.0], new_rank=4).modules[name]
        assert (w.down.dim(), w.up.dim()) == ((4, 4) if conv else (2, 2))
        assert torch.allclose(delta(w), wanted, atol=1e-3)


def test_a_peft_rslora_file_reads_at_its_strength(tmp_path):
    """rsLoRA scales by alpha/√rank: r 4, alpha 8 is a scale of 4 (kohya's alpha/rank: alpha 16)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    base = "unet.down_blocks.0.attentions.0.proj_in"
    tensors = {f"{base}.lora_A.weight": torch.randn(4, 32, generator=g), f"{base}.lora_B.weight": torch.randn(32, 4, generator=g)}
    for rslora, scale in ((True, 4.0), (False, 2.0)):
        metadata = {"lora_adapter_metadata": json.dumps({"unet.r": 4, "unet.lora_alpha": 8, "unet.use_rslora": rslora})}
        save_file(tensors, str(tmp_path / "peft.safetensors"), metadata=metadata)
        w = load_lora_file(tmp_path / "peft.safetensors").modules["lora_unet_down_blocks_0_attentions_0_proj_in"]
        assert w.alpha / w.rank == pytest.approx(scale)


def test_a_short_block_weight_vector_says_which_blocks_it_leaves_at_1(tmp_path):
    """sd-scripts (and we) keep the blocks a 17-value vector does not list at 1; the LoRA Block
    Weight extension, where presets come from, gives them 0: a LoRA with layers there is told."""
    attention = {"lora_unet_up_blocks_1_attentions_0_proj_in": (torch.randn(4, 32), torch.randn(32, 4), 4.0)}
    conv = {**attention, "lora_unet_down_blocks_0_downsamplers_0_conv": (torch.randn(2, 32, 3, 3), torch.randn(32, 2, 1, 1), 2.0),
            "lora_unet_up_blocks_0_resnets_1_conv1": (torch.randn(2, 32, 3, 3), torch.randn(32, 2, 1, 1), 2.0)}
    outall = "[1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1]"
    for name, mods, said in (("attn", attention, None),
                             ("conv", conv, "conv_b.safetensors: its 17-value block weights leave IN03, OUT01 at 1, as sd-scripts does "
                                            "(the LoRA Block Weight extension gives them 0); give all 26 values to set them")):
        paths = [save_lora_file(tmp_path / f"{name}_{n}.safetensors", mods, {"ss_base_model_version": "sd_v1"}, "float") for n in "ba"]
        notes = merge_loras(paths, [1.0, -1.0], new_rank=4, lbws=[outall, None]).notes
        assert [n for n in notes if "block weights" in n] == ([said] if said else [])


def test_stats_takes_the_extensions_name_for_the_middle_block():
    from copylora_tui.core.stats_table import _is_in

    assert _is_in("MID", "M00") and _is_in("MID", "m00") and _is_in("M00", "MID") and _is_in("M00", "mid") and not _is_in("IN00", "M00")


def test_the_metadata_gives_the_alphas_the_file_stores(tmp_path):
    """Files keep one alpha (diffusers mis-scales a second one), so a conv_alpha apart from
    network_alpha is folded into the conv modules' lora_up; kohya's --network_weights scales by
    the alphas it is told, and the metadata is where a user reads them."""
    from safetensors import safe_open

    from engine.lora.metadata import kohya_ss_metadata

    mods = {"lora_unet_up_blocks_1_attentions_0_proj_in": (torch.randn(4, 32), torch.randn(32, 4), 2.0),
            "lora_unet_up_blocks_1_attentions_0_proj_out": (torch.randn(4, 32), torch.randn(32, 4), 2.0),
            "lora_unet_up_blocks_0_resnets_1_conv1": (torch.randn(2, 32, 3, 3), torch.randn(32, 2, 1, 1), 1.0)}
    facts = {"network_dim": 4, "network_alpha": 2.0, "conv_dim": 2, "conv_alpha": 1.0}
    for conv_alpha, said in ((1.0, "2.0"), (2.0, "2")):  # folded: the stored alpha; not folded: as given
        mods["lora_unet_up_blocks_0_resnets_1_conv1"] = (*mods["lora_unet_up_blocks_0_resnets_1_conv1"][:2], conv_alpha)
        meta = kohya_ss_metadata({**facts, "conv_alpha": conv_alpha if conv_alpha != 2.0 else 2}, "sd1")
        path = save_lora_file(tmp_path / "m.safetensors", mods, meta, "float")
        with safe_open(str(path), "pt") as f:
            stored = f.metadata()
            alphas = {float(f.get_tensor(k)) for k in f.keys() if k.endswith(".alpha")}
        assert alphas == {2.0}
        assert json.loads(stored["ss_network_args"])["conv_alpha"] == said and float(stored["ss_network_alpha"]) == 2.0
        w = load_lora_file(path).modules["lora_unet_up_blocks_0_resnets_1_conv1"]
        assert torch.allclose(delta(w), delta(type(w)(*[torch.as_tensor(x) for x in mods["lora_unet_up_blocks_0_resnets_1_conv1"][:2]],
                                                      conv_alpha)), atol=1e-5)


@pytest.mark.parametrize("key", ["lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a",
                                 "lora_unet_down_blocks_0_attentions_0_proj_in.dora_scale"])
def test_loha_and_dora_files_are_refused_naming_what_they_are(tmp_path, key):
    from safetensors.torch import save_file

    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({f"{name}.lora_down.weight": torch.zeros(4, 32), f"{name}.lora_up.weight": torch.zeros(32, 4), key: torch.zeros(4, 32)},
              str(tmp_path / "x.safetensors"))
    with pytest.raises(LoRAFileError) as caught:
        load_lora_file(tmp_path / "x.safetensors")
    assert f"1 unsupported key(s) such as {key!r} (LyCORIS' LoHa/LoKr, DoRA and diffusers' old attention-processor formats are " \
           "not supported; LyCORIS' LoRA and LoCon are)" in str(caught.value)


def test_names_either_family_could_have_are_read_as_the_models_family(tiny, tmp_path):
    """A ComfyUI SD1 file of conv_in, the time embedding and conv_out alone, or diffusers' SD1
    conversion of a text-encoder LoRA (lora_te1_ only), holds no name only SD1 has: read as
    SDXL's, they matched nothing in SD1.5 ("wrong base model family?"). Applied, baked or trained
    on, the model's family decides."""
    from safetensors.torch import save_file

    from engine.merge.bake import bake_lora

    unet = tiny.unet
    fc1 = next(m for name, m in tiny.text_encoders[0].named_modules() if name.endswith("layers.0.mlp.fc1"))
    g = torch.Generator().manual_seed(8)

    def factors(module, rank=2):
        shape = module.weight.shape
        down = torch.randn(rank, *shape[1:], generator=g) * 0.1
        return down, torch.randn(shape[0], rank, *([1, 1] if len(shape) == 4 else []), generator=g) * 0.1

    files = {
        "comfy_extras": ({"diffusion_model.input_blocks.0.0": unet.conv_in, "diffusion_model.time_embed.0": unet.time_embedding.linear_1,
                          "diffusion_model.out.2": unet.conv_out}, {"lora_unet_conv_in", "lora_unet_time_embedding_linear_1", "lora_unet_conv_out"}),
        "te1_only": ({"lora_te1_text_model_encoder_layers_0_mlp_fc1": fc1}, {"lora_te_text_model_encoder_layers_0_mlp_fc1"}),
        "comfy_clip_h": ({"text_encoders.clip_h.transformer.text_model.encoder.layers.0.mlp.fc1": fc1},
                         {"lora_te_text_model_encoder_layers_0_mlp_fc1"}),
    }
    for stem, (modules, kohya) in files.items():
        tensors = {}
        for key, module in modules.items():
            down, up = factors(module)
            tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = down, up
        path = tmp_path / f"{stem}.safetensors"
        save_file(tensors, str(path))
        applied = LoRANetwork.from_file(path, tiny.unet, tiny.text_encoders, "sd1")
        assert set(applied.weights()) == kohya, stem
        bake_lora("tiny", path, tmp_path / f"baked-{stem}")
    # where nothing says the family, a file is read as before: SGM names as SDXL's
    assert set(load_lora_file(tmp_path / "comfy_extras.safetensors").modules) == {
        "lora_unet_input_blocks_0_0", "lora_unet_time_embed_0", "lora_unet_out_2"}
    save_file({"diffusion_model.input_blocks.12.1.proj_in.lora_down.weight": torch.zeros(2, 32),
               "diffusion_model.input_blocks.12.1.proj_in.lora_up.weight": torch.zeros(32, 2)}, str(tmp_path / "nowhere.safetensors"))
    with pytest.raises(LoRAFileError) as caught:  # a file that fits nothing names itself (sample said no file)
        LoRANetwork.from_file(tmp_path / "nowhere.safetensors", tiny.unet, tiny.text_encoders, "sd1")
    assert str(caught.value).startswith(f"{tmp_path / 'nowhere.safetensors'}: 1 LoRA module(s) match nothing in this sd1 model")
