"""Preloaded by tests/test_warm_start.py into the warm-start process (``--also``): its replies come
late, as on a machine swapping hard. ``SLOW_FORK=before``: the fork itself comes after the worker
gave up waiting; ``after``: the job is forked (and takes its ticket) but the reply comes late."""

import os
import sys
import time

warm_start = sys.modules["__main__"]  # the process runs engine.jobs.warm_start as its main module

_fork_job = warm_start.Server.fork_job
_when = os.environ.get("SLOW_FORK", "")


def _slow_fork_job(self, request):
    if _when == "before":
        time.sleep(3)
    pid = _fork_job(self, request)
    if _when == "after":  # late by 3 s after the job took its ticket, however slow the machine is
        deadline = time.monotonic() + 60
        while os.path.exists(request["ticket"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(3)
    mark = os.environ.get("SLOW_FORK_MARK")  # the late fork has come (its pid): the test waits for it, not a guess of seconds
    if mark:
        with open(mark + ".tmp", "w") as handle:
            handle.write(str(pid))
        os.replace(mark + ".tmp", mark)
    return pid


warm_start.Server.fork_job = _slow_fork_job
