"""File formats read without torch or weights: safetensors headers, what a model file is."""
