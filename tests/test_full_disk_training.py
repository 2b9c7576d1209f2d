"""A disk that fills during a training (one disk for projects, cache and rescue folder, as a
rented box has): what the training holds in memory is waited on, not thrown away, and the
writes that can be done again later (a preview, a snapshot) are said and passed over."""

from __future__ import annotations

import errno
from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from engine.files import atomic_write, disk_full_error  # noqa: E402
from engine.project.folder import load_project  # noqa: E402
from engine.project.plan import make_plan  # noqa: E402
from engine.train import room  # noqa: E402
from engine.train.controls import TrainControls  # noqa: E402
from engine.train.side_run import SideRun  # noqa: E402
from engine.train.trainer import TrainingError, train  # noqa: E402
from tests.helpers import copy_example, mount_tmpfs  # noqa: E402


def full_disk(path=None) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def failing(monkeypatch, name: str, times: int, error=full_disk):
    """SideRun.<name> fails ``times`` times with ``error()``, then writes as it does."""
    real = getattr(SideRun, name)
    calls = {"n": 0}

    def method(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= times:
            raise error()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SideRun, name, method)
    return calls


@pytest.fixture
def quick_room(monkeypatch):
    """Waits of 1 s a try, 30 s in all, 9 s for a stop's checkpoint, and no real sleeping:
    the seconds waited are counted in ``slept``."""
    slept: list[float] = []
    monkeypatch.setattr(room, "RETRY_S", 1.0)
    monkeypatch.setattr(room, "WAIT_S", 30.0)
    monkeypatch.setattr(room, "STOP_WAIT_S", 9.0)
    monkeypatch.setattr("engine.train.trainer.STOP_WAIT_S", 9.0)
    monkeypatch.setattr(room, "_waited", [0.0])
    monkeypatch.setattr(room.time, "sleep", slept.append)
    return slept


def plan_of(tmp_path, steps: int, **train):
    project = load_project(copy_example(tmp_path))
    project.train = replace(project.train, **train)
    return make_plan(project, max_steps=steps)


def test_a_full_disk_at_the_end_waits_for_room_and_writes_the_lora(tmp_path, tiny, monkeypatch, quick_room):
    """The disk full when the finished LoRA is written (and the rescue folder, on the same disk,
    full too): the LoRA was lost with the process. It is written once there is room, said once."""
    plan = plan_of(tmp_path, 3)
    calls = failing(monkeypatch, "write_lora", 3)
    logs: list[str] = []
    result = train(plan, "a", model=tiny, log=logs.append)
    assert result.status == "done" and result.lora_path == plan.side("a").lora_path and result.lora_path.is_file()
    assert calls["n"] == 4
    warned = [line for line in logs if "no space left on the disk" in line]
    assert len(warned) == 1 and str(plan.side("a").lora_path.parent) in warned[0] and "tries again every" in warned[0], logs
    assert any(line.startswith("the LoRA example-monochrome_A.safetensors written after waiting") for line in logs), logs


def test_a_disk_still_full_after_the_wait_rescues_as_before(tmp_path, tiny, monkeypatch, quick_room):
    """Past the wait the training ends, its checkpoint kept and the error saying where."""
    plan = plan_of(tmp_path, 3)
    failing(monkeypatch, "write_lora", 10_000)
    with pytest.raises(TrainingError, match=r"training finished \(3 steps\) but could not write .*the trained state is in"):
        train(plan, "a", model=tiny, log=lambda line: None)


def test_the_waits_of_a_twin_share_one_budget_and_a_stop_ends_them(tmp_path, tiny, monkeypatch, quick_room):
    """Each write waited its own 30 minutes: a twin whose four final writes all met a full disk
    held the GPU two hours, and a cancel did nothing. Their waits share one budget now, and a
    stop asked meanwhile ends the wait (the weights then go to the rescue folder)."""
    from engine.train.twin import train_twin

    plan = plan_of(tmp_path, 3)
    failing(monkeypatch, "write_lora", 10_000)
    failing(monkeypatch, "write_state", 10_000)
    logs: list[str] = []
    with pytest.raises(TrainingError):
        train_twin(plan, model=tiny, log=logs.append)
    assert sum(quick_room) == 30.0, sum(quick_room)
    assert sum("no space left on the disk" in line for line in logs) == 1  # the later writes found the budget spent

    monkeypatch.setattr(room, "_waited", [0.0])
    quick_room.clear()
    asked = {"stop": False}
    monkeypatch.setattr(room.time, "sleep", lambda s: (quick_room.append(s), asked.update(stop=len(quick_room) >= 3)))
    done: list[int] = []
    logs.clear()
    with pytest.raises(TrainingError):
        train(plan_of(tmp_path / "again", 3), "a", model=tiny, log=logs.append,
              controls=TrainControls(on_progress=lambda p: done.append(p.step), should_stop=lambda: asked["stop"] and len(done) >= 3))
    assert sum(quick_room) == 3.0 and any("stopped waiting for room for the final checkpoint" in line for line in logs), logs


