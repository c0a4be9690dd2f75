"""The built-in procedural dataset `synthetic_expressions`; importing this registers it with TFDS."""

from tfds_builders.synthetic_expressions.synthetic_expressions_dataset_builder import (
    Builder, SyntheticExpressionsConfig, build)

__all__ = ['Builder', 'SyntheticExpressionsConfig', 'build']
