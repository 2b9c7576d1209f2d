"""The differential route's base model: the base with A's LoRA applied while B trains.

B then learns only what turns the copy of picture A into picture B, and B alone is the
copy-machine LoRA (sd-scripts' ``--base_weights A --base_weights_multiplier 1``).

Two ways to apply A, which agree in fp32:

- **frozen LoRA** (default): A's modules are hooked in beside B's and never trained; where A and
  B have a LoRA at the same module, A's rows ride in B's matmuls (:mod:`engine.lora.folded`:
  one LoRA's kernels a step, at the autocast precision, which keeps A's change to ~2⁻¹¹ of
  itself); elsewhere A runs on its own in fp32;
- **merged** (``merge_base_weights = true``): A's delta is added into the base weights in
  their own precision, as sd-scripts does. In fp16 that rounds each weight to ~3 significant
  digits, which drops the small part of A's change (the bake work measured up to 13 % of a
  module's delta lost). It has no per-step cost.

Either way the base model is left as it was found when :meth:`AppliedBaseWeights.remove` runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from engine.errors import InputError
from engine.project.plan import BaseWeights

if TYPE_CHECKING:
    from engine.models.loading import BaseModel


class BaseWeightsError(InputError):
    pass


@dataclass
class AppliedBaseWeights:
    network: Any  # A's LoRANetwork (frozen mode; None when merged)
    backups: list = field(default_factory=list)  # (parameter, original weights on the CPU) when merged
    folded: list = field(default_factory=list)  # B's LoRA modules that carry A's rows (fold_into)

    def fold_into(self, trained, log: Callable[[str], None]) -> None:
        """Carry A's rows in the matmuls of ``trained`` (B's network, hooked in) wherever both have
        a LoRA at one module (:mod:`engine.lora.folded`): one LoRA's operators per module a step,
        instead of two."""
        if self.network is None:
            return
        from engine.lora.folded import foldable

        by_name = {lora.name: lora for lora in trained.loras()}
        frozen = self.network.loras()
        folded = 0
        for lora in frozen:
            partner = by_name.get(lora.name)
            if partner is not None and foldable(partner, lora):
                partner.fold(lora)
                folded += 1
        self.folded = [by_name[lora.name] for lora in frozen if lora.folded_into is not None]
        log(f"differential route: A's rows carried in B's matmuls at {folded} of A's {len(frozen)} modules"
            + ("" if folded == len(frozen) else " (the others run beside B on their own)"))

    def remove(self) -> None:
        """Unhook A, or put the original base weights back."""
        import torch

        for trained in self.folded:
            trained.unfold()
        self.folded.clear()
        if self.network is not None:
            self.network.remove()
        with torch.no_grad():
            for weight, original in self.backups:
                weight.copy_(original.to(weight.device))
        self.backups.clear()


def check_base_weights(base_weights: BaseWeights) -> None:
    """A's LoRA must exist before B trains on it (said before the base model is loaded)."""
    if not base_weights.path.is_file():
        raise BaseWeightsError(f"the differential route trains B on the base with A applied, but A's LoRA {base_weights.path} "
                               "does not exist yet: train A first (`copylora train PROJECT --side a`)")


def apply_base_weights(model: BaseModel, base_weights: BaseWeights, device: str, log: Callable[[str], None]) -> AppliedBaseWeights:
    """Apply A to ``model`` (a :class:`engine.models.loading.BaseModel`) for B's training."""
    import torch

    from engine.errors import LoRAFileError
    from engine.lora.network import LoRANetwork
    from engine.lora.weights import lora_delta

    path = base_weights.path
    check_base_weights(base_weights)
    try:
        network = LoRANetwork.from_file(path, model.unet, model.text_encoders, model.family, base_weights.multiplier)
    except (LoRAFileError, OSError, ValueError) as exc:
        raise BaseWeightsError(f"A's LoRA {path} cannot be applied to the base model: {exc}") from None
    network.requires_grad_(False)
    network.to(device=device, dtype=torch.float32)
    how = "merged into the base weights" if base_weights.merge else "as a frozen LoRA"
    log(f"differential route: applying A ({path.name}) at {base_weights.multiplier:g}, {how}")
    if not base_weights.merge:
        for lora in network.loras():
            lora.full_precision = True
        network.apply_to()
        return AppliedBaseWeights(network)
    applied = AppliedBaseWeights(None)
    with torch.no_grad():
        for lora in network.loras():
            weight = lora.base.weight
            w = lora.weights()
            delta = lora_delta(w.down, w.up, w.alpha).reshape(weight.shape) * base_weights.multiplier
            applied.backups.append((weight, weight.detach().to("cpu", copy=True)))
            # Added in fp32, stored in the weights' own dtype: sd-scripts' rounding, on purpose.
            weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))
    return applied
