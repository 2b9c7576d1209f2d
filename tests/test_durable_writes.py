"""Every file copylora writes goes through one atomic write: fsynced (file and folder), renamed
into place, with the mode other tools give a file (0666 minus the umask), so an A1111/ComfyUI
server running as another user can read the LoRA."""

from __future__ import annotations

import os
import stat

import pytest

from copylora_tui.cli.main import main
from engine.files import atomic_write, write_text_atomic

torch = pytest.importorskip("torch")


@pytest.fixture
def umask():
    """Set a umask for the test, put the old one back after."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.fixture
def fsyncs(monkeypatch):
    """Every path os.fsync is called on (read from /proc/self/fd: the real files)."""
    seen: list[str] = []
    real = os.fsync

    def fsync(fd):
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_merged_lora_has_the_umask_mode_and_is_fsynced(tmp_path, umask, fsyncs):
    from engine.lora.files import save_lora_file

    modules = {"lora_unet_x": (torch.ones(2, 4), torch.ones(4, 2), 2.0)}
    b = save_lora_file(tmp_path / "B.safetensors", modules, {"ss_base_model_version": "sd_v1"}, "float")
    a = save_lora_file(tmp_path / "A.safetensors", modules, {"ss_base_model_version": "sd_v1"}, "float")
    for mask, mode in ((0o022, 0o644), (0o027, 0o640), (0o002, 0o664)):
        umask(mask)
        fsyncs.clear()
        out = tmp_path / f"m{mask:o}.safetensors"
        assert main(["merge", "--save_to", str(out), "--models", str(b), str(a), "--ratios", "1", "-1", "--new_rank", "2"]) == 0
        assert stat.S_IMODE(out.stat().st_mode) == mode
        stats = out.with_name(out.stem + ".stats.json")
        assert stat.S_IMODE(stats.stat().st_mode) == mode
        # the data of both files, and the folder that holds their new names
        assert any(p.startswith(str(tmp_path / f".{out.name}.")) for p in fsyncs), fsyncs
        assert any(p.startswith(str(tmp_path / f".{stats.name}.")) for p in fsyncs), fsyncs
        assert fsyncs.count(str(tmp_path)) >= 2


def test_project_file_checkpoint_and_text_use_the_same_write(tmp_path, umask, fsyncs):
    from engine.project.folder import load_project, save_project
    from engine.train.checkpoint import save_state
    from tests.helpers import copy_example

    umask(0o022)
    root = copy_example(tmp_path)
    save_project(load_project(root))
    assert stat.S_IMODE((root / "copylora.toml").stat().st_mode) == 0o644
    state = save_state(tmp_path / "run", {"step": 1, "lora": {}, "optimizer": {}, "scheduler": {}, "rng": {}, "fingerprint": "x"})
    assert stat.S_IMODE(state.stat().st_mode) == 0o644 and state.with_suffix(".json").is_file()
    assert str(root) in fsyncs and str(tmp_path / "run") in fsyncs


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_text_atomic(tmp_path / "f.txt", "old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")  # as torch.save reports it

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_the_name_limit_is_the_destinations_filesystems(tmp_path, monkeypatch):
    """A name's limit is asked of the folder the file goes into (its nearest existing one), not of
    `/`: eCryptfs allows 143 bytes where ext4 allows 255, and a 200-byte name there failed only
    when the result was written, after the work. Stand-in: a pathconf that says 143 under small/."""
    from engine.files import long_name_problem

    small = tmp_path / "small"
    small.mkdir()
    real = os.pathconf

    def pathconf(path, name):
        return 143 if name == "PC_NAME_MAX" and str(path).startswith(str(small)) else real(path, name)

    monkeypatch.setattr(os, "pathconf", pathconf)
    name = "x" * 200 + ".safetensors"
    assert long_name_problem(tmp_path / name) is None
    for where in (small / name, small / "not-made-yet" / name):  # the nearest existing folder answers
        assert long_name_problem(where) == f"{where}: its name is too long: 212 bytes; at most 143 fit (the filesystem allows names of 143)"
    assert "a folder name in it is too long: 300 bytes; at most 143 fit" in long_name_problem(small / ("d" * 300) / "x.png")
