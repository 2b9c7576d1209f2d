"""Test helpers: turn a diffusers SD1 pipeline into an A1111-style single-file checkpoint.

The single-file loading path needs an original-layout (LDM) checkpoint to read, and none can
be downloaded, so tests convert the tiny model back into that layout. The conversion (the
inverse of diffusers' own single-file conversion) lives in :mod:`engine.ldm_keys`, which
baking into single files uses too.
"""

from __future__ import annotations

from engine.ldm_keys import clip_to_ldm, sd1_single_file_state_dict, unet_to_ldm, vae_to_ldm

__all__ = ["clip_to_ldm", "sd1_single_file_state_dict", "unet_to_ldm", "vae_to_ldm"]
