"""avakit: AVA aesthetics dataset -> shards -> trained, evaluated, explainable score model."""

__version__ = "0.1.0"
