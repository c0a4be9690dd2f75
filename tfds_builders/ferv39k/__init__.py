"""The `ferv39k` TFDS builder; importing this package registers it with TFDS."""

from tfds_builders.ferv39k.ferv39k_dataset_builder import Builder, Ferv39kConfig

__all__ = ['Builder', 'Ferv39kConfig']
