"""bench/kohya_side_by_side.py: sd-scripts' train_network.py beside ours (issue 26). The real
sd-scripts is not a dependency; here a stand-in train_network.py checks what the phase builds
(the dataset, the tokenizer folder, the stand-ins, the command, the environment) and reads back."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from bench.kohya_side_by_side import STAND_INS, kohya_dataset, kohya_tokenizers, parse_rate, run_kohya, stand_ins  # noqa: E402


def test_parse_rate_reads_tqdm_bars_as_sd_scripts_prints_them():
    out = ("steps:   0%|          | 0/60 [00:00<?, ?it/s]\rsteps:  50%|█████     | 30/60 [00:09<00:09, 3.21it/s, avr_loss=0.12]"
           "\rsteps: 100%|██████████| 60/60 [00:12<00:00, 4.85it/s, avr_loss=0.1]\n")
    assert parse_rate(out) == {"it_per_s_last": 4.85, "it_per_s_average": 5.0, "steps_seen": 60}
    slow = "steps: 100%|██████████| 4/4 [01:04<00:00, 16.00s/it, avr_loss=0.2]"
    assert parse_rate(slow) == {"it_per_s_last": 0.06, "it_per_s_average": 0.06, "steps_seen": 4}
    assert parse_rate("Traceback (most recent call last):") == {"it_per_s_last": None, "it_per_s_average": None, "steps_seen": None}


def test_the_dataset_holds_the_picture_at_our_training_size(tmp_path):
    from PIL import Image

    from engine.project.plan import bucket_size

    Image.new("RGB", (600, 900), (200, 30, 30)).save(tmp_path / "a.png")
    folder = kohya_dataset(tmp_path / "data", tmp_path / "a.png", (600, 900))
    (picture,) = (folder / "1_").iterdir()  # no class word, no caption file: the empty caption
    with Image.open(picture) as image:
        assert image.size == bucket_size(600, 900, [600, 900]) == (576, 896)


def test_the_tokenizer_folder_tokenizes_as_the_base_model_does(tmp_path):
    """sd-scripts reads vocab.json/merges.txt; the base folder may hold only tokenizer.json."""
    from transformers import CLIPTokenizer

    from engine.models.tiny import tiny_model_dir

    base = tiny_model_dir()
    folder = kohya_tokenizers(tmp_path / "tok", base)
    made = folder / "openai_clip-vit-large-patch14"
    assert (made / "vocab.json").exists() and (made / "merges.txt").read_text().startswith("#version")
    # Read back as sd-scripts' transformers 4.x reads them (checked against 4.54.1's CLIPTokenizer
    # by hand: the same ids); this transformers takes the vocabulary and merges as data.
    vocab = json.loads((made / "vocab.json").read_text(encoding="utf-8"))
    merges = [tuple(line.split()) for line in (made / "merges.txt").read_text(encoding="utf-8").splitlines()[1:] if line]
    slow = CLIPTokenizer(vocab=vocab, merges=merges)
    fast = CLIPTokenizer.from_pretrained(base / "tokenizer")
    prompt = "a red square on a blue background, monochrome"
    assert slow(prompt).input_ids == fast(prompt).input_ids
    assert kohya_tokenizers(tmp_path / "none", tmp_path) is None  # a single-file checkpoint: the Hub's, as for sd-scripts


def test_the_stand_ins_do_what_they_say(tmp_path):
    for path, source in STAND_INS.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(source)
    import numpy as np

    sys.path.insert(0, str(tmp_path))
    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if name == "cv2" or name.startswith("torchvision")}
    try:
        import cv2
        from torchvision import transforms

        picture = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
        got = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])(picture)
        want = torch.from_numpy(picture).permute(2, 0, 1).float() / 255 * 2 - 1
        assert got.shape == (3, 2, 3) and torch.allclose(got, want)
        with pytest.raises(RuntimeError, match="cv2.resize was called"):
            cv2.resize(picture, (1, 1))
        with pytest.raises(RuntimeError, match="gaussian_blur was called"):
            transforms.functional.gaussian_blur(got, 3)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n == "cv2" or n.startswith("torchvision")]:
            del sys.modules[name]
        sys.modules.update(saved)
    folder, used = stand_ins(tmp_path / "used", sys.executable)
    assert set(used) <= {"cv2", "torchvision"} and all((folder / f"{m}.py").exists() or (folder / m).is_dir() for m in used)


FAKE = '''import os, sys, json
args = sys.argv[1:]
value = lambda key: args[args.index(key) + 1]
import cv2, torchvision.transforms  # the stand-ins, where the real ones are missing
os.makedirs(value("--output_dir"), exist_ok=True)
json.dump({"args": args, "path": os.environ["PYTHONPATH"], "offline": os.environ.get("HF_HUB_OFFLINE")},
          open(os.path.join(value("--output_dir"), "..", "seen.json"), "w"))
if value("--network_dim") == "0":
    sys.exit("no rank")
steps = int(value("--max_train_steps"))
for i in range(steps + 1):
    sys.stderr.write(f"\\rsteps: {100 * i // steps}%|##| {i}/{steps} [00:{i:02d}<00:00, 2.50it/s, avr_loss=0.1]")
os.makedirs(value("--output_dir"), exist_ok=True)
open(os.path.join(value("--output_dir"), value("--output_name") + ".safetensors"), "wb").write(b"x")
'''


@pytest.fixture
def fake_sd_scripts(tmp_path):
    folder = tmp_path / "sd-scripts"
    folder.mkdir()
    (folder / "train_network.py").write_text(FAKE)
    return folder


def test_run_kohya_builds_the_run_and_reads_its_rate(tmp_path, fake_sd_scripts):
    from PIL import Image

    from engine.models.tiny import tiny_model_dir

    Image.new("RGB", (64, 96), (30, 30, 200)).save(tmp_path / "a.png")
    facts = run_kohya(fake_sd_scripts, str(tiny_model_dir()), tmp_path / "a.png", tmp_path / "work", size=(64, 96), steps=8,
                      precision="fp16", optimizer="AdamW8bit", timeout=120, log=lambda line: None)
    assert facts["exit_code"] == 0 and facts["lora_written"] and facts["steps_seen"] == 8
    assert facts["it_per_s_last"] == 2.5 and facts["it_per_s_average"] == 1.0
    seen = json.loads((tmp_path / "work" / "seen.json").read_text())
    args = seen["args"]
    for key, value in (("--network_dim", "8"), ("--network_alpha", "1.0"), ("--resolution", "64,96"), ("--max_train_steps", "8"),
                       ("--train_batch_size", "1"), ("--lr_scheduler", "constant"), ("--network_module", "networks.lora")):
        assert args[args.index(key) + 1] == value, key
    assert {"--cache_latents", "--sdpa", "--network_train_unet_only"} <= set(args)
    assert args[args.index("--optimizer_type") + 1] == ("AdamW8bit" if torch.cuda.is_available() else "AdamW")
    assert seen["offline"] == "1" and str(fake_sd_scripts) in seen["path"]
    assert (Path(args[args.index("--tokenizer_cache_dir") + 1]) / "openai_clip-vit-large-patch14" / "vocab.json").exists()


def test_a_failing_sd_scripts_run_says_why(tmp_path, fake_sd_scripts, monkeypatch):
    from PIL import Image

    import bench.kohya_side_by_side as side_by_side
    from engine.models.tiny import tiny_model_dir

    monkeypatch.setitem(side_by_side.SETTINGS, "rank", 0)
    Image.new("RGB", (64, 96), (30, 30, 200)).save(tmp_path / "a.png")
    with pytest.raises(RuntimeError, match=r"train_network.py failed \(exit 1\): no rank"):
        run_kohya(fake_sd_scripts, str(tiny_model_dir()), tmp_path / "a.png", tmp_path / "work", size=(64, 96), steps=4,
                  precision="fp16", optimizer="AdamW8bit", timeout=120, log=lambda line: None)
    with pytest.raises(FileNotFoundError, match="give --kohya a checkout of kohya-ss/sd-scripts"):
        run_kohya(tmp_path, str(tiny_model_dir()), tmp_path / "a.png", tmp_path / "work", size=(64, 96), steps=4,
                  precision="fp16", optimizer="AdamW8bit", timeout=120, log=lambda line: None)
