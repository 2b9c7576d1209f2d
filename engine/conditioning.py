"""Text conditioning for training: prompts into the U-Net's ``encoder_hidden_states``.

Copy-machine training is caption-free: every teacher image is trained with the empty prompt,
so (while the text encoder is frozen) its embedding is computed once and reused. ``clip_skip``
follows sd-scripts: take the N-th last hidden state and apply CLIP's final layer norm to it.
"""

from __future__ import annotations


def tokenize(tokenizer, prompt: str):
    return tokenizer(
        prompt,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def encode_prompt(model, prompt: str, clip_skip: int = 1, *, grad: bool = False):
    """``(1, 77, dim)`` hidden states of ``prompt`` for a SD1/SD2 model."""
    import torch

    if model.is_sdxl:
        raise NotImplementedError("SDXL conditioning (two encoders, pooled embedding, time ids) is not built yet")
    encoder = model.text_encoders[0]
    ids = tokenize(model.tokenizers[0], prompt).to(encoder.device)
    with torch.set_grad_enabled(grad):
        if clip_skip <= 1:
            return encoder(ids)[0]
        out = encoder(ids, output_hidden_states=True)
        hidden = out.hidden_states[-clip_skip]
        final_norm = getattr(encoder, "text_model", encoder).final_layer_norm
        return final_norm(hidden)
