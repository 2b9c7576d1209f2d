"""One line of the worker's or a job's log: stdout, which is the log file.

Written in one unbuffered ``os.write``: a full disk then costs that line, not the process.
Through ``print`` the failed line stayed in Python's buffer, the next ``print`` raised again
(the worker stopped, a job's training with it), and Python's flush at exit turned a finished
job's exit status into 120. One write per line also keeps lines whole beside the output of C
libraries, which append to the same O_APPEND file."""

from __future__ import annotations

import io
import os
import sys


def log_line(line: str) -> None:
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):  # stdout is not a file (captured in a test)
        try:
            print(line, flush=True)
        except OSError:
            pass
        return
    try:
        os.write(fd, (line + "\n").encode("utf-8", "replace"))
    except OSError:  # a full disk, a log file removed from a dead mount: the work goes on without the line
        pass
