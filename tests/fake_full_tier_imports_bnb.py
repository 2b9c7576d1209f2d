"""Preloaded by tests/test_warm_start.py into the warm-start process (``--also``, before
tests.fake_cuda_fork): a library of the full tier that imports bitsandbytes all the same (as
diffusers did before engine.lean_imports), so the full tier touches "CUDA" and the base tier does not."""

import sys

if "diffusers" in sys.modules:
    import bitsandbytes  # noqa: F401
