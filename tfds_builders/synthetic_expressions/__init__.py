"""The built-in procedural dataset `synthetic_expressions`; importing it registers the builder."""

from tfds_builders.synthetic_expressions.synthetic_expressions_dataset_builder import (
    Builder, SyntheticExpressionsConfig, build)

__all__ = ['Builder', 'SyntheticExpressionsConfig', 'build']
