"""SMIC-HS TFDS builder; importing this package registers `smic` with TFDS."""

from .smic_dataset_builder import Builder

__all__ = ['Builder']
