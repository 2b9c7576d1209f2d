"""Text conditioning for training: prompts into the U-Net's ``encoder_hidden_states`` (and,
for SDXL, its ``added_cond_kwargs``).

Copy-machine training is caption-free: every teacher image is trained with the empty prompt,
so (while the text encoders are frozen) its embedding is computed once and reused.

SD1/SD2: ``clip_skip`` follows sd-scripts: take the N-th last hidden state and apply CLIP's
final layer norm to it.

SDXL, as its pipeline and sd-scripts encode a prompt: both tokenizers (the second pads with
``!``), each encoder's penultimate hidden state (``hidden_states[-2]``, no final layer norm),
concatenated along the feature axis (768 + 1280 = 2048 wide on the real model); the pooled
embedding is text_encoder_2's projected output (``text_embeds``). ``clip_skip`` N > 1 goes
N - 1 layers further back (A1111's meaning: SDXL's clip skip 1 is already the penultimate
layer; diffusers' ``clip_skip`` is N - 1). The U-Net also takes six "time ids" per sample:
original size (h, w), crop top-left (top, left) and target size (h, w), see :func:`sdxl_time_ids`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.models.loading import BaseModel


@dataclass
class TextEmbedding:
    """One prompt's conditioning: ``hidden`` (1, 77, context dim) for the U-Net's cross
    attention and, for SDXL, ``pooled`` (1, pooled dim), the U-Net's ``text_embeds``."""

    hidden: Any
    pooled: Any = None


def tokenize(tokenizer, prompt: str):
    return tokenizer(
        prompt,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def encode_text(model: BaseModel, prompt: str, clip_skip: int = 1, *, grad: bool = False) -> TextEmbedding:
    """The conditioning of ``prompt`` for ``model`` (any family), see the module doc."""
    import torch

    with torch.set_grad_enabled(grad):
        if not model.is_sdxl:
            encoder = model.text_encoders[0]
            ids = tokenize(model.tokenizers[0], prompt).to(encoder.device)
            if clip_skip <= 1:
                return TextEmbedding(encoder(ids)[0])
            out = encoder(ids, output_hidden_states=True)
            final_norm = getattr(encoder, "text_model", encoder).final_layer_norm
            return TextEmbedding(final_norm(out.hidden_states[-clip_skip]))
        hidden, pooled = [], None
        for tokenizer, encoder in zip(model.tokenizers, model.text_encoders):
            ids = tokenize(tokenizer, prompt).to(encoder.device)
            out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-(max(clip_skip, 1) + 1)])
            pooled = getattr(out, "text_embeds", None)  # the second encoder's (with projection)
        return TextEmbedding(torch.cat(hidden, dim=-1), pooled)


def encode_prompt(model: BaseModel, prompt: str, clip_skip: int = 1, *, grad: bool = False):
    """``(1, 77, dim)`` hidden states of ``prompt`` (SDXL: both encoders', concatenated)."""
    return encode_text(model, prompt, clip_skip, grad=grad).hidden


def sdxl_time_ids(original_hw: tuple[int, int], crop_top_left: tuple[int, int], target_hw: tuple[int, int]):
    """SDXL's six size conditions of one sample as a (1, 6) float32 tensor.

    ``original_hw``: the teacher image's own size; ``crop_top_left``: where the bucket's crop
    starts in the resized image; ``target_hw``: the bucket (all (height, width) / (top, left),
    as SDXL and sd-scripts order them). The pipeline uses (h, w), (0, 0), (h, w) of the image
    it generates.
    """
    import torch

    return torch.tensor([[*original_hw, *crop_top_left, *target_hw]], dtype=torch.float32)


def added_conditions(texts: list[TextEmbedding], time_ids: list, *, device=None, dtype=None) -> dict | None:
    """The U-Net's ``added_cond_kwargs`` for a batch (None for SD1/SD2, whose texts have no pooled)."""
    import torch

    if not texts or texts[0].pooled is None:
        return None
    return {
        "text_embeds": torch.cat([t.pooled for t in texts]).to(device=device, dtype=dtype),
        "time_ids": torch.cat(list(time_ids)).to(device=device, dtype=dtype),
    }
