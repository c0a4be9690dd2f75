"""The `dfew` TFDS builder; importing this package registers it with TFDS."""

from tfds_builders.dfew.dfew_dataset_builder import Builder, DfewConfig

__all__ = ['Builder', 'DfewConfig']
