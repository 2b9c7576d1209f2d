"""``[train] max_token_length`` (kohya's): captions of 150 or 225 tokens read in chunks of 75,
joined as sd-scripts joins them; a caption longer than what is read is said; the key's import,
validation, fingerprint (75 keeps old checkpoints valid) and metadata."""

from __future__ import annotations

from dataclasses import replace

import pytest

from engine.errors import ValidationError
from engine.project.folder import load_project
from engine.project.plan import make_plan
from engine.project.provenance import training_fingerprint
from tests.helpers import copy_example

torch = pytest.importorskip("torch")

# 99 tokens in the tiny models' small vocabulary ("r", "e", "d</w>", ",</w>"): longer than 75, shorter than 150
LONG = ", ".join(["red"] * 25)


@pytest.fixture(scope="module")
def tiny_sdxl():
    from engine.models.loading import load_base_model

    torch.set_num_threads(1)
    return load_base_model("tiny-sdxl")


def test_chunks_of_a_tokenizer_that_pads_with_end_of_text(tiny):
    from engine.train.conditioning import prompt_tokens, tokenize

    tokenizer = tiny.tokenizers[0]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    words = tokenizer(LONG, truncation=False, verbose=False).input_ids[1:-1]
    assert prompt_tokens(tokenizer, LONG) == len(words) == 99
    ids = tokenize(tokenizer, LONG, 225)
    assert ids.shape == (3, 77)
    assert ids[0].tolist() == [bos, *words[:75], eos]
    assert ids[1].tolist() == [bos, *words[75:], *[eos] * (75 - 24), eos]
    assert ids[2].tolist() == [bos, *[eos] * 76]
    assert tokenize(tokenizer, LONG).tolist() == [[bos, *words[:75], eos]]  # 75: as before the key
    assert tokenize(tokenizer, LONG, 150).shape == (2, 77)


def test_chunks_of_a_tokenizer_that_pads_with_an_exclamation_mark(tiny_sdxl):
    """SD2's and SDXL's second tokenizer: each chunk's text ends in <EOS> (a full chunk's last
    token is made one), a chunk past the text is <BOS> <EOS> ! ! …, as sd-scripts makes them."""
    from engine.train.conditioning import tokenize

    tokenizer = tiny_sdxl.tokenizers[1]
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    assert pad != eos
    words = tokenizer(LONG, truncation=False, verbose=False).input_ids[1:-1]
    ids = tokenize(tokenizer, LONG, 225)
    assert ids[0].tolist() == [bos, *words[:75], eos]
    assert ids[1].tolist() == [bos, *words[75:], eos, *[pad] * (76 - 25)]
    assert ids[2].tolist() == [bos, eos, *[pad] * 75]


def test_a_long_caption_is_encoded_chunk_by_chunk_and_joined(tiny):
    """SD1 at 225: (1, 227, dim): <BOS>, 75 states of each chunk encoded on its own, the last
    chunk's last state; the first chunk's states are the 75-token encoding's (CLIP is causal)."""
    from engine.train.conditioning import encode_text, tokenize

    encoder = tiny.text_encoders[0]
    long = encode_text(tiny, LONG, max_tokens=225).hidden
    assert long.shape == (1, 227, encoder.config.hidden_size)
    with torch.no_grad():
        chunks = encoder(tokenize(tiny.tokenizers[0], LONG, 225))[0]
    expected = torch.cat([chunks[0, :1], chunks[0, 1:76], chunks[1, 1:76], chunks[2, 1:76], chunks[2, 76:]])
    torch.testing.assert_close(long[0], expected, rtol=0, atol=0)
    torch.testing.assert_close(long[0, :76], encode_text(tiny, LONG).hidden[0, :76])
    skipped = encode_text(tiny, LONG, clip_skip=2, max_tokens=150).hidden  # clip_skip on each chunk
    assert skipped.shape == (1, 152, encoder.config.hidden_size)
    torch.testing.assert_close(skipped[0, :76], encode_text(tiny, LONG, clip_skip=2).hidden[0, :76])


def test_sdxl_joins_both_encoders_and_pools_the_first_chunk(tiny_sdxl):
    from engine.train.conditioning import encode_text

    long, short = encode_text(tiny_sdxl, LONG, max_tokens=225), encode_text(tiny_sdxl, LONG)
    assert long.hidden.shape[:2] == (1, 227) and long.hidden.shape[2] == short.hidden.shape[2]
    assert long.pooled.shape == short.pooled.shape
    torch.testing.assert_close(long.pooled, short.pooled)  # the same first chunk, as sd-scripts pools it
    torch.testing.assert_close(long.hidden[0, :76], short.hidden[0, :76])


