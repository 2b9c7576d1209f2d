"""Base models: the built-in tiny model, loading each kind of source, family detection."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers_models import sd1_single_file_state_dict
from safetensors.torch import load_file, save_file

from engine.errors import CopyloraError, ModelError
from engine.formats.model_files import detect_family
from engine.models import tiny as tiny_model
from engine.models.loading import _sd2_prediction, build_empty, build_empty_sd15, legacy_model_hash, load_base_model, load_pickled_checkpoint


@pytest.fixture(scope="module")
def single_file(tmp_path_factory) -> Path:
    """The tiny model as an A1111-style SD1 single-file checkpoint."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny_sd1.safetensors"
    save_file(sd1_single_file_state_dict(tiny_model.tiny_pipeline()), str(path))
    return path


# --------------------------------------------------------------------------- tiny model


def test_tiny_has_sd15_topology(tiny):
    unet, te = tiny.unet, tiny.text_encoders[0]
    assert tiny.family == "sd1" and tiny.prediction_type == "epsilon" and tiny.model_hash is None
    assert tiny.name == "tiny" and tiny.source == "tiny" and tiny.kohya_version == "sd_v1"
    assert type(tiny.noise_scheduler).__name__ == "DDPMScheduler"
    assert tiny.noise_scheduler.config.prediction_type == "epsilon"
    assert [type(b).__name__ for b in unet.down_blocks] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert [type(b).__name__ for b in unet.up_blocks] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert type(unet.mid_block).__name__ == "UNetMidBlock2DCrossAttn"
    assert all(len(b.resnets) == 2 for b in unet.down_blocks)
    assert all(len(b.resnets) == 3 for b in unet.up_blocks)
    attention = unet.down_blocks[0].attentions[0]
    assert len(attention.transformer_blocks) == 1
    assert isinstance(attention.proj_in, torch.nn.Conv2d) and attention.proj_in.kernel_size == (1, 1)
    assert unet.config.cross_attention_dim == te.config.hidden_size
    assert te.config.num_hidden_layers == 12
    assert all(c % 32 == 0 for c in unet.config.block_out_channels + tiny.vae.config.block_out_channels)
    assert len(tiny.vae.encoder.down_blocks) == 4 and tiny.vae.config.latent_channels == 4


def test_tiny_is_deterministic_and_cached(tiny):
    again = load_base_model("tiny")
    for a, b in zip(tiny.unet.parameters(), again.unet.parameters()):
        assert torch.equal(a, b)
    rebuilt = tiny_model.build_tiny_components()["text_encoder"]
    for a, b in zip(tiny.text_encoders[0].state_dict().values(), rebuilt.state_dict().values()):
        assert torch.equal(a, b)
    assert (tiny_model.tiny_model_dir() / "model_index.json").is_file()


def test_tiny_tokenizer_handles_empty_and_any_ascii(tiny):
    tok = tiny.tokenizers[0]
    ids = tok(["", "a photo of the cat", "".join(chr(c) for c in range(32, 127))], padding="max_length",
              max_length=77, truncation=True, return_tensors="pt").input_ids
    assert ids.shape == (3, 77)
    assert ids[0, 0] == tok.bos_token_id and ids[0, 1] == tok.eos_token_id
    assert int(ids.max()) < tiny.text_encoders[0].config.vocab_size
    with torch.no_grad():
        assert tiny.text_encoders[0](ids)[0].shape == (3, 77, 32)


