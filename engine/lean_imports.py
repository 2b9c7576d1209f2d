"""Job processes import diffusers without its bitsandbytes and PEFT integrations.

diffusers decides when it is first imported which optional packages it integrates with, and
imports those when its models load: bitsandbytes (for quantized models) and PEFT (for its own
LoRA loading). copylora uses neither through diffusers: its LoRAs are its own modules, and its
8-bit optimizers come from bitsandbytes directly (engine.train.optim), imported when one is made.
What the two imports cost a job that never uses them:

- ~1.2 s of every cold job start on a CPU (5.8 s of imports became 4.6 s, measured 2026-12-06);
  bitsandbytes alone also tries to fetch a kernel from the Hub on some CPUs and logs a warning.
- On a GPU box, bitsandbytes queries the GPU when it loads, which touches CUDA: the warm-start
  process (engine.jobs.warm_start) then cannot fork jobs with diffusers preloaded and drops to its
  base tier (on the H100, 2026-12-06: "3 threads were running after the imports").

Only processes that copylora starts for itself call this (the job runner, the warm-start process,
the ``copylora`` command): a user's own script, or the test process, keeps diffusers as diffusers
configures itself.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

FLAGS = "diffusers.utils.import_utils"  # where diffusers keeps what ``is_bitsandbytes_available()`` etc. answer
UNUSED = ("_bitsandbytes_available", "_peft_available")


def skip_unused_diffusers_integrations() -> str:
    """Turn diffusers' bitsandbytes and PEFT integrations off in this process, before its models
    load, without importing diffusers (a process that never loads it pays nothing): the flags are
    turned when diffusers sets them. Returns what it did: "now", "when diffusers loads", or "too late" where diffusers'
    models are already loaded."""
    if "diffusers.models.modeling_utils" in sys.modules:
        return "too late"
    flags = sys.modules.get(FLAGS)
    if flags is not None:
        _turn_off(flags)
        return "now"
    if not any(isinstance(finder, _WhenLoaded) for finder in sys.meta_path):
        sys.meta_path.insert(0, _WhenLoaded())
    return "when diffusers loads"


def _turn_off(flags: ModuleType) -> None:
    for name in UNUSED:
        if getattr(flags, name, None) is True:  # a diffusers that names them otherwise: left as it is
            setattr(flags, name, False)


class _WhenLoaded(importlib.abc.MetaPathFinder):
    """Finds diffusers' flags module with the other finders and turns the flags off once it has run."""

    def find_spec(self, fullname, path, target=None):
        if fullname != FLAGS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _ThenTurnOff(spec.loader)
                return spec
        return None


class _ThenTurnOff(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec):
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # The module keeps the real loader (tracebacks, importlib.resources and reloads ask it).
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        _turn_off(module)
