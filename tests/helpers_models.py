"""Test helpers: turn a diffusers SD1 pipeline into an A1111-style single-file checkpoint.

The single-file loading path needs an original-layout (LDM) checkpoint to read, and none can
be downloaded, so tests convert the tiny model back into that layout. The conversion (the
inverse of diffusers' own single-file conversion) lives in :mod:`engine.models.ldm_keys`, which
baking into single files uses too.
"""

from __future__ import annotations

from engine.models.ldm_keys import clip_to_ldm, sd1_single_file_state_dict, unet_to_ldm, vae_to_ldm

__all__ = ["clip_to_ldm", "sd1_single_file_state_dict", "unet_to_ldm", "vae_to_ldm"]


def diffusers_load_problems(pipe, path) -> list[str]:
    """Load a LoRA file with diffusers' own ``load_lora_weights`` and return every log line or
    warning that speaks of missing, unexpected or unconverted keys (empty: it read everything)."""
    import logging
    import warnings

    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    loggers = [logging.getLogger(n) for n in ("diffusers", "peft", "transformers")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.load_lora_weights(str(path))
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    return [m for m in messages + [str(w.message) for w in caught]
            if any(s in m.lower() for s in ("unexpected", "missing", "did not match", "not converted"))]