def test_tiny_cache_build_is_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv("COPYLORA_CACHE", str(tmp_path))
    (tmp_path / tiny_model.TINY_NAME).mkdir()  # a crashed build's leftover, never marked complete
    first = tiny_model.tiny_model_dir()
    assert first == tmp_path / tiny_model.TINY_NAME
    assert (first / "unet" / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [tiny_model.TINY_NAME]  # no temp folders left
    stamp = (first / "model_index.json").stat().st_mtime_ns
    assert tiny_model.tiny_model_dir() == first
    assert (first / "model_index.json").stat().st_mtime_ns == stamp  # second call: no rebuild


def test_tiny_cache_lost_race_uses_winner(tmp_path, monkeypatch):
    monkeypatch.setenv("COPYLORA_CACHE", str(tmp_path))
    final = tmp_path / tiny_model.TINY_NAME
    real_rename = os.rename

    def other_process_wins(src, dst):
        real_rename(src, dst)  # the "other process" finishes first ...
        Path(src).mkdir()
        raise OSError(39, "Directory not empty")  # ... so our rename fails

    monkeypatch.setattr(tiny_model.os, "rename", other_process_wins)
    assert tiny_model.tiny_model_dir() == final
    assert [p.name for p in tmp_path.iterdir()] == [tiny_model.TINY_NAME]


def test_base_model_pipeline_samples(tiny):
    pipe = tiny.pipeline()
    image = pipe("", num_inference_steps=1, height=64, width=64, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3)


# --------------------------------------------------------------------------- other sources


def test_diffusers_folder(tiny):
    model = load_base_model(str(tiny_model.tiny_model_dir()))
    assert model.family == "sd1" and model.name == tiny_model.TINY_NAME and model.model_hash is None
    assert torch.equal(model.unet.conv_in.weight, tiny.unet.conv_in.weight)


def test_single_file_loads_exactly(single_file, tiny):
    model = load_base_model(str(single_file), config_dir=tiny_model.tiny_model_dir())
    assert model.family == "sd1" and model.name == "tiny_sd1"
    assert model.model_hash == legacy_model_hash(single_file) and len(model.model_hash) == 8
    for ours, ref in [(model.unet, tiny.unet), (model.vae, tiny.vae), (model.text_encoders[0], tiny.text_encoders[0])]:
        got, want = ours.state_dict(), ref.state_dict()
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_single_file_without_vocabulary_says_what_to_provide(single_file, monkeypatch):
    monkeypatch.delenv("COPYLORA_CLIP_TOKENIZER", raising=False)
    with pytest.raises(ModelError, match="vocab.json") as info:
        load_base_model(str(single_file))  # shipped sd1 configs, which carry no vocabulary
    assert "COPYLORA_CLIP_TOKENIZER" in str(info.value) and "config_dir" in str(info.value)


def test_a_single_file_without_its_vae_is_refused_in_our_words(single_file, tmp_path):
    """diffusers' own words were advice for its API ("Please load the component before passing
    it in as an argument to `from_single_file`"), four lines long."""
    no_vae = tmp_path / "no_vae.safetensors"
    save_file({k: v for k, v in load_file(str(single_file)).items() if not k.startswith("first_stage_model.")}, str(no_vae))
    with pytest.raises(ModelError) as info:
        load_base_model(str(no_vae), config_dir=tiny_model.tiny_model_dir())
    assert str(info.value) == (f"{no_vae}: it has no VAE weights (first_stage_model.*): a checkpoint saved without its VAE; "
                               "copylora reads the VAE from the checkpoint itself, so give one with its VAE baked in")


def test_a_model_trained_for_another_target_is_refused_where_it_would_train(single_file, tmp_path):
    """A v-prediction (or EDM) SD1/SDXL model has an epsilon one's keys and shapes: it loaded, and
    trained as epsilon (a LoRA learning the wrong target) without a word. Extracting a LoRA
    from two of them does not care, so extract may still load one."""
    import shutil

    vpred = tmp_path / "vpred.safetensors"
    save_file({**load_file(str(single_file)), "v_pred": torch.zeros(0), "ztsnr": torch.zeros(0)}, str(vpred))
    with pytest.raises(ModelError, match=r"vpred.safetensors: an SD1 model trained for v-prediction .*epsilon-prediction only"):
        load_base_model(str(vpred), config_dir=tiny_model.tiny_model_dir())
    assert load_base_model(str(vpred), config_dir=tiny_model.tiny_model_dir(), epsilon_only=False).family == "sd1"
    folder = tmp_path / "vpred_folder"  # a diffusers folder says it in its scheduler's config
    for part in tiny_model.tiny_model_dir().iterdir():
        if part.is_dir() and part.name != "scheduler":
            (folder / part.name).parent.mkdir(exist_ok=True)
            (folder / part.name).symlink_to(part)
    shutil.copy(tiny_model.tiny_model_dir() / "model_index.json", folder)
    config = json.loads((tiny_model.tiny_model_dir() / "scheduler" / "scheduler_config.json").read_text())
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "prediction_type": "v_prediction"}))
    with pytest.raises(ModelError, match=r"vpred_folder: an SD1 model trained for v-prediction \(its scheduler's prediction_type\)"):
        load_base_model(str(folder))


