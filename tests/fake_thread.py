"""Preloaded by tests/test_warm_start.py into the warm-start process (``--also``): a library that
starts a thread of its own when imported, which a fork would lose."""

import threading

_stop = threading.Event()
threading.Thread(target=_stop.wait, name="a library's own thread", daemon=True).start()
