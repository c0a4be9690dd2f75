"""pyproject.toml's requires-python tells the truth: it is the lowest Python every locked core dependency
supports, so pip on an older Python stops at once with its Python-version message (pip >= 25.1) instead of a
resolver failure over jax, flax or grain."""

import importlib.metadata
import os
import tomllib

from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = ('jax', 'jaxlib', 'flax', 'grain', 'orbax-checkpoint', 'optax', 'numpy', 'tensorflow-datasets')
PYTHONS = [Version(f'3.{minor}') for minor in range(8, 16)]


def _lowest(spec: str) -> Version:
  return min(v for v in PYTHONS if v in SpecifierSet(spec))


def test_requires_python_is_the_floor_of_the_locked_dependencies():
  with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
    ours = tomllib.load(f)['project']['requires-python']
  theirs = {name: importlib.metadata.metadata(name).get('Requires-Python') or '>=3' for name in CORE}
  floor = max(_lowest(spec) for spec in theirs.values())
  assert floor == Version('3.11'), theirs
  assert _lowest(ours) == floor, (ours, theirs)
