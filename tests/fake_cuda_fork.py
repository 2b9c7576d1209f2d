"""Preloaded by tests/test_warm_start.py into the warm-start process (``--also``): makes torch say
"this is a bad fork" (a child forked after its parent touched CUDA) where a CPU build never can,
so that the guards around it run for real.

As on a GPU box, where bitsandbytes queries the GPU when it loads: a fork is bad once bitsandbytes
is loaded, or when the job's environment asks for it (``FAKE_BAD_FORK=1``, read in the forked
child, after the probe). And as there, the driver's own threads start with CUDA (an H100 showed
3 threads after the full tier's imports, and warm starts went off instead of to the base tier).
"""

import os
import sys
import threading

import torch


def _bad_fork() -> bool:
    return "bitsandbytes" in sys.modules or os.environ.get("FAKE_BAD_FORK") == "1"


torch.cuda._is_in_bad_fork = _bad_fork


if "bitsandbytes" in sys.modules:  # CUDA was "touched" by the import: the driver's threads run from now on
    _stop = threading.Event()
    for _name in ("cuda-EvtHandlr", "cuda-EvtHandlr"):
        threading.Thread(target=_stop.wait, name=_name, daemon=True).start()
