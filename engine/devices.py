"""Which device work runs on: one answer to "auto" for training, sampling, merging and extracting.

"auto" (or nothing) is the device of a model already loaded and handed in (a model loaded on
the CPU stays there: on a CUDA box "auto" must not send its inputs to cuda), else cuda when
torch sees one, else the CPU. An explicit "cuda" where torch sees no GPU is the caller's error
class (an input error by default: the device asked for is what to change) with one line, not a
CUDA traceback later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.errors import CopyloraError, InputError

if TYPE_CHECKING:
    from engine.models.loading import BaseModel


def resolve_device(requested: str | None = None, model: BaseModel | None = None, *, error: type[CopyloraError] = InputError) -> str:
    import torch

    if requested and requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise error(f"device {requested} asked for, but torch sees no CUDA GPU (use the cpu)")
        return requested
    if model is not None:
        return str(model.unet.device)
    return "cuda" if torch.cuda.is_available() else "cpu"
