"""MEGC2019 composite TFDS builder; importing this package registers `megc2019` with TFDS."""

from .megc2019_dataset_builder import Builder, Megc2019Config

__all__ = ['Builder', 'Megc2019Config']
