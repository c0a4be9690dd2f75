"""Config value checks: the leaf that every config schema (generic sections, families, inputs) builds on.

A check is a function ``value -> None | str``: None when the value is fine, else what is expected (the
message says "config.<key>: expected <that>, found <value>"). `check_fields` applies a ``key -> check``
mapping to a flattened config.
"""

from collections.abc import Callable
import re
from typing import Any

Check = Callable[[Any], 'str | None']


class ConfigError(ValueError):
  """A config field holds a value the run cannot use."""


def one_of(*allowed: Any) -> Callable[[Any], str | None]:
  def check(value):
    return None if value in allowed else f'one of {", ".join(map(repr, allowed))}'
  return check


def number(lo: float | None = None, hi: float | None = None, *, integer: bool = False,
           lo_open: bool = False, hi_open: bool = False) -> Callable[[Any], str | None]:
  kind = 'an integer' if integer else 'a number'
  bounds = []
  if lo is not None:
    bounds.append(f'{">" if lo_open else ">="} {lo}')
  if hi is not None:
    bounds.append(f'{"<" if hi_open else "<="} {hi}')
  expected = f'{kind} {" and ".join(bounds)}'.strip()

  def check(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      return expected
    if integer and not isinstance(value, int):
      return expected
    if lo is not None and (value <= lo if lo_open else value < lo):
      return expected
    if hi is not None and (value >= hi if hi_open else value > hi):
      return expected
    return None
  return check


def range_pair(lo: float, hi: float) -> Callable[[Any], str | None]:
  expected = f'a pair (min, max) with {lo} <= min <= max <= {hi}'

  def check(value):
    if (not isinstance(value, (tuple, list)) or len(value) != 2
        or not all(isinstance(v, (int, float)) for v in value)):
      return expected
    return None if lo <= value[0] <= value[1] <= hi else expected
  return check


def int_tuple(value) -> str | None:
  expected = 'a tuple of positive integers, or () for the default'
  if not isinstance(value, (tuple, list)):
    return expected
  return None if all(isinstance(v, int) and v > 0 for v in value) else expected


def string(value) -> str | None:
  return None if isinstance(value, str) else 'a string'


def regex(value) -> str | None:
  expected = "a regular expression ('' = everything)"
  if not isinstance(value, str):
    return expected
  try:
    re.compile(value)
  except re.error as e:
    return f'{expected} ({e})'
  return None


def boolean(value) -> str | None:
  return None if isinstance(value, bool) else 'True or False'


def mesh_axis(value) -> str | None:
  ok = isinstance(value, int) and not isinstance(value, bool) and (value == -1 or value >= 1)
  return None if ok else '-1 (all remaining devices) or a positive integer'



def regex_multipliers(value) -> str | None:
  """A sequence of (regex, multiplier >= 0) pairs, e.g. the weight-decay rules."""
  expected = 'a sequence of (regex, multiplier >= 0) pairs'
  if not isinstance(value, (tuple, list)):
    return expected
  for pair in value:
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2 or not isinstance(pair[0], str)
        or isinstance(pair[1], bool) or not isinstance(pair[1], (int, float)) or pair[1] < 0):
      return expected
    try:
      re.compile(pair[0])
    except re.error as e:
      return f'{expected} ({pair[0]!r}: {e})'
  return None


def check_fields(flat: dict[str, Any], rules: dict[str, Check], partial: bool = False) -> None:
  """Raises ConfigError for the first unknown, missing (unless `partial`) or invalid field of `flat`
  (flattened keys such as 'model.hidden')."""
  for key in flat:
    if key not in rules:
      raise ConfigError(f'config key {key!r} is unknown; known keys: {", ".join(sorted(rules))}')
  for key, check in rules.items():
    if key not in flat:
      if partial:
        continue
      raise ConfigError(f'config key {key!r} is missing; the config file must set it')
    expected = check(flat[key])
    if expected:
      raise ConfigError(f'config.{key}: expected {expected}, found {flat[key]!r}')
