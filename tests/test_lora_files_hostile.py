"""LoRA files as anyone's tools or a damaged disk leave them, given to every command that reads
one (an audit of 2026-12-06: 51 damaged files × resize, merge, bake, sample). Seven kinds ended
as "internal error" (an alpha of several numbers, rank 0, float8 weights, a link to itself as
the input or the output) and four were taken as if they were a LoRA: integer, boolean or complex
weights (a complex LoRA merged as its real part, silently), and NaN or ±inf weights that sample
drew as black pictures and bake baked into a model that draws nothing."""

from __future__ import annotations

import os

import pytest

from copylora_tui.cli.main import EXIT_OK, EXIT_USAGE, main
from tests.helpers import one_line
from tests.test_cli import loras  # noqa: F401  (fixture)

torch = pytest.importorskip("torch")


def damaged(source, path, change, metadata=None):
    """``source``'s tensors with ``change(tensors)`` applied, written as-is (no normalising)."""
    from safetensors.torch import load_file, save_file

    tensors = {k: v.clone() for k, v in load_file(str(source)).items()}
    change(tensors)
    save_file(tensors, str(path), metadata=metadata or {"ss_base_model_version": "sd_v1"})
    return path


def first(tensors, suffix):
    return next(k for k in sorted(tensors) if k.endswith(suffix))


def every(tensors, suffix, value):
    for key in [k for k in tensors if k.endswith(suffix)]:
        tensors[key] = value(tensors[key])


CASES = {  # name: (the damage, what the refusal says)
    "alpha of four numbers": (lambda t: every(t, ".alpha", lambda _: torch.ones(2, 2)), "'s alpha has shape (2, 2); an alpha is one number"),
    "alpha NaN": (lambda t: every(t, ".alpha", lambda _: torch.tensor(float("nan"))), "'s alpha is nan; an alpha is a finite number"),
    "rank 0": (lambda t: (t.__setitem__(first(t, "lora_up.weight"), torch.zeros(32, 0)), t.__setitem__(first(t, "lora_down.weight"), torch.zeros(0, 32))),
               "has rank 0 (its lora_down and lora_up hold no weights)"),
    "int8 weights": (lambda t: every(t, "_down.weight", lambda v: v.to(torch.int8)), "'s lora_down holds int8 values; a LoRA's weights are floating point"),
    "bool weights": (lambda t: every(t, "_up.weight", lambda v: v > 0), "'s lora_up holds bool values"),
    "complex weights": (lambda t: every(t, "_down.weight", lambda v: v.to(torch.complex64)), "'s lora_down holds complex64 values"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_damaged_lora_is_refused_by_every_command_naming_the_module(case, loras, tmp_path, capsys):  # noqa: F811
    change, said = CASES[case]
    b, a = loras
    bad = damaged(b, tmp_path / "bad.safetensors", change)
    out = tmp_path / "out"
    commands = (["resize", str(bad), "--new_rank", "2", "--save_to", f"{out}.safetensors"],
                ["merge", "--models", str(bad), str(a), "--ratios", "1", "-1", "--save_to", f"{out}.safetensors"],
                ["bake", "--base", "tiny", "--lora", str(bad), "--save_to", str(out)])
    for argv in commands:
        assert main(argv) == EXIT_USAGE, argv
        err = one_line(capsys.readouterr().err)
        assert "bad.safetensors: module lora_" in err and said in err, (argv, err)
    assert not any(tmp_path.glob("out*"))


def test_nan_or_inf_weights_are_not_applied_baked_or_trained_on(loras, tmp_path, capsys):  # noqa: F811
    """The merge refused them already; sample drew black pictures from them (with numpy's
    "invalid value encountered in cast" as the only word) and bake wrote a model that draws nothing."""
    b, _a = loras
    nan = damaged(b, tmp_path / "nan.safetensors", lambda t: t[first(t, "lora_up.weight")].view(-1).__setitem__(0, float("nan")))
    inf = damaged(b, tmp_path / "inf.safetensors", lambda t: t[first(t, "lora_down.weight")].view(-1).__setitem__(0, float("inf")))
    for bad in (nan, inf):
        assert main(["bake", "--base", "tiny", "--lora", str(bad), "--save_to", str(tmp_path / "baked")]) == EXIT_USAGE
        assert "holds NaN or infinite values (a training that diverged?); it cannot be baked" in one_line(capsys.readouterr().err)
    assert main(["sample", str(nan), "--base", "tiny", "--steps", "1", "--size", "64x64", "--save_to", str(tmp_path / "g.png")]) == EXIT_USAGE
    assert f"{nan}: module lora_" in (err := one_line(capsys.readouterr().err)) and "it cannot be applied" in err
    assert not (tmp_path / "baked").exists() and not (tmp_path / "g.png").exists()

    from engine.errors import LoRAFileError
    from engine.lora.network import LoRANetwork
    from engine.train.start_weights import StartWeightsError, load_start_weights

    network = LoRANetwork.__new__(LoRANetwork)  # never reached: the file is refused first
    with pytest.raises(StartWeightsError, match="side A's network_weights .*it cannot be trained on from"):
        load_start_weights(network, nan, "a", print)
    with pytest.raises(LoRAFileError, match="cannot be applied"):
        LoRANetwork.from_file(inf, None, [], "sd1")


def test_a_float8_lora_reads_as_its_exact_float32_values(loras, tmp_path, capsys):  # noqa: F811
    """float8 files exist (a LoRA stored at a quarter of fp32); their merge ended as "isfinite
    not implemented for Float8_e4m3fn". Every float8 value is exact in float32, so the file
    merges as its values written in float32 would, bit for bit."""
    from safetensors.torch import load_file

    from engine.lora.files import load_lora_file

    b, a = loras
    for kind in ("float8_e4m3fn", "float8_e5m2"):
        fp8 = damaged(b, tmp_path / f"{kind}.safetensors", lambda t, kind=kind: every(t, ".weight", lambda v: v.to(getattr(torch, kind))))
        same = damaged(fp8, tmp_path / f"{kind}-as-fp32.safetensors", lambda t: every(t, ".weight", lambda v: v.float()))
        assert {load_file(str(fp8))[k].dtype for k in load_file(str(fp8)) if k.endswith(".weight")} == {getattr(torch, kind)}
        read = load_lora_file(fp8).modules
        assert all(w.down.dtype == w.up.dtype == torch.float32 for w in read.values())
        outs = []
        for source in (fp8, same):
            out = tmp_path / f"m-{source.stem}.safetensors"
            assert main(["merge", "--models", str(source), str(a), "--ratios", "1", "-1", "--save_to", str(out), "--save_precision", "float"]) == EXIT_OK
            outs.append(load_file(str(out)))
        capsys.readouterr()
        assert outs[0].keys() == outs[1].keys() and all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])