def test_the_old_clip_key_layout_is_refused_in_our_words(single_file, tmp_path):
    """SD1's CLIP saved without ``text_model.`` (A1111 renames it on load, diffusers does not)
    failed with diffusers' "Weights for this component appear to be missing in the checkpoint"."""
    old = tmp_path / "old_clip.safetensors"
    save_file({k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v
               for k, v in load_file(str(single_file)).items()}, str(old))
    with pytest.raises(ModelError, match=r"old_clip.safetensors: its text encoder is stored under an old key layout .*"
                                         r"renamed to cond_stage_model.transformer.text_model.\*"):
        load_base_model(str(old), config_dir=tiny_model.tiny_model_dir())


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_a_quantized_checkpoint_is_refused_and_an_fp8_one_loads(single_file, tmp_path, suffix):
    """int8 weights read as plain numbers made a model of noise that trained without a word
    (the tiny model's int8 copy loaded with weights 100× too large); fp8 is floating point."""
    weights = load_file(str(single_file))
    int8 = tmp_path / f"int8{suffix}"
    quantized = {k: (v * 100).round().clamp(-127, 127).to(torch.int8) if k.startswith("model.diffusion_model") and v.ndim >= 2 else v
                 for k, v in weights.items()}
    if suffix == ".ckpt":
        torch.save({"state_dict": quantized}, int8)
    else:
        save_file(quantized, str(int8))
    with pytest.raises(ModelError, match=r"of its weights are stored as I(NT)?8 .*a quantized checkpoint.*give the checkpoint it was quantized from"):
        load_base_model(str(int8), config_dir=tiny_model.tiny_model_dir())
    fp8 = tmp_path / "fp8.safetensors"
    save_file({k: v.to(torch.float8_e4m3fn) if k.startswith("model.diffusion_model") and v.ndim >= 2 else v for k, v in weights.items()}, str(fp8))
    model = load_base_model(str(fp8), config_dir=tiny_model.tiny_model_dir())
    want = weights["model.diffusion_model.input_blocks.0.0.weight"].to(torch.float8_e4m3fn).float()
    assert torch.equal(model.unet.conv_in.weight.detach(), want)


def stand_in_hub(tmp_path, monkeypatch, tokenizer):
    """A Hugging Face hub that serves ``tokenizer``'s files for CLIP's repository; records each call."""
    from engine.models import loading

    served = tmp_path / "hub"
    tokenizer.save_pretrained(served)
    calls = []

    def download(repo_id, filename):
        calls.append((repo_id, filename))
        return str(served / filename)

    monkeypatch.setattr(loading, "hub_download", download)
    monkeypatch.delenv("COPYLORA_CLIP_TOKENIZER", raising=False)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_missing_vocabulary_is_downloaded_from_the_hub(tmp_path, monkeypatch):
    from engine.models.loading import CLIP_REPO, CLIP_TOKENIZER_FILES, find_clip_tokenizer

    tiny_tok = tiny_model.tiny_tokenizer()
    calls = stand_in_hub(tmp_path, monkeypatch, tiny_tok)
    tokenizer = find_clip_tokenizer(tmp_path / "no-configs", vocab_size=len(tiny_tok))
    assert calls == [(CLIP_REPO, name) for name in CLIP_TOKENIZER_FILES]
    assert tokenizer("a cat").input_ids == tiny_tok("a cat").input_ids
    second = find_clip_tokenizer(tmp_path / "no-configs", "tokenizer_2", vocab_size=len(tiny_tok))
    assert second.pad_token == "!"  # SDXL's second tokenizer: the same vocabulary, padded with "!"


def test_a_single_file_loads_with_the_downloaded_vocabulary(single_file, tiny, tmp_path, monkeypatch):
    """The whole path a user takes: a single-file checkpoint, configs with no vocabulary files."""
    import shutil

    calls = stand_in_hub(tmp_path, monkeypatch, tiny_model.tiny_tokenizer())
    configs = tmp_path / "configs"
    shutil.copytree(tiny_model.tiny_model_dir(), configs, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        (configs / "tokenizer" / name).unlink(missing_ok=True)
    model = load_base_model(str(single_file), config_dir=configs)
    assert len(calls) == 4
    assert model.tokenizers[0]("a cat").input_ids == tiny.tokenizers[0]("a cat").input_ids


def test_offline_says_so_and_never_downloads(tmp_path, monkeypatch):
    from engine.models.loading import find_clip_tokenizer

    calls = stand_in_hub(tmp_path, monkeypatch, tiny_model.tiny_tokenizer())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as info:
        find_clip_tokenizer(tmp_path / "nothing")
    assert calls == []
    assert "no download: HF_HUB_OFFLINE is set" in str(info.value) and "COPYLORA_CLIP_TOKENIZER" in str(info.value)


def test_a_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    from engine.models import loading

    stand_in_hub(tmp_path, monkeypatch, tiny_model.tiny_tokenizer())

    def no_network(repo_id, filename):
        raise OSError("Connection refused\n(more lines of a long traceback)")

    monkeypatch.setattr(loading, "hub_download", no_network)
    with pytest.raises(ModelError) as info:
        loading.find_clip_tokenizer(tmp_path / "nothing")
    message = str(info.value)
    assert "a download from the Hugging Face hub (openai/clip-vit-large-patch14: OSError: Connection refused)" in message
    assert "more lines" not in message and "could not download" in message


def test_family_override_must_match(single_file):
    with pytest.raises(ModelError, match="sd1 checkpoint, not sdxl"):
        load_base_model(str(single_file), family="sdxl", config_dir=tiny_model.tiny_model_dir())
    with pytest.raises(ModelError, match="unknown model family"):
        load_base_model("tiny", family="sd3")


def test_plain_tensor_ckpt_loads(single_file, tmp_path):
    from safetensors.torch import load_file

    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(str(single_file)), "global_step": 1}, ckpt)
    model = load_base_model(str(ckpt), config_dir=tiny_model.tiny_model_dir())
    assert model.family == "sd1"