def test_a_stops_checkpoint_waits_within_the_workers_grace_then_rescues(tmp_path, tiny, monkeypatch, quick_room):
    """The worker kills a stopping job 120 s after its SIGTERM, and nothing was rescued: the
    stop's checkpoint waits at most STOP_WAIT_S, then goes to the rescue folder."""
    from engine.train.rescue import rescue_folder

    monkeypatch.setenv("COPYLORA_CACHE", str(tmp_path / "cache"))
    plan = plan_of(tmp_path, 10, save_every_n_steps=0)
    real = SideRun.write_state

    def write_state(self, step, folder=None):
        if folder is None:  # its own run folder: full
            raise full_disk()
        return real(self, step, folder)

    monkeypatch.setattr(SideRun, "write_state", write_state)
    done: list[int] = []
    with pytest.raises(TrainingError) as info:
        train(plan, "a", model=tiny, log=lambda line: None,
              controls=TrainControls(on_progress=lambda p: done.append(p.step), should_stop=lambda: len(done) >= 4))
    assert sum(quick_room) == 9.0
    assert "stopped at step 4, but its checkpoint could not be written" in str(info.value)
    assert f"its checkpoint to {rescue_folder(plan.project.root)}" in str(info.value), str(info.value)


def test_another_failure_is_not_waited_on(tmp_path, tiny, monkeypatch, quick_room):
    plan = plan_of(tmp_path, 3)
    calls = failing(monkeypatch, "write_lora", 10_000, lambda: PermissionError(errno.EACCES, "Permission denied"))
    logs: list[str] = []
    with pytest.raises(TrainingError):
        train(plan, "a", model=tiny, log=logs.append)
    assert calls["n"] == 2 and not any("no space left" in line for line in logs)  # the LoRA, then its rescue copy


def test_a_preview_or_a_snapshot_that_cannot_be_written_is_said_and_training_goes_on(tmp_path, tiny, monkeypatch):
    """A preview (sample_every_n_steps) or a save-now snapshot on a full disk ended the training,
    the steps since its last checkpoint lost, where a checkpoint's failure let it go on."""
    plan = plan_of(tmp_path, 4, sample_every_n_steps=2, save_every_n_steps=0)
    failing(monkeypatch, "write_preview", 1)
    failing(monkeypatch, "write_snapshot", 1)
    asked = iter([True, False, False, False, False])
    logs: list[str] = []
    result = train(plan, "a", model=tiny, log=logs.append, controls=TrainControls(save_requested=lambda: next(asked, False)))
    assert result.status == "done" and result.step == 4
    assert any(line.startswith("warning: could not write the snapshot of step 1 (") and "training goes on" in line for line in logs), logs
    assert any(line.startswith("warning: could not write the preview of step 2 (") for line in logs), logs
    assert any(line.startswith("preview ") and "at step 4" in line for line in logs), logs  # the next one is written


def test_a_pause_on_a_full_disk_waits_to_write_the_checkpoint_it_stops_on(tmp_path, tiny, monkeypatch, quick_room):
    """pause/cancel on a full disk failed the job ("its checkpoint could not be written"), the steps
    since the last checkpoint lost, and `resume` refused a failed job. It waits for room now."""
    from engine.train.checkpoint import list_states, state_step

    plan = plan_of(tmp_path, 10, save_every_n_steps=0)
    done: list[int] = []
    failing(monkeypatch, "write_state", 2)
    logs: list[str] = []
    result = train(plan, "a", model=tiny, log=logs.append,
                   controls=TrainControls(on_progress=lambda p: done.append(p.step), should_stop=lambda: len(done) >= 6))
    assert result.status == "stopped" and result.step == 6
    assert [state_step(p) for p in list_states(plan.side("a").run_dir)] == [6]
    assert any("for the checkpoint to stop on" in line for line in logs), logs


