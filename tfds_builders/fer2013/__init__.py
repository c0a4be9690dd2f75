"""The `fer2013` TFDS builder; importing this package registers it with TFDS."""

from tfds_builders.fer2013.fer2013_dataset_builder import Builder, Fer2013Config

__all__ = ['Builder', 'Fer2013Config']
