"""`copylora run` while a job of the project runs (engine.jobs.enqueue): a user changes the
learning rate during a training and runs again. The running training was taken as the one
asked for ("train A+B already running #35"): its LoRAs came out of the old settings, stale,
and `run --wait` said all was done (a day's use on the toy model, 2026-12-07)."""

from __future__ import annotations

from engine.jobs.enqueue import enqueue_project
from engine.jobs.queue import TWIN, JobStatus, Queue
from engine.project.folder import load_project
from engine.project.plan import make_plan
from engine.project.provenance import training_fingerprint
from tests.helpers import copy_example


def running_twin(queue: Queue, root) -> int:
    """`run` of the project, its training claimed and started, its settings noted as the runner notes them."""
    steps = enqueue_project(queue, root, max_steps=4)
    twin = next(s.job for s in steps if s.what == "train A+B")
    assert queue.claim(None).id == twin.id
    plan = make_plan(load_project(root), max_steps=4)
    queue.note_params(twin.id, fingerprints={side: training_fingerprint(plan, side) for side in ("a", "b")})
    return twin.id


def test_a_training_of_changed_settings_is_queued_again_after_the_running_one(tmp_path):
    root = copy_example(tmp_path)
    queue = Queue(tmp_path / "state")
    old = running_twin(queue, root)
    same = {s.what: s for s in enqueue_project(queue, root, max_steps=4)}  # nothing changed: the running one is it
    assert (same["train A+B"].action, same["train A+B"].job.id) == ("already running", old)
    assert same["merge"].action == "already queued"

    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace("learning_rate = 0.001", "learning_rate = 0.003"))
    again = {s.what: s for s in enqueue_project(queue, root, max_steps=4)}
    new = again["train A+B"].job
    assert again["train A+B"].action == "queued" and new.id != old and new.side == TWIN
    assert f"#{old} trains the settings from before your change" in again["train A+B"].reason
    assert again["merge"].action == "queued" and queue.get(again["merge"].job.id).depends_on == [new.id]
    assert again["preview"].action == "queued" and queue.get(again["preview"].job.id).depends_on == [again["merge"].job.id]
    # one training of the sides at a time: the new one waits for the old one, which is not failed by it
    assert queue.claim(None) is None
    queue.finish(old, JobStatus.CANCELLED)
    assert queue.claim(None).id == new.id
    queue.close()


def test_a_sample_only_change_leaves_the_running_training_alone(tmp_path):
    """Changed [sample] prompts train nothing differently: no second training of 4000 steps."""
    root = copy_example(tmp_path)
    queue = Queue(tmp_path / "state")
    old = running_twin(queue, root)
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text().replace('prompts = [""]', 'prompts = ["a house"]'))
    steps = {s.what: s for s in enqueue_project(queue, root, max_steps=4)}
    assert (steps["train A+B"].action, steps["train A+B"].job.id) == ("already running", old)
    queue.close()


def test_a_preview_begun_before_the_result_it_shows_was_written_is_drawn_again(tmp_path):
    """`run` while the preview ran: "preview already running #32", and the grid came out of the
    result before the new one (`grid stale: the merged LoRA changed`)."""
    import os

    root = copy_example(tmp_path)
    queue = Queue(tmp_path / "state")
    steps = {s.what: s for s in enqueue_project(queue, root, max_steps=4)}
    for what in ("train A+B", "merge"):
        queue.claim(None)
        queue.finish(steps[what].job.id, JobStatus.DONE)
    preview = queue.claim(None)
    assert preview.id == steps["preview"].job.id
    result = make_plan(load_project(root), max_steps=4).outputs.result
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_bytes(b"a result written after the preview began")
    os.utime(result, (preview.started_at + 5, preview.started_at + 5))
    again = {s.what: s for s in enqueue_project(queue, root, max_steps=4)}
    assert again["preview"].action == "queued" and again["preview"].job.id != preview.id
    queue.close()
