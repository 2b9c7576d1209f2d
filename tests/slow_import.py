"""Preloaded by tests/test_warm_start.py into the warm-start process (``--also``): an import that
takes far longer than the worker waits for."""

import time

time.sleep(60)
