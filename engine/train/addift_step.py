"""ADDifT's step (hako-mikan's TrainTrain, ``trainer/train.py`` ``train_diff2``; facts in
docs/one-lora-routes.md): one noise and one timestep for both pictures; on even steps the LoRA
at +m on noisy B is fitted to the frozen base's prediction on noisy A, on odd steps the LoRA at
−m on noisy A to the base's prediction on noisy B; one optimizer step each.

Why it works: the base's prediction on noisy A, given noisy B, moves the predicted clean
picture by about B − A where the noise hides the detail (high timesteps), and by nothing where
the base can see both pictures (low ones): so the LoRA learns the change, not the pictures.
The timestep sweeps ``[min_timestep, max_timestep]`` (:func:`engine.project.pair_route.addift_timestep`).
"""

from __future__ import annotations

from engine.project.pair_route import addift_timestep
from engine.train.pair_training import PairStep


class AddiftStep(PairStep):
    def __call__(self, step: int):
        """Train ``step`` (0-based); its loss, on the device."""
        import torch

        run, p = self.run, self.run.p
        batch, (x_a, x_b), noise = run.draw_latents(step, [run.data, self.data_b])
        t = addift_timestep(step, p.min_timestep, min(p.max_timestep, self.scheduler.config.num_train_timesteps))
        timesteps = torch.full((x_a.shape[0],), t, dtype=torch.long, device=x_a.device)
        cond, added, weights = run.conditioning(batch)
        even = step % 2 == 0
        seen, asked = (x_a, x_b) if even else (x_b, x_a)  # the base sees one picture, the LoRA the other
        with torch.no_grad():
            target = self.unet(self.scheduler.add_noise(seen, noise, timesteps), timesteps, cond, added, 0.0)
        pred = self.unet(self.scheduler.add_noise(asked, noise, timesteps), timesteps, cond, added,
                         self.multiplier if even else -self.multiplier)
        run.network.set_multiplier(1.0)
        loss = self.checked(step, run.loss_of(pred, target, timesteps, weights, self.scheduler, self.v_prediction))
        run.grad_scaler.scale(loss).backward()
        run.optimizer_step()
        return torch.stack([loss.detach()])
