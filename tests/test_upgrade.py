"""What an update of copylora meets: a queue a later copylora added columns to, a worker that
died on it (its log's error said where users look), old jobs' rules kept (tests/test_queue.py:
a `run --force` job queued before "restarted" existed)."""

from __future__ import annotations

import pytest

from copylora_tui.cli.main import main
from engine.jobs.queue import Queue

TRACEBACK = """2026-12-07 15:25:57 worker 12616 on {home}: slots ['cpu']
2026-12-07 15:25:57 job #1 (train A+B of /p) started: pid 12617, slot cpu
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "/old/engine/jobs/queue.py", line 223, in _row_to_job
    return Job(**data, depends_on=deps)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^
TypeError: Job.__init__() got an unexpected keyword argument 'slurm'
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("COPYLORA_HOME", str(tmp_path / "state"))
    return tmp_path / "state"


def test_a_column_a_later_copylora_added_does_not_break_reading_jobs(home):
    """A newer copylora's migration under this one's worker: "Job.__init__() got an unexpected
    keyword argument" ended the older worker and emptied its app's queue screen."""
    from engine.jobs.job_cache import JobCache

    queue = Queue(home)
    job = queue.enqueue("merge", "/p", label="merge")
    queue.db.execute("ALTER TABLE jobs ADD COLUMN priority_of_tomorrow TEXT")
    queue.db.execute("UPDATE jobs SET priority_of_tomorrow = 'high'")
    assert queue.get(job.id).label == "merge" and [j.id for j in queue.jobs()] == [job.id]
    assert [j.id for j in JobCache().jobs(queue)] == [job.id]


def test_a_worker_that_died_on_an_error_says_it_where_not_running_is_said(home, capsys):
    from copylora_tui.core.snapshot import read_snapshot
    from engine.jobs.worker import last_worker_error

    queue = Queue(home)
    queue.enqueue("merge", "/p", label="merge")
    log = home / "worker.log"
    assert last_worker_error(home) is None  # no log yet
    log.write_text(TRACEBACK.format(home=home))
    error = "TypeError: Job.__init__() got an unexpected keyword argument 'slurm'"
    assert last_worker_error(home) == error
    assert main(["worker", "status"]) == 3
    assert f"the last worker stopped on an error: {error}" in capsys.readouterr().out
    assert main(["queue"]) == 0
    assert "it stopped on an error: TypeError: Job.__init__()" in " ".join(capsys.readouterr().out.split())
    assert error in read_snapshot(queue).worker_text()
    # a worker started since, and stopped as asked: nothing to say
    log.write_text(log.read_text() + f"2026-12-07 16:00:00 worker 999 on {home}: slots ['cpu']\n2026-12-07 16:05:00 worker stopped\n")
    assert last_worker_error(home) is None and "error" not in read_snapshot(queue).worker_text()
    log.write_text(log.read_text() + f"2026-12-07 16:10:00 worker 1000 on {home}: slots ['cpu']\n")  # killed -9: no traceback
    assert last_worker_error(home) is None
    # a traceback the worker lived on after (a preloaded process's), then a kill -9: not what it died of
    log.write_text(log.read_text() + "Traceback (most recent call last):\n  File \"x\"\nModuleNotFoundError: no module named y\n"
                   "2026-12-07 16:11:00 warm start off: jobs start cold\n")
    assert last_worker_error(home) is None
    log.write_text(TRACEBACK.format(home=home))
    assert last_worker_error(home, started_at=log.stat().st_mtime - 10) == error
    assert last_worker_error(home, started_at=log.stat().st_mtime + 10) is None  # a worker since (in the foreground): an older log


def test_retry_or_resume_of_an_interrupted_job_points_at_the_worker(home, capsys):
    """`queue` calls a running job whose worker is gone "interrupted"; retry said "is running:
    only failed or cancelled jobs can be retried"."""
    from copylora_tui.cli.main import EXIT_USAGE

    queue = Queue(home)
    job = queue.enqueue("merge", "/p", label="merge")
    queue.claim(None)
    for action in ("retry", "resume"):
        assert main([action, str(job.id)]) == EXIT_USAGE
        assert "was interrupted (no worker runs): `copylora worker start` continues it" in capsys.readouterr().err


def test_a_worker_running_the_code_of_before_an_update_is_said(home, tmp_path, capsys, monkeypatch):
    """After a `git pull` under a running worker, `worker status`, `queue` and the app said only
    "worker running": its loop ran the old code until restarted."""
    import json
    import os

    import engine.jobs.worker as worker
    from copylora_tui.core.snapshot import read_snapshot

    queue = Queue(home)
    worker.note_worker_code(home)  # as a worker notes its own files at start
    me = os.getpid()
    noted = json.loads((home / "worker-code.json").read_text())
    assert noted["pid"] == me and noted["files"][worker.__file__] == os.stat(worker.__file__).st_mtime_ns
    assert not [path for path in noted["files"] if "site-packages" in path]
    monkeypatch.setattr(worker, "worker_pid", lambda home: me)
    monkeypatch.setattr("copylora_tui.core.snapshot.worker_pid", lambda home: me)
    assert worker.worker_code_change(home, me) is None
    assert main(["worker", "status"]) == 0 and "has changed since" not in capsys.readouterr().out
    # a file of its code rewritten by an update (a stand-in: the suite's own files stay as they are)
    source = tmp_path / "queue.py"
    source.write_text("old")
    (home / "worker-code.json").write_text(json.dumps({"pid": me, "files": {str(source): os.stat(source).st_mtime_ns - 1}}))
    assert worker.worker_code_change(home, me) == str(source)
    assert worker.worker_code_change(home, me + 1) is None  # another worker's note says nothing of this one
    assert main(["worker", "status"]) == 0
    assert f"{source} has changed since (an update?)" in capsys.readouterr().out
    assert f"on the code of before an update ({source} changed)" in read_snapshot(queue).worker_text()


def test_retry_of_a_job_that_runs_on_without_its_worker_says_it_runs(home, capsys):
    """A job on Slurm runs on with no worker here: it is not "interrupted"."""
    from copylora_tui.cli.main import EXIT_USAGE

    queue = Queue(home)
    job = queue.enqueue("merge", "/p", label="merge")
    queue.claim(None)
    queue.db.execute("UPDATE jobs SET slurm = ? WHERE id = ?", ('{"id": "77", "state": "RUNNING"}', job.id))
    assert main(["retry", str(job.id)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "is running" in err and "interrupted" not in err