def test_a_caption_longer_than_is_read_is_said_in_the_job_log(tiny):
    from engine.train.training_data import long_prompt_warnings

    tokenizer = tiny.tokenizers[0]
    (said,) = long_prompt_warnings(tokenizer, ["short", LONG], 75)
    assert said.startswith("1 prompt(s) are longer than the 75 tokens the text encoder reads at [train] max_token_length = 75")
    assert "max_token_length = 150 or 225 reads more" in said and "the longest, 99 tokens, 'red, red" in said
    assert long_prompt_warnings(tokenizer, ["short", LONG], 150) == []
    assert "225" in long_prompt_warnings(tokenizer, [", ".join(["red"] * 60)], 225)[0]


@pytest.mark.parametrize(("value", "kept"), [(75, 75), (225, 225), ("150", 150), (150.0, 150)])
def test_max_token_length_takes_kohyas_values(tmp_path, value, kept):
    root = copy_example(tmp_path)
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace("[train]\n", f"[train]\nmax_token_length = {value!r}\n".replace("'", '"'), 1))
    assert load_project(root).train.max_token_length == kept


@pytest.mark.parametrize("value", [76, 300, 0, -75, "two hundred", "true", 1e9])
def test_other_token_lengths_are_refused_with_the_key(tmp_path, value):
    root = copy_example(tmp_path)
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace("[train]\n", f"[train]\nmax_token_length = {value!r}\n".replace("'", '"'), 1))
    with pytest.raises(ValidationError) as info:
        load_project(root)
    (problem,) = info.value.problems
    assert problem.where == "train.max_token_length" and "must be 75, 150 or 225" in problem.message


def test_75_keeps_old_checkpoints_valid_and_225_makes_them_stale(tmp_path, monkeypatch):
    import engine.project.provenance as provenance

    project = load_project(copy_example(tmp_path))

    def fingerprint(**keys) -> str:
        return training_fingerprint(make_plan(replace(project, train=replace(project.train, **keys))), "a")

    default = fingerprint()
    assert fingerprint(max_token_length=225) != default != fingerprint(max_token_length=150)
    real_asdict = provenance.asdict  # the parameters as they were before the key existed
    monkeypatch.setattr(provenance, "asdict", lambda params: {k: v for k, v in real_asdict(params).items() if k != "max_token_length"})
    assert fingerprint() == default


def test_kohya_configs_max_token_length_is_imported(tmp_path):
    from engine.project.kohya_import import import_kohya

    for value, kept in (("225", 225), ("75", 75), ("0", 75), ("300", None)):
        config = tmp_path / f"config-{value}.toml"
        config.write_text(f'pretrained_model_name_or_path = "x"\nmax_token_length = {value}\n')
        imported = import_kohya(config)
        used = {e.key: e.value for e in imported.used}
        ignored = {e.key: e.note for e in imported.ignored}
        if kept is None:
            assert "max_token_length" not in used and "75, 150 or 225" in ignored["max_token_length"]
        else:
            assert imported.train["max_token_length"] == kept and used["max_token_length"] == kept


def test_a_225_token_captioned_side_trains_with_its_metadata(tmp_path, tiny):
    """Per-picture captions of ~100 tokens at 225 train (the U-Net attends over 227 states), say
    nothing of cut captions, and the LoRA says ss_max_token_length as kohya's does; at 75 the
    job log says the captions are cut."""
    from safetensors import safe_open

    from engine.train.trainer import train

    root = copy_example(tmp_path)
    (root / "a" / "colour.txt").write_text(LONG)
    (root / "b" / "monochrome.txt").write_text(LONG + ", gray")
    toml = root / "copylora.toml"
    text = toml.read_text() + '\n[reg]\nfolder = ""\ninstance_prompt = "[filewords]"\n'
    logs, attended = {}, {}

    def record(module, args, kwargs):  # the length of the conditioning the U-Net attends over
        states = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        attended.setdefault(tokens, set()).add(states.shape[1])

    hook = tiny.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        for tokens in (75, 225):
            toml.write_text(text.replace("[train]\n", f"[train]\nmax_token_length = {tokens}\n", 1))
            logs[tokens] = logged = []
            result = train(make_plan(load_project(root), max_steps=2), "a", model=tiny, log=logged.append)
            assert result.status == "done" and result.lora_path is not None
            with safe_open(str(result.lora_path), "pt") as f:
                assert f.metadata()["ss_max_token_length"] == ("225" if tokens == 225 else "None")
    finally:
        hook.remove()
    assert attended == {75: {77}, 225: {227}}
    assert [line for line in logs[75] if "longer than the 75 tokens" in line]
    assert not [line for line in logs[225] if "longer than" in line]
