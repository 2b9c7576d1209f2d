"""Training one side: the trainer, teacher latents, conditioning, optimizers, checkpoints, progress, previews, class images."""
