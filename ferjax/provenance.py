"""What is needed to repeat a run: code version, library versions, devices, dataset version.

Recorded next to every cross-validation (results.json) so that a table can be traced to the commit (and
whether the working tree had uncommitted changes), the exact jax/flax/optax/grain/orbax versions, the
accelerator, and the prepared dataset's name, config and version.
"""

import importlib.metadata
import os
import platform
import subprocess
from typing import Any

import jax

PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain', 'tensorflow-datasets',
            'numpy', 'opencv-contrib-python-headless', 'ml_collections')


def _git(*args: str) -> str | None:
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    out = subprocess.run(['git', *args], cwd=repo, capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.TimeoutExpired):
    return None
  return out.stdout.strip() if out.returncode == 0 else None


def _archived_commit() -> str | None:
  """The commit a `git archive` of ferjax was made from (source_commit.txt, filled in by export-subst)."""
  try:
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'source_commit.txt')) as f:
      text = f.read().strip()
  except OSError:
    return None
  return text if len(text) == 40 and all(c in '0123456789abcdef' for c in text) else None


def code_version() -> dict[str, Any]:
  """The git commit of the ferjax checkout and whether it had uncommitted changes (None if unknown).

  Outside a git checkout (code shipped as a `git archive`, as launch/ does) the commit is the archive's and
  the code is the committed code (`git_dirty` False).
  """
  commit = _git('rev-parse', 'HEAD')
  if commit is None and (archived := _archived_commit()) is not None:
    return {'git_commit': archived, 'git_dirty': False}
  status = _git('status', '--porcelain', '--untracked-files=no') if commit else None
  return {'git_commit': commit, 'git_dirty': bool(status) if status is not None else None}


def versions() -> dict[str, str | None]:
  out = {'python': platform.python_version()}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def devices() -> dict[str, Any]:
  return {'platform': jax.devices()[0].platform, 'device_kind': jax.devices()[0].device_kind,
          'device_count': jax.device_count(), 'process_count': jax.process_count(),
          'host': platform.node()}


def dataset_version(name: str, data_dir: str | None) -> dict[str, Any]:
  """Name, builder config and version of a prepared TFDS dataset."""
  import tensorflow_datasets as tfds  # Imported here: only callers that record a dataset need it.
  builder = tfds.builder(name, data_dir=data_dir)
  return {'name': name, 'builder': builder.name, 'config': builder.builder_config.name if builder.builder_config else None,
          'version': str(builder.info.version), 'data_dir': builder.data_dir}


def collect() -> dict[str, Any]:
  """Code version, library versions and devices of this process."""
  return {**code_version(), 'versions': versions(), 'devices': devices()}
