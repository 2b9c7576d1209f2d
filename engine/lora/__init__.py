"""The LoRA network, its kohya file format, metadata and module names."""
