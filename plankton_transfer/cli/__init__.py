"""Commands users run outside ``dvc repro`` (console scripts in pyproject.toml)."""
