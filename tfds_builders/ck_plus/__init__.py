"""CK+ (Extended Cohn-Kanade) TFDS builder; importing this package registers `ck_plus` with TFDS."""

from .ck_plus_dataset_builder import Builder, CkPlusConfig

__all__ = ['Builder', 'CkPlusConfig']