class _Payload:
    """Stands for any object a malicious pickle could carry."""


def test_ckpt_needing_arbitrary_unpickling_is_refused(tmp_path):
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "obj": _Payload()}, ckpt)
    with pytest.raises(ModelError, match="refused") as info:
        load_pickled_checkpoint(ckpt)
    assert "weights_only" in str(info.value) and "safetensors" in str(info.value)
    with pytest.raises(ModelError, match="refused"):
        load_base_model(str(ckpt))


@pytest.mark.parametrize(
    "spec, message",
    [("missing.safetensors", "not found"), ("notes.txt", "not a model"), ("garbage.safetensors", "cannot read"),
     ("other.safetensors", "not a Stable Diffusion checkpoint"), ("folder", "no model_index.json")],
)
def test_unusable_sources_give_one_clear_error(tmp_path, spec, message):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(ModelError, match=message) as info:
        load_base_model(str(tmp_path / spec))
    assert isinstance(info.value, CopyloraError)


# --------------------------------------------------------------------------- family detection

_U = "model.diffusion_model."


def _sd_keys(context: int, text: dict) -> dict:
    return {
        _U + "input_blocks.0.0.weight": (320, 4, 3, 3),
        _U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, context),
        "first_stage_model.decoder.conv_out.weight": (3, 128, 3, 3),
        **text,
    }


def test_detect_family_from_keys_and_shapes():
    sd1 = _sd_keys(768, {"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768)})
    sd2 = _sd_keys(1024, {"cond_stage_model.model.token_embedding.weight": (49408, 1024)})
    sdxl = _sd_keys(2048, {
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
        "conditioner.embedders.1.model.token_embedding.weight": (49408, 1280),
    })
    assert detect_family(sd1) == "sd1"
    assert detect_family(sd2) == "sd2"
    assert detect_family(sdxl) == "sdxl"
    assert detect_family({k: torch.empty(v, device="meta") for k, v in sd1.items()}) == "sd1"  # tensors work too


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"text_model.encoder.layers.0.mlp.fc1.weight": (3072, 768)}, "not a Stable Diffusion checkpoint"),
        ({}, "holds no tensors"),
        (_sd_keys(768, {})  | {_U + "input_blocks.0.0.weight": (320, 9, 3, 3)}, "9 input channels"),
        (_sd_keys(1280, {"conditioner.embedders.0.model.token_embedding.weight": (49408, 1280)}), "refiner"),
        # SD-Turbo (SD2.1 in SGM layout) has one OpenCLIP encoder too: it was called an SDXL refiner
        (_sd_keys(1024, {"conditioner.embedders.0.model.ln_final.weight": (1024,)}), "an SD2.1 model in Stability's SGM layout"),
        ({_U + "joint_blocks.0.x_block.attn.qkv.weight": (4608, 1536), "first_stage_model.decoder.conv_in.weight": (512, 16, 3, 3)},
         r"an SD3/SD3.5 model .* not SD3 or Flux"),  # "not a Stable Diffusion checkpoint: no CLIP text encoder weights"
        ({"double_blocks.0.img_attn.qkv.weight": (9216, 3072)}, "a Flux model"),
        ({_U + "out.2.weight": (4, 320, 3, 3)}, "no CLIP text encoder"),
        (_sd_keys(768, {}) | {_U + "input_blocks.0.0.weight": (11520,)}, r"damaged checkpoint: .*input_blocks.0.0.weight\) has shape \(11520,\)"),
    ],
)
def test_detect_family_rejects_non_sd(keys, message):
    with pytest.raises(ModelError, match=message):
        detect_family(keys)


