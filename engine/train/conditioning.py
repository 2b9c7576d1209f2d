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

Longer captions (``[train] max_token_length`` 150 or 225, kohya's option): as sd-scripts reads
them, the prompt is tokenized to N + 2 tokens and cut into N / 75 chunks of 77, each ``<BOS>``,
75 tokens, and the last token of the whole (``<EOS>`` or padding; a chunk of a tokenizer that pads
with ``!`` gets its ``<EOS>`` where its text ends); the chunks go through the encoder as one batch
and their hidden states are joined back into one sequence of N + 2: the first chunk's ``<BOS>``,
each chunk's 75 inner states, the last chunk's last state. SDXL's pooled embedding is the first
chunk's.
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


# The caption tokens one pass of CLIP reads (77 with <BOS> and <EOS>): max_token_length's unit.
CHUNK_TOKENS = 75


def tokenize(tokenizer, prompt: str, max_tokens: int = CHUNK_TOKENS):
    """``prompt``'s token ids: (1, 77), or for ``max_tokens`` of n × 75 (n > 1) its n chunks
    (n, 77), see the module doc. (A tokenizer of another length, the toy's 16, gives chunks of
    its own length.)"""
    import torch

    size = tokenizer.model_max_length
    count = max(1, max_tokens // CHUNK_TOKENS)
    ids = tokenizer(prompt, padding="max_length", max_length=count * (size - 2) + 2, truncation=True, return_tensors="pt").input_ids
    if count == 1:
        return ids
    ids = ids[0]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    chunks = []
    for start in range(1, count * (size - 2) + 1, size - 2):
        chunk = torch.cat([ids[:1], ids[start : start + size - 2], ids[-1:]])
        if pad != eos:  # padded with "!": the chunk's text must still end in <EOS> (the pooled output is read there)
            if int(chunk[-2]) not in (eos, pad):
                chunk[-1] = eos
            if int(chunk[1]) == pad:  # a chunk past the text: <BOS> <EOS> ! ! ...
                chunk[1] = eos
        chunks.append(chunk)
    return torch.stack(chunks)


def joined_chunks(hidden):
    """(n, 77, dim) hidden states of a prompt's chunks as one (1, n * 75 + 2, dim) sequence: the
    first <BOS>, each chunk's inner 75, the last chunk's last state. One chunk is left as it is."""
    import torch

    if hidden.shape[0] == 1:
        return hidden
    inner = hidden[:, 1:-1].reshape(1, -1, hidden.shape[-1])
    return torch.cat([hidden[:1, :1], inner, hidden[-1:, -1:]], dim=1)


def prompt_tokens(tokenizer, prompt: str) -> int:
    """How many tokens ``prompt``'s text is (no <BOS>/<EOS>), uncut: for the warning that a
    caption is longer than the text encoder reads."""
    return len(tokenizer(prompt, truncation=False, verbose=False).input_ids) - 2


def encode_text(model: BaseModel, prompt: str, clip_skip: int = 1, *, grad: bool = False, max_tokens: int = CHUNK_TOKENS) -> TextEmbedding:
    """The conditioning of ``prompt`` for ``model`` (any family), see the module doc:
    ``max_tokens`` + 2 states long."""
    import torch

    with torch.set_grad_enabled(grad):
        if not model.is_sdxl:
            encoder = model.text_encoders[0]
            ids = tokenize(model.tokenizers[0], prompt, max_tokens).to(encoder.device)
            if clip_skip <= 1:
                return TextEmbedding(joined_chunks(encoder(ids)[0]))
            out = encoder(ids, output_hidden_states=True)
            final_norm = getattr(encoder, "text_model", encoder).final_layer_norm
            return TextEmbedding(joined_chunks(final_norm(out.hidden_states[-clip_skip])))
        hidden, pooled = [], None
        for tokenizer, encoder in zip(model.tokenizers, model.text_encoders):
            ids = tokenize(tokenizer, prompt, max_tokens).to(encoder.device)
            out = encoder(ids, output_hidden_states=True)
            hidden.append(joined_chunks(out.hidden_states[-(max(clip_skip, 1) + 1)]))
            pooled = getattr(out, "text_embeds", None)  # the second encoder's (with projection)
        return TextEmbedding(torch.cat(hidden, dim=-1), None if pooled is None else pooled[:1])  # the first chunk's


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
