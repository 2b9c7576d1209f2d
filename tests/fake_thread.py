"""Preloaded by tests/test_warm_start.py into the warm-start process (``--also``): a library that
starts a thread of its own when imported, which a fork would lose. The thread names itself (as
the CUDA driver's do), so the worker's line can be checked to name it."""

import ctypes
import threading

_stop = threading.Event()
_named = threading.Event()


def _run() -> None:
    try:
        ctypes.CDLL(None).prctl(15, b"fake-lib-thread", 0, 0, 0)  # PR_SET_NAME: what /proc/.../comm shows
    finally:
        _named.set()
    _stop.wait()


threading.Thread(target=_run, name="a library's own thread", daemon=True).start()
_named.wait(5)
