"""The `rml` TFDS builder; importing this package registers it with TFDS."""

from tfds_builders.rml.rml_dataset_builder import Builder

__all__ = ['Builder']
