"""Torch's thread count: chosen per process before torch loads, the user's value winning, and
kept right while other work starts and stops (engine/threads.py; issue 29)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from engine.threads import (
    AUTO_MARK,
    JOBS_VARIABLE,
    CpuUse,
    ThreadGovernor,
    cgroup_cpu_limit,
    choose_threads,
    export,
)
from tests.helpers import copy_example


def test_cores_divided_among_the_jobs_at_once():
    assert choose_threads(1, {}, cores=8).threads == 8
    assert choose_threads(2, {}, cores=8).threads == 4
    assert choose_threads(3, {}, cores=2).threads == 1  # never 0
    choice = choose_threads(2, {}, cores=8)
    assert not choice.explicit and "8 cores available, ÷ 2 jobs at once" in choice.describe()


def test_cores_busy_with_other_work_are_left_to_it():
    # One other CPU-bound process on a 2-core box: one thread, not two that thrash.
    assert choose_threads(1, {}, cores=2, busy=1.0).threads == 1
    assert choose_threads(1, {}, cores=2, busy=0.05).threads == 2  # the worker's own polling is not load
    assert choose_threads(1, {}, cores=2, busy=1.8).threads == 1
    assert choose_threads(1, {}, cores=16, busy=3.5).threads == 12
    assert choose_threads(4, {}, cores=16, busy=3.5).threads == 4  # the share is the cap
    assert "1.0 busy with other work" in choose_threads(1, {}, cores=2, busy=1.0).describe()


def test_the_users_value_wins():
    assert choose_threads(2, {"COPYLORA_THREADS": "3"}, cores=2, busy=2.0).threads == 3
    assert choose_threads(9, {"COPYLORA_THREADS": "3"}, cores=64).threads == 3
    choice = choose_threads(2, {"OMP_NUM_THREADS": "5"}, cores=2, busy=1.0)
    assert choice.threads == 5 and choice.explicit
    # COPYLORA_THREADS beats OMP_NUM_THREADS.
    assert choose_threads(1, {"OMP_NUM_THREADS": "5", "COPYLORA_THREADS": "2"}, cores=8).threads == 2
    # Our own earlier choice, inherited by a child process, is not the user's: choose again.
    inherited = {"OMP_NUM_THREADS": "2", AUTO_MARK: "2"}
    assert not choose_threads(2, inherited, cores=2).explicit and choose_threads(2, inherited, cores=2).threads == 1


def test_a_bad_value_is_said_and_ignored(capsys):
    choice = choose_threads(1, {"COPYLORA_THREADS": "lots"}, cores=4)
    assert choice.threads == 4 and not choice.explicit
    assert "ignoring COPYLORA_THREADS='lots'" in capsys.readouterr().err


def test_export_sets_every_runtime_variable_and_marks_it_ours():
    env: dict[str, str] = {}
    export(choose_threads(2, {}, cores=4), env)
    assert env == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", AUTO_MARK: "2"}
    untouched = {"OMP_NUM_THREADS": "7"}
    export(choose_threads(1, untouched, cores=4), untouched)
    assert untouched == {"OMP_NUM_THREADS": "7"}


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_a_containers_cpu_quota_is_read(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(str(tmp_path)) == expected


class FakeUse:
    def __init__(self, readings):
        self.readings = list(readings)

    def busy(self):
        return self.readings.pop(0)


def test_the_governor_narrows_and_widens_as_other_work_comes_and_goes():
    set_to, lines = [], []
    governor = ThreadGovernor(choose_threads(1, {}, cores=2, busy=0.0), lines.append, every_s=0.0,
                              use=FakeUse([0.0, 1.0, 1.1, 0.1, None]), set_threads=set_to.append)
    for _ in range(5):
        governor.tick()
    assert set_to == [1, 2]
    assert lines == ["threads: 2 → 1 (1.0 of 2 cores busy with other work)", "threads: 1 → 2 (0.1 of 2 cores busy with other work)"]
    assert governor.threads == 2 and governor.changes == 2


def test_the_governor_reads_the_load_only_every_few_seconds():
    use = FakeUse([1.0])
    governor = ThreadGovernor(choose_threads(1, {}, cores=2, busy=0.0), None, every_s=60.0, use=use, set_threads=lambda n: None)
    for _ in range(100):
        governor.tick()
    assert use.readings == [1.0]  # not read: a tick per training step must cost nothing


def test_the_governor_never_changes_the_users_value():
    set_to = []
    governor = ThreadGovernor(choose_threads(1, {"COPYLORA_THREADS": "2"}, cores=2), None, every_s=0.0,
                              use=FakeUse([2.0, 2.0]), set_threads=set_to.append)
    governor.tick()
    assert set_to == []


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat")
def test_cpu_use_sees_another_process_and_not_this_one():
    use = CpuUse()
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 1.0\nwhile time.time() < end: pass"])
    spinner.wait()
    # The spinner had a core (or a share of one on a loaded machine) for a second.
    assert use.busy() >= 0.3
    # This process's own work is not "other work": the difference of the two readings is what
    # counts, so check the arithmetic on readings we control.
    use._last = (0.0, 100.0, 10.0)
    use._read = lambda: (1.0, 101.5, 11.0)  # the machine was busy 1.5 cores, 1.0 of them ours
    assert use.busy() == pytest.approx(0.5)


def _threads_in_child(env_updates: dict[str, str]) -> tuple[int, str]:
    """torch.get_num_threads() in a fresh process that chose its width the way the runner does."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "COPYLORA_THREADS", AUTO_MARK)}
    env.update(env_updates)
    code = ("from engine.threads import configure_threads\n"
            "choice = configure_threads(sample_s=0.05)\n"
            "import torch\n"
            "print(torch.get_num_threads(), choice.describe(), sep='|')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True).stdout
    count, text = out.strip().rsplit("\n", 1)[-1].split("|", 1)
    return int(count), text


def test_torch_loads_with_the_chosen_width():
    pytest.importorskip("torch")
    cores = len(os.sched_getaffinity(0))
    count, text = _threads_in_child({JOBS_VARIABLE: str(cores)})
    assert count == 1 and f"÷ {cores} jobs at once" in text or cores == 1
    # (torch caps its pool at the machine's cores, so ask for one, which differs from its default
    # wherever a second core exists.)
    count, text = _threads_in_child({"COPYLORA_THREADS": "1"})
    assert count == 1 and "set by the environment: COPYLORA_THREADS" in text


@pytest.mark.slow
def test_the_worker_gives_each_job_its_share_and_the_log_says_it(tmp_path, monkeypatch):
    """Two CPU slots: each job is told two jobs run at once and its log says the width it chose."""
    from engine.jobs.enqueue import enqueue_project
    from engine.jobs.queue import Queue
    from engine.jobs.worker import start_detached, stop_worker

    home = tmp_path / "state"
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "COPYLORA_THREADS"):
        monkeypatch.delenv(name, raising=False)
    queue = Queue(home)
    root = copy_example(tmp_path, "gone")
    steps = enqueue_project(queue, root, max_steps=2)
    # The job fails at once (its project vanished after it was queued): what matters is the log's
    # first lines, written before any work, so no torch work is spent.
    import shutil

    shutil.rmtree(root)
    start_detached(home, per_gpu=2)
    try:
        first = steps[0].job.id
        deadline = time.time() + 120
        while queue.get(first).status not in ("failed", "done") and time.time() < deadline:
            time.sleep(0.1)
        log = queue.log_path(first).read_text()
    finally:
        stop_worker(home)
    import re

    cores = len(os.sched_getaffinity(0))
    found = re.search(r"threads: (\d+) \((\d+) cores? available, ÷ 2 jobs at once, [\d.]+ busy with other work", log)
    assert found, log
    assert 1 <= int(found.group(1)) <= max(1, cores // 2)
