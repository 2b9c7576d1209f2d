"""The concept project: its parameters, validation, TOML, plan, scaffolding, pictures, kohya import."""
