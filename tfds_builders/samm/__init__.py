"""SAMM TFDS builder; importing this package registers `samm` with TFDS."""

from .samm_dataset_builder import Builder

__all__ = ['Builder']
