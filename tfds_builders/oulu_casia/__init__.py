"""Oulu-CASIA NIR&VIS TFDS builder; importing this package registers `oulu_casia` with TFDS."""

from .oulu_casia_dataset_builder import Builder, OuluCasiaConfig

__all__ = ['Builder', 'OuluCasiaConfig']
