"""The Concept Sliders image-pair step (rohitgandikota/sliders,
``trainscripts/imagesliders/train_lora-scale.py``; facts in docs/one-lora-routes.md): one noise
and one timestep for both pictures; at +m the LoRA learns to denoise B, at −m to denoise A
(the plain diffusion loss against the true noise), both gradients in one optimizer step.

Between −m and +m the LoRA moves the model from drawing A to drawing B; what both pictures share
costs it nothing, so what it learns is their difference (and, unlike ADDifT, also some of the
pictures themselves: the base at 0 draws neither).
"""

from __future__ import annotations

from engine.train.pair_training import PairStep


class SliderStep(PairStep):
    def __call__(self, step: int):
        """Train ``step`` (0-based); the mean of its two losses, on the device."""
        import torch

        run = self.run
        batch, (x_a, x_b), noise = run.draw_latents(step, [run.data, self.data_b])
        timesteps = run.draw_timesteps(x_a.shape[0], self.scheduler)
        cond, added, weights = run.conditioning(batch)
        losses = []
        for x0, multiplier in ((x_b, self.multiplier), (x_a, -self.multiplier)):  # gradients of both, then one step
            noisy = self.scheduler.add_noise(x0, noise, timesteps)
            target = self.scheduler.get_velocity(x0, noise, timesteps) if self.v_prediction else noise
            pred = self.unet(noisy, timesteps, cond, added, multiplier)
            loss = self.checked(step, run.loss_of(pred, target, timesteps, weights, self.scheduler, self.v_prediction))
            run.grad_scaler.scale(loss).backward()  # one graph at a time: the memory of one forward
            losses.append(loss.detach())
        run.network.set_multiplier(1.0)
        run.optimizer_step()
        return torch.stack([(losses[0] + losses[1]) / 2])
