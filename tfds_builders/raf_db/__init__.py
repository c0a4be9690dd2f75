"""The `raf_db` TFDS builder; importing this package registers it with TFDS."""

from tfds_builders.raf_db.raf_db_dataset_builder import Builder, RafDbConfig

__all__ = ['Builder', 'RafDbConfig']
