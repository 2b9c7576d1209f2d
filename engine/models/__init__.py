"""Base models: loading (diffusers folders, single files), the built-in tiny models, key conversion."""