def test_a_stop_whose_checkpoint_cannot_be_written_says_what_retry_resumes_from(tmp_path, tiny, monkeypatch, quick_room):
    plan = plan_of(tmp_path, 10, save_every_n_steps=3)
    done: list[int] = []
    real = SideRun.write_state

    def write_state(self, step, folder=None):
        if step == 5:
            raise PermissionError(errno.EROFS, "Read-only file system")
        return real(self, step, folder)

    monkeypatch.setattr(SideRun, "write_state", write_state)
    with pytest.raises(TrainingError, match=r"stopped at step 5, but .*`copylora retry` resumes from the checkpoint of step 3"):
        train(plan, "a", model=tiny, log=lambda line: None,
              controls=TrainControls(on_progress=lambda p: done.append(p.step), should_stop=lambda: len(done) >= 5))


def test_a_writer_error_that_names_no_file_is_said_with_the_file_and_the_disk(tmp_path):
    """"[Errno 28] No space left on device" and nothing else (a PNG, an import, a bake): which
    file, which disk, how to see it."""
    target = tmp_path / "out" / "grid.png"

    def write(_tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as info:
        atomic_write(target, write)
    said = str(info.value)
    assert said.startswith(f"cannot write {target}: no space left on its disk (") and f"df -h {target.parent})" in said, said
    assert info.value.errno == errno.ENOSPC and disk_full_error(info.value) and not list(target.parent.iterdir())

    def refused(_tmp):
        raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(PermissionError, match=rf"cannot write {target}: Permission denied"):
        atomic_write(target, refused)
    assert not disk_full_error(PermissionError(errno.EACCES, "Permission denied"))
    assert disk_full_error(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"))


@pytest.fixture
def disk(tmp_path):
    """A real 40 MiB filesystem (tmpfs), where this machine lets the tests mount one."""
    yield from mount_tmpfs(tmp_path / "disk", "40M")


def test_a_real_full_disk_at_the_end_is_waited_on_until_space_is_freed(tmp_path, tiny, disk, monkeypatch, quick_room):
    """On a real filesystem full when the training ends (its output, the cache and the rescue
    folder all on it): safetensors' and torch's own words for it are read as a full disk, the
    training waits, and the user's freeing space lets the checkpoint and the LoRA be written."""
    from tests.test_queue_disk_full import fill_disk

    monkeypatch.setenv("COPYLORA_CACHE", str(disk / "cache"))
    project = load_project(copy_example(tmp_path))
    project.info = replace(project.info, output_dir=str(disk / "output"))
    project.train = replace(project.train, save_every_n_steps=0)
    plan = make_plan(project, max_steps=3)
    filler = disk / "filler"
    logs: list[str] = []

    def log(line: str) -> None:
        logs.append(line)
        if line.startswith("training A") or line.startswith("resuming"):
            fill_disk(filler)  # full from the first step on
        if "no space left on the disk" in line and filler.exists():
            filler.unlink()  # the user frees it on reading the warning

    result = train(plan, "a", model=tiny, log=log)
    assert result.status == "done" and plan.side("a").lora_path.is_file() and result.state_path is not None
    assert sum("no space left on the disk" in line for line in logs) == 1, logs



def test_a_lora_written_to_a_full_disk_says_the_file_and_the_room(tmp_path, monkeypatch):
    """safetensors says a full disk as "Error while serializing: I/O error: No space left on
    device (os error 28)": the LoRA's file and its disk are said, and it reads as a full disk
    (so a training waits for room rather than failing)."""
    import safetensors.torch

    from engine.lora.files import save_lora_file
    from engine.lora.weights import LoRAWeights

    def full(*args, **kwargs):
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    target = tmp_path / "out" / "mono_A.safetensors"
    weights = {"lora_unet_x": LoRAWeights(torch.ones(2, 4), torch.ones(4, 2), 1.0)}
    with pytest.raises(OSError) as info:
        save_lora_file(target, weights, {})
    assert str(info.value).startswith(f"cannot write {target}: no space left on its disk (") and disk_full_error(info.value)


def test_new_into_a_full_disk_names_the_destination_not_the_picture(tmp_path, monkeypatch):
    import shutil

    from engine.errors import ValidationError
    from engine.project.scaffold import create_project
    from tests.helpers import write_png

    a, b = write_png(tmp_path / "a.png"), write_png(tmp_path / "b.png", colour=(90, 90, 90))

    def full(src, dst, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(src))

    monkeypatch.setattr(shutil, "copy2", full)
    with pytest.raises(ValidationError) as info:
        create_project(tmp_path / "projects" / "mono", a, b)
    assert [(p.where, p.message.split(" (")[0]) for p in info.value.problems] == [
        ("dest", f"no space left on the disk of {tmp_path / 'projects'} for the pictures")]
    assert not (tmp_path / "projects" / "mono").exists()


def test_check_warns_of_a_disk_without_room_for_the_training(tmp_path, monkeypatch):
    """`check` said valid and `run` queued on a disk with nothing free. It warns, from the sizes
    of the checkpoints this project wrote before where there are some, else a guess by base."""
    import shutil

    from engine.project.plan import plan_warnings, room_warnings

    root = copy_example(tmp_path)
    plan = make_plan(load_project(root))
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=5_000_000))
    warned = room_warnings(plan)
    assert len(warned) == 1 and warned[0].startswith("project.output_dir: the disk of ") and "has 5.0 MB free" in warned[0]
    assert "writes about 42 MB" in warned[0] and warned[0] in plan_warnings(plan)  # 20 MiB a side on a built-in base
    for side in ("a", "b"):  # an earlier run's checkpoints: 10 MB each
        plan.side(side).run_dir.mkdir(parents=True)
        with open(plan.side(side).run_dir / "state-00000010.pt", "wb") as handle:
            handle.truncate(10_000_000)
    assert "writes about 60 MB" in room_warnings(plan)[0]
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=10**12))
    assert room_warnings(plan) == []


