"""avakit: AVA aesthetics dataset -> shards -> trained, evaluated, explainable score model."""

__version__ = "0.1.0"  # the package version: pyproject.toml reads it from here
