"""Preloaded by tests/test_warm_start.py into the warm-start process (``--also``): makes torch say
"this is a bad fork" (a child forked after its parent touched CUDA) where a CPU build never can,
so that the guards around it run for real.

As on a GPU box where diffusers imports bitsandbytes, which queries the GPU: a fork is bad once
diffusers is loaded, or when the job's environment asks for it (``FAKE_BAD_FORK=1``, read in the
forked child, after the probe)."""

import os
import sys

import torch


def _bad_fork() -> bool:
    return "diffusers" in sys.modules or os.environ.get("FAKE_BAD_FORK") == "1"


torch.cuda._is_in_bad_fork = _bad_fork
