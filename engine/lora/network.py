"""The LoRA network: kohya's modules as forward hooks on the base model."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from engine.errors import LoRAFileError
from engine.lora import fused
from engine.lora.files import load_lora_file, require_finite, save_lora_file
from engine.lora.folded import folded_contribution, folded_weights
from engine.lora.fused import ForwardReplaced, linear_with_loras, plain_linear
from engine.lora.names import find_targets
from engine.lora.step_weights import KEY as STEP_WEIGHTS

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

    from engine.models.loading import BaseModel
from engine.lora.weights import LoRAWeights


class LoRAModule(nn.Module):
    """One low-rank adapter on a Linear or Conv2d, shaped as kohya shapes it.

    A k x k conv gets a k x k ``lora_down`` (same stride/padding as the base conv) and a
    1 x 1 ``lora_up``; ``lora_up`` starts at zero so a new network changes nothing.
    """

    alpha: torch.Tensor  # a buffer (saved with the state dict, as kohya saves it)
    lora_down: nn.Conv2d | nn.Linear
    lora_up: nn.Conv2d | nn.Linear

    def __init__(self, name: str, base: nn.Linear | nn.Conv2d, rank: int, alpha: float | None, multiplier: float = 1.0):
        super().__init__()
        self.name = name
        self.rank = rank
        if isinstance(base, nn.Conv2d):
            self.lora_down = nn.Conv2d(  # the base conv's own geometry (two-int tuples, whatever the hint says)
                base.in_channels, rank, base.kernel_size, base.stride, base.padding, bias=False  # type: ignore[arg-type]
            )
            self.lora_up = nn.Conv2d(rank, base.out_channels, 1, 1, bias=False)
        else:
            self.lora_down = nn.Linear(base.in_features, rank, bias=False)
            self.lora_up = nn.Linear(rank, base.out_features, bias=False)
        # Same init as kohya: the first optimizer steps then behave the same.
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        self.register_buffer("alpha", torch.tensor(0.0))
        self.set_alpha(alpha)
        self.multiplier = multiplier
        # A frozen LoRA under another one's training (the differential route's A) runs in fp32
        # even under fp16 autocast when it runs on its own (carried in the trained LoRA's matmuls,
        # it runs at their precision: engine.lora.folded says why that loses nothing that shows).
        self.full_precision = False
        # A frozen LoRA at the same module whose rows this one's matmuls carry (the differential
        # route's A beside B: engine.lora.folded), and the other way round; set by fold().
        self.folded: LoRAModule | None = None
        self.folded_into: LoRAModule | None = None
        # Not an attribute nn.Module would register: the base weights must stay out of
        # this network's parameters and state dict.
        self.__dict__["base"] = base
        self.base: nn.Linear | nn.Conv2d
        self._hook: RemovableHandle | ForwardReplaced | None = None

    def set_alpha(self, alpha: float | None) -> None:
        alpha = float(self.rank if alpha is None or float(alpha) == 0 else alpha)  # kohya: 0/None means rank
        self.alpha.fill_(alpha)
        self.scale = alpha / self.rank  # a Python float: no device sync in forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The LoRA's own contribution for input ``x`` (multiplier and scale included)."""
        return self.lora_up(self.lora_down(x)) * (self.multiplier * self.scale)

    def contribution(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """What this LoRA adds to its base module's output for input ``x``, in ``dtype``."""
        if self.full_precision:
            with torch.autocast(x.device.type, enabled=False):
                return self(x.to(self.lora_down.weight.dtype)).to(dtype)
        if torch.is_autocast_enabled(x.device.type):
            # Autocast runs both matmuls in its own precision whatever x's dtype: casting x to the
            # LoRA's fp32 first (and the result back) only added copies, two per module per step.
            return self(x)
        return self(x.to(self.lora_down.weight.dtype)).to(dtype)

    def _add_delta(self, module, args, output):
        if self.folded_into is not None and self.folded_into.carries(self):
            return output  # the trained LoRA's hook adds this one's change with its own
        if self.multiplier == 0:
            return output  # strength 0 is exactly the base model, not base + 0*delta
        x, scale = args[0], self.multiplier * self.scale
        if self.folded is not None and self.carries(self.folded):
            return output.add(folded_contribution(self, self.folded, x, output.dtype), alpha=scale)
        weights = self.lora_down.weight.dtype
        if not self.full_precision and (torch.is_autocast_enabled(x.device.type) or output.dtype == x.dtype == weights):
            # The scale applied in the sum (one kernel, and one backward) instead of by a multiply
            # of its own: a LoRA's operators are most of a training step's, each a launch on a GPU.
            added = self.lora_up(self.lora_down(x))
            return output.add(added if added.dtype == output.dtype else added.to(output.dtype), alpha=scale)
        return output + self.contribution(x, output.dtype)

    def fold(self, frozen: LoRAModule) -> None:
        """Carry the frozen LoRA ``frozen`` (at the same module) in this one's matmuls while both
        are hooked in and neither is at strength 0; each adds its own change otherwise."""
        # Through __dict__: as attributes nn.Module would register each as the other's submodule
        # (its weights in this one's parameters, state dict and file).
        self.__dict__["folded"], frozen.__dict__["folded_into"] = frozen, self

    def unfold(self) -> None:
        if self.folded is not None:
            self.folded.__dict__["folded_into"] = None
            self.__dict__["folded"] = None

    def carries(self, frozen: LoRAModule) -> bool:
        """Whether this LoRA's hook adds ``frozen``'s change (its own hook then adds nothing)."""
        return (self.folded is frozen and self._hook is not None and frozen._hook is not None and self.multiplier != 0
                and frozen.multiplier != 0)

    def attach(self) -> None:
        """Hook into the base module: its output now includes this LoRA's (``remove`` undoes it).
        Not ``apply``: that is nn.Module's own method (a function applied to every submodule).

        On a plain frozen Linear (most targets), the Linear's forward is replaced by one function
        of the base and this LoRA (:mod:`engine.lora.fused`: ~a third fewer operators a step);
        elsewhere, and for a second LoRA on the same module, a forward hook adds it."""
        if self._hook is None:
            if not self.full_precision and isinstance(self.lora_down, nn.Linear) and fused.fusable(self.base):
                self._hook = ForwardReplaced(self.base, self._fused_forward)
            else:
                self._hook = self.base.register_forward_hook(self._add_delta)

    def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base Linear's forward with this LoRA (and a frozen one it carries) inside it."""
        base = self.base
        assert isinstance(base, nn.Linear)
        if self.multiplier == 0 or (self.folded_into is not None and self.folded_into.carries(self)):
            return plain_linear(base, x)  # strength 0, or the trained LoRA at this module adds this one's change
        if self.folded is not None and self.carries(self.folded):
            down, up, scale = folded_weights(self, self.folded)
        else:  # cast once for the whole forward where the step prepared them (engine.lora.step_weights)
            down, up = self.__dict__.get(STEP_WEIGHTS) or (self.lora_down.weight, self.lora_up.weight)
            scale = self.multiplier * self.scale
        output = linear_with_loras(base, x, down, up, scale)
        if output is None:  # precisions apart without autocast: the hook's way
            output = self._add_delta(base, (x,), plain_linear(base, x))
        return output

    def remove(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def weights(self) -> LoRAWeights:
        return LoRAWeights(self.lora_down.weight.detach(), self.lora_up.weight.detach(), float(self.alpha))


def fitted_factor(factor: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """A file's factor in the shape of the module it goes to: the same, or the same but for
    trailing 1x1 dims (Linear factors on a 1x1 conv, as SD2-trained LoRAs have on SD1's proj_in,
    and the other way round: A1111 and ComfyUI reshape them so too). None: it does not fit."""
    def squeezed(s) -> tuple:
        s = tuple(s)
        return s[:2] if len(s) == 4 and s[2:] == (1, 1) else s

    if factor.shape == shape:
        return factor
    return factor.reshape(shape) if squeezed(factor.shape) == squeezed(shape) else None


class LoRANetwork(nn.Module):
    """All LoRA modules of one model (U-Net + text encoders), kohya-named.

    ``rank``/``alpha`` apply to Linear and 1x1 conv targets; ``conv_rank`` > 0 also targets
    ResNet blocks and samplers, whose k x k convs get ``conv_rank``/``conv_alpha``.
    ``modules`` ({name: (rank, alpha)}) instead builds exactly those modules, as a file has
    them (any rank per module). ``text_encoder=False`` leaves the text encoders alone.
    """

    def __init__(
        self,
        unet,
        text_encoders,
        *,
        family: str = "sd1",
        rank: int = 8,
        alpha: float | None = 1.0,
        conv_rank: int = 0,
        conv_alpha: float | None = None,
        multiplier: float = 1.0,
        text_encoder: bool = True,
        modules: Mapping[str, tuple[int, float | None]] | None = None,
    ):
        super().__init__()
        self.family = family
        self.multiplier = multiplier
        encoders = list(text_encoders) if text_encoder else []
        with_conv = conv_rank > 0 or modules is not None
        targets = find_targets(unet, encoders, family, with_conv, also=modules or ())
        self.unet_loras = nn.ModuleDict()
        self.text_encoder_loras = nn.ModuleDict()
        if modules is not None:
            known = {t.name for t in targets}
            unknown = sorted(set(modules) - known)
            if unknown:
                # The family is the likely cause only when nothing fits: a file with a few names
                # no layer has (an embedding, a norm, a text encoder this model lacks) is of this family.
                why = "(wrong base model family?)" if len(unknown) == len(modules) else f"(of {len(modules)}; no layer of it has these names)"
                raise LoRAFileError(
                    f"{len(unknown)} LoRA module(s) match nothing in this {family} model "
                    f"{why}: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}"
                )
        for target in targets:
            if modules is not None:
                if target.name not in modules:
                    continue
                r, a = modules[target.name]
            elif target.uses_conv_rank:
                r, a = conv_rank, 1.0 if conv_alpha is None else conv_alpha  # kohya's default conv_alpha
            else:
                r, a = rank, alpha
            lora = LoRAModule(target.name, target.module, r, a, multiplier)
            (self.text_encoder_loras if target.is_text else self.unet_loras)[target.name] = lora
        device = next(iter(unet.parameters())).device
        if device.type != "meta":  # shape-only models keep their LoRAs real, for inspection
            self.to(device)

    # ----------------------------------------------------------------- use

    def loras(self) -> list[LoRAModule]:
        return cast(list[LoRAModule], [*self.unet_loras.values(), *self.text_encoder_loras.values()])

    def apply_to(self) -> LoRANetwork:
        """Hook every LoRA into its module; the model's forward now includes them."""
        for lora in self.loras():
            lora.attach()
        return self

    def remove(self) -> None:
        """Unhook every LoRA: the model computes exactly what it did before."""
        for lora in self.loras():
            lora.remove()

    def set_multiplier(self, multiplier: float) -> None:
        """The LoRA strength (1.0 = as trained, 0.0 = base model)."""
        self.multiplier = multiplier
        for lora in self.loras():
            lora.multiplier = multiplier

    def unet_parameters(self) -> list[nn.Parameter]:
        return [p for lora in self.unet_loras.values() for p in lora.parameters()]

    def text_encoder_parameters(self) -> list[nn.Parameter]:
        return [p for lora in self.text_encoder_loras.values() for p in lora.parameters()]

    def param_groups(self, unet_lr: float, text_encoder_lr: float | None = None) -> list[dict]:
        """Optimizer parameter groups: U-Net and text encoder at their own learning rates."""
        groups = []
        if self.unet_loras:
            groups.append({"params": self.unet_parameters(), "lr": unet_lr})
        if self.text_encoder_loras:
            groups.append({"params": self.text_encoder_parameters(), "lr": text_encoder_lr or unet_lr})
        return groups

    # ----------------------------------------------------------------- weights

    def weights(self) -> dict[str, LoRAWeights]:
        """``{kohya name: LoRAWeights}``, U-Net modules first, then text encoders."""
        return {lora.name: lora.weights() for lora in self.loras()}

    def load_weights(self, source: str | os.PathLike | Mapping[str, LoRAWeights], strict: bool = True) -> None:
        """Copy weights (and alphas) from a file or a ``{name: LoRAWeights}`` mapping.

        ``strict``: every module of the network must be in the source and vice versa.
        """
        weights = load_lora_file(source).modules if isinstance(source, (str, os.PathLike)) else source
        mine = {lora.name: lora for lora in self.loras()}
        if strict:
            missing, extra = sorted(set(mine) - set(weights)), sorted(set(weights) - set(mine))
            if missing or extra:
                raise LoRAFileError(
                    f"LoRA weights do not fit this network: {len(missing)} module(s) missing "
                    f"({', '.join(missing[:3])}), {len(extra)} unexpected ({', '.join(extra[:3])})"
                )
        with torch.no_grad():
            for name, w in weights.items():
                lora = mine.get(name)
                if lora is None:
                    continue
                down, up = fitted_factor(w.down, lora.lora_down.weight.shape), fitted_factor(w.up, lora.lora_up.weight.shape)
                if down is None or up is None:
                    raise LoRAFileError(
                        f"{name}: shapes {tuple(w.down.shape)}/{tuple(w.up.shape)} do not fit "
                        f"{tuple(lora.lora_down.weight.shape)}/{tuple(lora.lora_up.weight.shape)} (a LoRA for another model?)"
                    )
                lora.lora_down.weight.copy_(down)
                lora.lora_up.weight.copy_(up)
                lora.set_alpha(w.alpha)

    def save(self, path: str | os.PathLike, dtype: str | torch.dtype = "fp16", metadata: Mapping[str, Any] | None = None):
        """Write a kohya LoRA file (see :func:`save_lora_file`)."""
        return save_lora_file(path, self.weights(), metadata, dtype)

    @classmethod
    def from_file(cls, path, unet, text_encoders, family: str = "sd1", multiplier: float = 1.0) -> LoRANetwork:
        """A network shaped like a LoRA file (any ranks) holding its weights; not yet applied."""
        lora = load_lora_file(path, family=family)
        require_finite(path, lora.modules, "applied")
        specs = {name: (w.rank, w.alpha) for name, w in lora.modules.items()}
        try:
            network = cls(unet, text_encoders, family=family, multiplier=multiplier, modules=specs)
            network.load_weights(lora.modules)
        except LoRAFileError as exc:  # which file: a preview may apply two (A and the result)
            raise LoRAFileError(f"{path}: {exc}") from None
        return network


def apply_lora_file(path, model: BaseModel, multiplier: float = 1.0) -> LoRANetwork:
    """Apply a LoRA file to a :class:`engine.models.loading.BaseModel` at a strength; undo with ``.remove()``."""
    network = LoRANetwork.from_file(path, model.unet, model.text_encoders, model.family, multiplier)
    return network.apply_to()