def test_peft_alphas_in_metadata_that_are_not_numbers_or_patterns_are_named(loras, tmp_path, capsys):  # noqa: F811
    import json

    from engine.errors import LoRAFileError
    from engine.lora.files import load_lora_file

    b, _a = loras

    def as_peft(tensors):  # the U-Net's modules under PEFT's names, alphas only in the metadata
        for key in list(tensors):
            value = tensors.pop(key)
            if key.startswith("lora_unet_") and not key.endswith(".alpha"):
                tensors[key.replace("lora_unet_", "unet.", 1).replace("lora_down", "lora_A").replace("lora_up", "lora_B")] = value

    cases = {json.dumps({"unet.lora_alpha": "banana"}): "lora_adapter_metadata gives alpha 'banana'; an alpha is a finite number",
             json.dumps({"unet.lora_alpha": "inf"}): "lora_adapter_metadata gives alpha 'inf'",
             json.dumps({"unet.alpha_pattern": {"(": 4}}): "alpha_pattern '(' is not a pattern"}
    for n, (adapter, said) in enumerate(cases.items()):
        path = damaged(b, tmp_path / f"peft{n}.safetensors", as_peft, {"lora_adapter_metadata": adapter})
        with pytest.raises(LoRAFileError) as caught:
            load_lora_file(path)
        assert str(caught.value).startswith(f"{path}: module unet.") and said in str(caught.value), caught.value
        assert main(["resize", str(path), "--new_rank", "2", "--save_to", str(tmp_path / "r.safetensors")]) == EXIT_USAGE
        assert said in one_line(capsys.readouterr().err)


def test_links_pipes_and_long_names_as_inputs_and_outputs_are_said_as_what_they_are(loras, tmp_path, capsys):  # noqa: F811
    """A link to itself as a LoRA or as ``--save_to`` was "internal error: Symlink loop"; a pipe was
    "a folder"; a 262-byte output name failed after the work, with the OS's words."""
    b, a = map(str, loras)
    loop, dangling, pipe = tmp_path / "loop.safetensors", tmp_path / "dangling.safetensors", tmp_path / "pipe.safetensors"
    os.symlink(loop.name, loop)
    os.symlink("/nowhere/x.safetensors", dangling)
    os.mkfifo(pipe)
    inputs = {loop: f"{loop} is a link that leads back to itself (a loop of links)",
              dangling: f"{dangling} is a link to /nowhere/x.safetensors, which does not exist",
              pipe: f"{pipe} is not a regular file (a pipe or a device?)"}
    for path, said in inputs.items():
        for argv, flag in ((["merge", "--models", str(path), a, "--save_to", str(tmp_path / "m.safetensors")], "--models"),
                           (["resize", str(path), "--new_rank", "2", "--save_to", str(tmp_path / "r.safetensors")], "LORA"),
                           (["bake", "--base", "tiny", "--lora", str(path), "--save_to", str(tmp_path / "baked")], "--lora"),
                           (["sample", str(path), "--base", "tiny"], "PROJECT|LORA")):
            assert main(argv) == EXIT_USAGE, argv
            assert one_line(capsys.readouterr().err) == f"copylora: {flag}: {said}", argv
    # a link to itself as the output: written in its place, as over any file (the rename replaces the link)
    assert main(["resize", b, "--new_rank", "2", "--save_to", str(loop)]) == EXIT_OK
    assert loop.is_file() and not loop.is_symlink()
    os.symlink("folder-loop", tmp_path / "folder-loop")
    assert main(["bake", "--base", "tiny", "--lora", b, "--save_to", str(tmp_path / "folder-loop")]) == EXIT_USAGE
    assert "folder-loop is a broken link (to folder-loop); remove it or choose a new folder name" in one_line(capsys.readouterr().err)
    long = tmp_path / ("x" * 250 + ".safetensors")
    for argv in (["resize", b, "--new_rank", "2", "--save_to", str(long)], ["merge", "--models", b, a, "--save_to", str(long)]):
        assert main(argv) == EXIT_USAGE, argv
        assert "its name is too long: 262 bytes; at most 241 fit" in one_line(capsys.readouterr().err)
    capsys.readouterr()
    assert not any(p.name.startswith(("x", ".x")) for p in tmp_path.iterdir())
