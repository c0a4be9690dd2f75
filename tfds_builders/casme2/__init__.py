"""CASME II TFDS builder; importing this package registers `casme2` with TFDS."""

from .casme2_dataset_builder import Builder, Casme2Config

__all__ = ['Builder', 'Casme2Config']
