"""User-given paths made absolute at the boundary, so nothing downstream depends on the current directory.

Orbax (0.12.x) rejects relative checkpoint paths ("Checkpoint path should be absolute") in a background
thread, after training has started; TFDS and grain worker processes may run elsewhere. Every CLI and
`train_and_evaluate` therefore resolves paths once, before anything is built. URLs (`gs://...`) are kept.
"""

import os

import ml_collections

# Config fields that hold paths (empty string = unset).
CONFIG_PATH_FIELDS = ('dataset.data_dir', 'init.backbone_weights', 'init.gru_weights')


def resolve(path: str | os.PathLike) -> str:
  """`~` expanded and made absolute; URLs such as gs://bucket/run and '' are returned unchanged."""
  path = os.fspath(path)
  if not path or '://' in path:
    return path
  return os.path.abspath(os.path.expanduser(path))


def resolve_config_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Resolves the path fields of `config` in place (those it has) and returns it."""
  for key in CONFIG_PATH_FIELDS:
    section, field = key.split('.')
    if section in config and field in config[section] and isinstance(config[section][field], str):
      config[section][field] = resolve(config[section][field])
  return config