@pytest.mark.parametrize(("given", "seconds"), [("60", 60.0), ("0", 0.0), ("abc", 1800.0), ("-5", 1800.0), ("inf", 1800.0), ("nan", 1800.0)])
def test_the_wait_is_set_by_the_environment_and_a_bad_value_is_the_default(monkeypatch, given, seconds):
    monkeypatch.setenv("COPYLORA_ROOM_WAIT_S", given)
    assert room._wait_s() == seconds


def test_a_later_attempts_rescue_keeps_an_earlier_one_and_the_checkpoint_is_rescued_too(tmp_path, tiny, monkeypatch, quick_room):
    """A finished training rescued its LoRA on a disk still full after the wait; the next
    attempt's partial weights replaced it in the rescue folder, the only copy lost. Each attempt
    has its own folder now, and the checkpoint goes there too (only the LoRA did: retry started over)."""
    from engine.train import rescue
    from engine.train.checkpoint import list_states

    monkeypatch.setenv("COPYLORA_CACHE", str(tmp_path / "cache"))
    plan = plan_of(tmp_path, 3)
    real_state = SideRun.write_state

    def write_state(self, step, folder=None):  # the run folder's disk is full; the rescue folder's is not
        if folder is None:
            raise full_disk()
        return real_state(self, step, folder)

    monkeypatch.setattr(SideRun, "write_state", write_state)
    failing(monkeypatch, "write_lora", 1)  # the LoRA where it belongs: full (the budget spent: no wait)
    attempts = []
    for attempt in ("20261207-100000-1", "20261207-110000-2"):
        monkeypatch.setattr(rescue, "_ATTEMPT", [attempt])
        monkeypatch.setattr(room, "_waited", [room.WAIT_S])  # the budget spent: no wait
        with pytest.raises(TrainingError) as info:
            train(plan, "a", model=tiny, log=lambda line: None)
        attempts.append(rescue.rescue_folder(plan.project.root) / attempt)
        assert f"its checkpoint to {attempts[-1]}" in str(info.value), str(info.value)
        failing(monkeypatch, "write_lora", 1)
    for folder in attempts:
        assert (folder / "example-monochrome_A.safetensors").is_file() and list_states(folder / "example-monochrome_A-run")
