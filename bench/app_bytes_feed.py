"""A "running" training job for bench/app_bytes.sh: this process is the job's process (so the
app sees it alive), stepping four times a second as a trainer reports, a curve point every 10.

    python bench/app_bytes_feed.py REPO WORK   (writes WORK/ready once the job is queued)
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, sys.argv[1])

from engine.jobs.queue import Queue  # noqa: E402
from engine.train.progress import Progress  # noqa: E402
from tests.test_app_support import make_projects, running_job  # noqa: E402

root = Path(sys.argv[2])
projects = make_projects(root)
queue = Queue()
job = running_job(queue, projects / "example-monochrome", step=50, total=100000, points=40)
(root / "ready").write_text(str(job.id))
step = 50
while True:
    step += 1
    queue.report_progress(job.id, Progress(step, 100000, 0.1, 0.1, 1e-4, 12.5, 80.0, 5.0, 2150.0), point=step % 10 == 0)
    time.sleep(0.25)
