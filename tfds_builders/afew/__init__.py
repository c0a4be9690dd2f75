"""The `afew` TFDS builder; importing this package registers it with TFDS."""

from tfds_builders.afew.afew_dataset_builder import Builder

__all__ = ['Builder']
