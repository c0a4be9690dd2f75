"""The `mafw` TFDS builder; importing this package registers it with TFDS."""

from tfds_builders.mafw.mafw_dataset_builder import Builder, MafwConfig

__all__ = ['Builder', 'MafwConfig']
