"""The `enterface05` TFDS builder; importing this package registers it with TFDS."""

from tfds_builders.enterface05.enterface05_dataset_builder import Builder

__all__ = ['Builder']