def test_sd2_prediction_from_a1111_yaml(tmp_path, caplog):
    ckpt = tmp_path / "v2.safetensors"
    (tmp_path / "v2.yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n")
    assert _sd2_prediction(ckpt) == "sd2-v"
    (tmp_path / "v2.yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    assert _sd2_prediction(ckpt) == "sd2"
    assert _sd2_prediction(tmp_path / "none.safetensors") == "sd2-v"  # the common 768-v case, with a warning
    assert "assuming v-prediction" in caplog.text
    caplog.clear()
    assert _sd2_prediction(tmp_path / "comfy.safetensors", {"v_pred": (0,)}) == "sd2-v"  # ComfyUI marks a v model it saves
    assert "assuming" not in caplog.text


# --------------------------------------------------------------------------- full-size, no weights


def test_full_size_sd15_on_meta_device():
    unet, encoders = build_empty_sd15()
    assert unet.conv_in.weight.device.type == "meta"
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964  # SD1.5's U-Net
    assert sum(p.numel() for p in encoders[0].parameters()) == 123_060_480  # CLIP ViT-L/14 text
    assert unet.down_blocks[0].attentions[0].proj_in.weight.shape == (320, 320, 1, 1)


def test_shipped_configs_build_every_family():
    for family, context in [("sd2", 1024), ("sd2-v", 1024), ("sdxl", 2048)]:
        unet, encoders = build_empty(family)
        assert unet.config.cross_attention_dim == context
        assert len(encoders) == (2 if family == "sdxl" else 1)
    root = Path(__file__).parents[1] / "engine" / "models" / "configs"
    scheduler = json.loads((root / "sd2-v" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction"



def test_builtin_widths_are_the_tiny_models_own():
    """engine.formats.model_files states the built-in models' widths as data (so validation
    needs no model); they must stay what engine.models.tiny builds."""
    from engine.formats.model_files import BUILTIN_FAMILIES, BUILTIN_WIDEST

    assert BUILTIN_WIDEST["tiny"] == (max(tiny_model.UNET_CHANNELS), tiny_model.CLIP_HIDDEN)
    assert BUILTIN_WIDEST["tiny-sdxl"] == (max(tiny_model.SDXL_UNET_CHANNELS), max(tiny_model.SDXL_CLIP_HIDDEN))
    assert set(BUILTIN_FAMILIES) == set(tiny_model.BUILTIN_MODEL_DIRS)


@pytest.mark.parametrize("family, pad", [("sd1", "<|endoftext|>"), ("sd2", "!"), ("sd2-v", "!")])
def test_single_file_tokenizers_pad_as_the_family_was_trained(tmp_path, monkeypatch, family, pad):
    """SD2's prompts are padded with "!" (id 0), as its own tokenizer, kohya and A1111 pad them;
    a single-file SD2 padded with <|endoftext|>, so every prompt (the empty training one too)
    was conditioned on 75 other token embeddings. SDXL's second tokenizer pads with "!" too."""
    from engine.models.loading import CONFIG_ROOT, single_file_tokenizers

    tiny_tok = tiny_model.tiny_tokenizer()
    stand_in_hub(tmp_path, monkeypatch, tiny_tok)
    configs = tmp_path / "configs"
    (configs / "text_encoder").mkdir(parents=True)
    (configs / "text_encoder" / "config.json").write_text(json.dumps({"vocab_size": len(tiny_tok)}))
    tokenizer = single_file_tokenizers(family, None, configs)["tokenizer"]
    assert tokenizer.pad_token == pad
    ids = tokenizer("", padding="max_length", max_length=8).input_ids
    assert ids[2:] == [tokenizer.convert_tokens_to_ids(pad)] * 6
    assert (CONFIG_ROOT / family / "text_encoder" / "config.json").is_file()  # the shipped configs it reads by default
    # a tokenizer folder of its own config (SD1.5's, openai's: the docs allow any), named by $COPYLORA_CLIP_TOKENIZER
    folder = tmp_path / "sd15-tokenizer"
    tiny_tok.save_pretrained(folder)
    assert (folder / "tokenizer_config.json").is_file() and tiny_tok.pad_token == "<|endoftext|>"
    monkeypatch.setenv("COPYLORA_CLIP_TOKENIZER", str(folder))
    assert single_file_tokenizers(family, None, configs)["tokenizer"].pad_token == pad
