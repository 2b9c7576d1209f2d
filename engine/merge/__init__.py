"""Merging LoRAs (exact low-rank SVD), its statistics, baking into and extracting from checkpoints."""
