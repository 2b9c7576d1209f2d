"""The concept project: its parameters, validation, TOML, plan, scaffolding, pictures, kohya
import — and its outputs (``outputs``: each file's path, its provenance record, and whether it
is current; ``provenance``: the records compared)."""
