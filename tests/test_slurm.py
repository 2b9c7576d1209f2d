"""The Slurm executor (engine.jobs.slurm, slurm_jobs, channel): its options and files without
Slurm, then on a real one-node cluster (tests/slurm_cluster.py): the example project end to
end, bit for bit a local run; a job scancel'ed from outside resumes; a cancel from the queue;
a short time limit checkpoints and resubmits."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import pytest

from engine.errors import CopyloraError
from engine.jobs.channel import ChannelQueue, ingest, open_channel
from engine.jobs.queue import JobStatus, Queue
from engine.jobs.slurm import status_text
from engine.jobs.worker import add_executor_arguments, executor_argv, slurm_options
from tests.helpers import wait_for
from tests.slurm_cluster import slurm_cluster  # noqa: F401 (a fixture)


def parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_executor_arguments(parser)
    return parser.parse_args(list(argv))


def test_options_from_arguments_and_worker_toml(tmp_path):
    assert slurm_options(tmp_path, parsed()) is None  # local by default
    options = slurm_options(tmp_path, parsed("--executor", "slurm", "--partition", "gpu", "--time", "04:00:00",
                                             "--sbatch-arg=--mem=32G"))
    assert options.arguments() == ["--signal=B:TERM@120", "--partition=gpu", "--gres=gpu:1", "--time=04:00:00", "--mem=32G"]
    args = parsed("--executor", "slurm", "--gres", "", "--qos", "low", "--sbatch-arg=--exclusive")
    assert executor_argv(args) == ["--executor", "slurm", "--gres", "", "--qos", "low", "--sbatch-arg=--exclusive"]
    assert "--gres" not in " ".join(slurm_options(tmp_path, args).arguments())  # "" = no GRES (a CPU partition)
    (tmp_path / "worker.toml").write_text('[worker]\nexecutor = "slurm"\npartition = "a100"\naccount = "lab"\nsignal_lead_s = 30\n')
    from_file = slurm_options(tmp_path, parsed("--partition", "h100"))  # the app's `w`: the file; an argument wins
    assert from_file.partition == "h100" and from_file.account == "lab" and from_file.signal_lead_s == 30
    (tmp_path / "worker.toml").write_text('[worker]\nexecutor = "slrum"\n')
    with pytest.raises(CopyloraError, match='executor must be "local" or "slurm"'):
        slurm_options(tmp_path, parsed())


@pytest.mark.parametrize("text, said", [
    ('[worker]\nexecutor = "slurm"\npartiton = "gpu"\n', "unknown key(s) partiton (known: executor, partition, gres"),
    ('[worker]\nexecutor = "slurm"\nsbatch_args = "--mem=32G"\n', 'sbatch_args must be a list of strings (e.g. ["--mem=32G"]), got \'--mem=32G\''),
    ('[worker]\nexecutor = "slurm"\nsbatch_args = [5]\n', "sbatch_args must be a list of strings"),
    ('[worker]\nexecutor = "slurm"\npartition = ["a"]\n', "partition must be a string, got ['a']"),
    ('[worker]\nexecutor = "slurm"\ntime = 1.5\n', "time must be a string (or whole minutes), got 1.5"),
    ('[worker]\nexecutor = "slurm"\nsignal_lead_s = "abc"\n', "signal_lead_s must be whole seconds, 0 or more, got 'abc'"),
    ('[worker]\nexecutor = "slurm"\nsignal_lead_s = -5\n', "signal_lead_s must be whole seconds, 0 or more, got -5"),
    ('[worker]\nexecutor = ["slurm"]\n', "executor must be a string, got ['slurm']"),
    ("worker = 5\n", "[worker] must be a table of settings, got 5"),
    ("[worker]\nsignal_lead_s = " + "9" * 5000 + "\n", "Exceeds the limit (4300 digits)"),
])
def test_a_worker_toml_the_worker_cannot_use_is_refused_naming_the_key(tmp_path, text, said):
    """A typo was ignored without a word, a string of sbatch arguments became one per character,
    and a word where a number goes stopped the worker with a traceback in its log."""
    from engine.errors import InputError

    (tmp_path / "worker.toml").write_text(text)
    with pytest.raises(InputError) as caught:  # the user's to fix: a usage error, exit 2 (it exited 1)
        slurm_options(tmp_path, parsed())
    assert str(caught.value).startswith(f"{tmp_path / 'worker.toml'}: ") and said in str(caught.value), caught.value


def test_a_worker_toml_time_in_whole_minutes_is_taken(tmp_path):
    (tmp_path / "worker.toml").write_text('[worker]\nexecutor = "slurm"\ntime = 240\nsbatch_args = ["--mem=32G"]\n')
    options = slurm_options(tmp_path, parsed())
    assert options.time == "240" and options.arguments()[-2:] == ["--time=240", "--mem=32G"]


def test_status_text():
    assert status_text({"id": "7", "state": "PENDING", "reason": "Resources", "node": ""}) == "Slurm 7 PENDING (Resources)"
    assert status_text({"id": "7", "state": "RUNNING", "reason": "", "node": "gpu07"}) == "Slurm 7 RUNNING on gpu07"
    assert status_text(None) == ""


def test_the_channel_carries_what_the_runner_would_write(tmp_path):
    from engine.train.progress import Progress

    queue = Queue(tmp_path / "state")
    job = queue.enqueue("train", str(tmp_path), side="a", label="train A", total=10)
    queue.claim("slurm")
    folder = open_channel(queue.home, queue.get(job.id))
    remote = ChannelQueue(folder)
    assert remote.get(job.id).label == "train A" and remote.get(job.id).status is JobStatus.RUNNING
    remote.set_start_step(job.id, 4, 10)
    remote.note_params(job.id, fingerprints={"a": "f00"})
    remote.report_progress(job.id, Progress(6, 10, 0.5, 0.4, 1e-3, 2.0, 2.0, 3.0, copy_db=21.5), point=True)
    with open(folder / "events.jsonl", "ab") as events:
        events.write(b'{"event": "finish", "status": "done"')  # a line still being written: not read yet
    offset, events_read = ingest(queue, job.id, folder, 0)
    assert [e["event"] for e in events_read] == ["start_step", "params", "progress"]
    assert queue.get(job.id).params["fingerprints"] == {"a": "f00"}
    got = queue.get(job.id)
    assert (got.start_step, got.step, got.loss, got.copy_db, got.status) == (4, 6, 0.5, 21.5, JobStatus.RUNNING)
    with open(folder / "events.jsonl", "ab") as events:
        events.write(b', "artifacts": {"lora": "x"}}\n')
    offset, events_read = ingest(queue, job.id, folder, offset)
    assert queue.get(job.id).status is JobStatus.DONE and queue.get(job.id).artifacts == {"lora": "x"}
    assert ingest(queue, job.id, folder, offset) == (offset, [])
    queue.close()


# ---- on a real cluster


# The private cluster answers at once and never drops a live job from squeue: the worker asks
# every second (not 5), and takes a job squeue says is over after its 3 answers and 2 s (not a
# minute of a quiet channel, the guard against a shared controller's empty answers, which
# test_slurm_follow proves). A job killed without a word was seen ended a minute later.
FAST_SLURM = {"COPYLORA_SLURM_SQUEUE_EVERY_S": "1", "COPYLORA_SLURM_GONE_AFTER_S": "2"}


def run_env(slurm_env: dict, home) -> dict:
    return {**os.environ, **slurm_env, **FAST_SLURM, "COPYLORA_HOME": str(home), "OMP_NUM_THREADS": "1"}


def start_slurm_worker(env: dict, *extra: str):
    return subprocess.Popen([sys.executable, "-m", "engine.jobs.worker", "--executor", "slurm", "--gres", "", *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)


def stop(worker) -> None:
    worker.terminate()
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()


@pytest.mark.slow
def test_the_example_runs_through_slurm_as_it_runs_here(tmp_path, slurm_cluster, monkeypatch):  # noqa: F811
    import torch

    from engine.jobs.enqueue import enqueue_project
    from engine.lora.files import load_lora_file
    from engine.project.folder import load_project
    from engine.project.plan import make_plan
    from engine.train.twin import train_twin
    from tests.test_worker import project

    home = tmp_path / "state"
    monkeypatch.setenv("COPYLORA_HOME", str(home))
    root = project(tmp_path, "on-slurm")
    queue = Queue(home)
    steps = enqueue_project(queue, root, max_steps=30)
    env = run_env(slurm_cluster, home)
    worker = start_slurm_worker(env)
    try:
        ids = [s.job.id for s in steps]
        wait_for(lambda: queue.get(ids[0]).slurm is not None, 60, "the training to be submitted")
        wait_for(lambda: all(queue.get(i).status in ("done", "failed") for i in ids), 400, "the queue to drain")
    finally:
        stop(worker)
    jobs = [queue.get(i) for i in ids]
    assert [j.status for j in jobs] == ["done"] * 3, [j.error for j in jobs]
    assert all(j.slurm and j.slurm["id"].isdigit() for j in jobs)
    log = queue.log_path(ids[0]).read_text()
    assert f"Slurm job {jobs[0].slurm['id']}" in log and "node " in log
    # Files identical to a local run of the same plan on the same device.
    reference = make_plan(load_project(project(tmp_path, "here")), max_steps=30)
    local = train_twin(reference, log=lambda _line: None)
    for side in ("a", "b"):
        expected, got = load_lora_file(local[side].lora_path).modules, load_lora_file(jobs[0].artifacts[f"lora_{side}"]).modules
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[n].down, got[n].down) and torch.equal(expected[n].up, got[n].up) for n in expected)
    queue.close()


@pytest.mark.slow
def test_scancel_from_outside_resumes_and_cancel_from_the_queue(tmp_path, slurm_cluster, monkeypatch):  # noqa: F811
    from engine.jobs.enqueue import enqueue_project
    from tests.test_worker import project

    home = tmp_path / "state"
    monkeypatch.setenv("COPYLORA_HOME", str(home))
    root = project(tmp_path, "killed", save_every=10)
    queue = Queue(home)
    steps = enqueue_project(queue, root, max_steps=2000)
    train = steps[0].job
    env = run_env(slurm_cluster, home)
    worker = start_slurm_worker(env)
    try:
        wait_for(lambda: (queue.get(train.id).step or 0) >= 25, 180, "training to pass step 25")
        first = queue.get(train.id).slurm["id"]
        stopped_at = queue.get(train.id).step
        subprocess.run(["scancel", first], env=env, check=True, timeout=30)  # as an admin or preemption would: TERM
        wait_for(lambda: (queue.get(train.id).slurm or {}).get("id") not in (None, first), 120, "the job to be submitted again")
        wait_for(lambda: (queue.get(train.id).start_step or 0) > 0, 120, "the job to resume")
        job = queue.get(train.id)
        assert job.attempts == 2 and job.start_step >= stopped_at and job.status is JobStatus.RUNNING  # TERM: a checkpoint, nothing lost
        assert job.slurm["state"] in ("PENDING", "RUNNING")
        out = subprocess.run([sys.executable, "-m", "copylora_tui", "queue"], env=env, capture_output=True, text=True, timeout=60).stdout
        assert f"Slurm {job.slurm['id']}" in out

        # A node failure: the job's process dies without a word; the periodic checkpoint is the way back.
        # (Killed here by its pid: `scancel --signal=KILL` makes this Slurm end the job the polite
        # way, TERM first, which writes a checkpoint.)
        second, resumed = job.slurm["id"], job.start_step
        wait_for(lambda: (queue.get(train.id).step or 0) >= resumed + 15, 180, "more steps")
        import re

        pid = int(re.findall(r"attempt 2, pid (\d+)", queue.log_path(train.id).read_text())[-1])
        killed_at = queue.get(train.id).step
        os.kill(pid, 9)
        wait_for(lambda: (queue.get(train.id).slurm or {}).get("id") not in (None, second) and queue.get(train.id).attempts == 3,
                 120, "the killed job to be submitted again")
        wait_for(lambda: (queue.get(train.id).start_step or 0) > resumed, 120, "the job to resume again")
        job = queue.get(train.id)
        assert job.start_step % 10 == 0 and killed_at - 10 <= job.start_step <= killed_at + 10  # at most save_every_n_steps lost
        assert job.status is JobStatus.RUNNING  # never failed
        queue.cancel(train.id)
        wait_for(lambda: queue.get(train.id).status is JobStatus.CANCELLED, 120, "the cancel")
        log = queue.log_path(train.id).read_text()
        assert "resuming A from step" in log and "received SIGTERM" in log
    finally:
        stop(worker)
    queue.close()


@pytest.mark.slow
def test_a_time_limit_checkpoints_and_resubmits(tmp_path, slurm_cluster, monkeypatch):  # noqa: F811
    from engine.jobs.enqueue import enqueue_project
    from tests.test_worker import project

    home = tmp_path / "state"
    home.mkdir()
    (home / "worker.toml").write_text('[worker]\nexecutor = "slurm"\ntime = "00:01:00"\nsignal_lead_s = 40\n')
    monkeypatch.setenv("COPYLORA_HOME", str(home))
    root = project(tmp_path, "timed", save_every=1000)
    queue = Queue(home)
    train = enqueue_project(queue, root, max_steps=100000)[0].job
    env = run_env(slurm_cluster, home)
    worker = start_slurm_worker(env)  # --executor slurm --gres "": the file gives the rest
    try:
        wait_for(lambda: (queue.get(train.id).start_step or 0) > 0, 240, "a later attempt that resumes")
        job = queue.get(train.id)
        # Attempt 2, or 3 on a loaded machine (a limit that came while the model loaded: nothing to save yet)
        assert job.attempts >= 2 and job.status is JobStatus.RUNNING
        log = queue.log_path(train.id).read_text()
        assert "received SIGTERM" in log and "state saved" in log  # the warning signal, then the checkpoint
        # pause: the runner checkpoints and the Slurm job ends; resume: submitted again, resumed
        wait_for(lambda: queue.get(train.id).slurm.get("state") == "RUNNING", 120, "the second attempt to run")
        queue.pause(train.id)
        wait_for(lambda: queue.get(train.id).status is JobStatus.PAUSED, 120, "the pause")
        paused_at, attempts = queue.get(train.id).step, queue.get(train.id).attempts
        queue.resume(train.id)
        wait_for(lambda: queue.get(train.id).attempts == attempts + 1 and (queue.get(train.id).start_step or 0) >= paused_at, 180,
                 "the resumed job to start from its checkpoint")
        queue.cancel(train.id)
        wait_for(lambda: queue.get(train.id).status is JobStatus.CANCELLED, 120, "the cancel")
    finally:
        stop(worker)
    assert json.loads(json.dumps(job.slurm))["id"].isdigit()
    queue.close()


def test_fifty_jobs_are_submitted_and_followed_at_a_bounded_cost(tmp_path):
    """50 jobs of 50 projects, on a stand-in Slurm (sbatch answers ids, squeue says
    PENDING and counts its calls): all are submitted, squeue runs once per 5 s for all of them,
    and the worker idles under 3 % of a core."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "squeue.calls"
    calls.touch()
    ids = tmp_path / "submitted"  # squeue lists all of this user's jobs (engine.jobs.slurm.squeue): the ones sbatch took
    (bin_dir / "sbatch").write_text('#!/bin/sh\nn=$(cat "$0.n" 2>/dev/null || echo 1000); echo $((n+1)) > "$0.n"; '
                                    f'echo $((n+1)) >> {ids}; echo "$((n+1));cluster"\n')
    (bin_dir / "squeue").write_text(f'#!/bin/sh\necho x >> {calls}\n'
                                    f'for id in $(cat {ids}); do echo "$id|PENDING|Resources|"; done\n')
    for name in ("sbatch", "squeue"):
        (bin_dir / name).chmod(0o755)
    home = tmp_path / "state"
    queue = Queue(home)
    for n in range(50):
        queue.enqueue("merge", str(tmp_path / f"project-{n}"), label="merge")  # (of one project, one at a time: engine.jobs.queue.claim)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "COPYLORA_HOME": str(home)}
    worker = subprocess.Popen([sys.executable, "-m", "engine.jobs.worker", "--executor", "slurm"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: all(j.slurm for j in queue.jobs()), 60, "all 50 to be submitted")
        assert {j.slurm["state"] for j in queue.jobs()} == {"PENDING"}
        time.sleep(2)  # past the submitting
        with open(f"/proc/{worker.pid}/stat") as f:
            before = sum(int(x) for x in f.read().split()[13:15])
        start_calls = len(calls.read_text().splitlines())
        time.sleep(10)
        with open(f"/proc/{worker.pid}/stat") as f:
            after = sum(int(x) for x in f.read().split()[13:15])
        used = (after - before) / os.sysconf("SC_CLK_TCK") / 10
        squeues = len(calls.read_text().splitlines()) - start_calls
    finally:
        stop(worker)
    assert squeues <= 3, f"squeue ran {squeues} times in 10 s"
    assert used <= 0.03, f"the idle worker used {100 * used:.1f} % of a core following 50 Slurm jobs"
    assert {status_text(j.slurm) for j in queue.jobs()} == {f"Slurm {n} PENDING (Resources)" for n in range(1001, 1051)}
    queue.close()


def test_the_slurm_waits_are_set_from_the_environment(monkeypatch):
    """COPYLORA_SLURM_SQUEUE_EVERY_S and COPYLORA_SLURM_GONE_AFTER_S (the cluster tests above run
    with them short); a value that is no number of seconds is the default, not a worker that fails."""
    from engine.jobs.slurm import seconds_from_env

    monkeypatch.delenv("COPYLORA_SLURM_GONE_AFTER_S", raising=False)
    assert seconds_from_env("COPYLORA_SLURM_GONE_AFTER_S", 60.0) == 60.0
    for given, got in (("2", 2.0), ("0.5", 0.5), ("soon", 60.0), ("-1", 60.0), ("inf", 60.0), ("nan", 60.0)):
        monkeypatch.setenv("COPYLORA_SLURM_GONE_AFTER_S", given)
        assert seconds_from_env("COPYLORA_SLURM_GONE_AFTER_S", 60.0) == got, given
