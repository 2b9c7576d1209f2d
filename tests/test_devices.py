"""One answer to "which device?" (engine/devices.py) for training, sampling, merging and
extracting: "auto" follows a loaded model, else CUDA when torch sees one; an explicit cuda
without a GPU is one line in the caller's own error class."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from engine.devices import resolve_device  # noqa: E402
from engine.errors import CopyloraError  # noqa: E402
from engine.merge.svd import MergeError  # noqa: E402


@pytest.fixture(scope="module")
def lora_file(tiny, tmp_path_factory):
    from engine.lora.network import LoRANetwork

    return LoRANetwork(tiny.unet, tiny.text_encoders, rank=4, alpha=4.0).save(tmp_path_factory.mktemp("lora") / "L.safetensors")


needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answers of a machine without CUDA")


@needs_no_gpu
def test_auto_is_the_cpu_here_and_follows_a_loaded_model(tiny, monkeypatch):
    assert resolve_device(None) == resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"  # a GPU box without a model: cuda
    assert resolve_device("auto", tiny) == "cpu"  # a model loaded on the CPU keeps its inputs there


@needs_no_gpu
def test_cuda_without_a_gpu_is_the_callers_error_in_one_line():
    with pytest.raises(CopyloraError, match=r"^device cuda asked for, but torch sees no CUDA GPU \(use the cpu\)$"):
        resolve_device("cuda")
    with pytest.raises(MergeError, match="device cuda:1 asked for"):
        resolve_device("cuda:1", error=MergeError)


@needs_no_gpu
def test_the_sample_command_on_cuda_without_a_gpu_says_so(tmp_path, lora_file, capsys):
    from copylora_tui.cli.main import EXIT_USAGE, main

    # the flag is what to change (exit 2), as for merge's and extract's --device
    assert main(["sample", str(lora_file), "--base", "tiny", "--device", "cuda", "--steps", "1", "--save_to", str(tmp_path / "g.png")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "device cuda asked for, but torch sees no CUDA GPU" in err and "Traceback" not in err
