"""Training one side (or A and B as one batch), previews, class images.

The loop, read in this order:

- ``trainer``: :func:`~engine.train.trainer.train` → ``run_training`` (set-up) → ``_loop`` (one
  straight loop) → ``StepFunction`` (draw → U-Net → loss → backward → optimizer step); the
  ``OneSide`` driver; ``twin``: the ``TwinSides`` driver (A and B as one batch of two).
- ``controls``: ``TrainControls``, how a caller steers a run and hears its progress.
- ``side_run``: ``SideRun``, one side's state (data, LoRA, optimizer, random stream) and writes.
- ``training_data``: what a side trains on, encoded once, and each step's batch.
- ``loss_reads``: reading losses from the GPU without stalling it; ``progress``: the meters.
- ``lora_facts``: the kohya/modelspec facts a LoRA file records; what makes it *current* is
  :mod:`engine.project.outputs`' (its fingerprint, :mod:`engine.project.provenance`).
- ``checkpoint``, ``rescue``: resumable states, and weights kept when a folder fails.
- ``teacher``, ``conditioning``, ``optim``, ``base_weights``, ``start_weights``: the parts.
- ``sample``, ``grid_labels``, ``effect``, ``class_images``: pictures made with a model.
"""
