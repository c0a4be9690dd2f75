"""Device mesh and shardings: data parallelism over 'data', optional FSDP over 'fsdp'.

The batch is split over both axes (FSDP is data parallelism whose parameters are also split); parameters and
optimizer state are replicated, except that with mesh.fsdp > 1 every large array is split along its largest
dimension that divides evenly. `jax.jit` with these `NamedSharding`s inserts the collectives; the same code
runs on one CPU, one GPU or a multi-host TPU pod.
"""

import math

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

DATA_AXES = ('data', 'fsdp')
# Arrays smaller than this are replicated even under FSDP: splitting them saves nothing.
FSDP_MIN_SIZE = 2**16


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
  """A ('data', 'fsdp') mesh over all devices; -1 means "all devices not used by the other axis"."""
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  if data == -1:
    data = n // fsdp if fsdp > 0 and n % fsdp == 0 else 0
  elif fsdp == -1:
    fsdp = n // data if n % data == 0 else 0
  if data * fsdp != n:
    raise ValueError(f'mesh.data x mesh.fsdp must equal the {n} available devices; '
                     f'found data={data}, fsdp={fsdp}')
  # Auto axes: under Explicit axes a scan with an unsharded zero carry (the GRU) fails to type-check.
  return jax.make_mesh((data, fsdp), DATA_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every device."""
  return NamedSharding(mesh, P(DATA_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
  if fsdp == 1 or math.prod(shape) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp == 0:
      spec = [None] * len(shape)
      spec[dim] = 'fsdp'
      return P(*spec)
  return P()


def state_shardings(abstract_state, mesh: Mesh, min_size: int = FSDP_MIN_SIZE):
  """NamedShardings for a pytree of arrays or ShapeDtypeStructs (params, optimizer state, counters)."""
  fsdp = mesh.shape['fsdp']
  return jax.tree.map(
      lambda x: NamedSharding(mesh, _fsdp_spec(tuple(x.shape), fsdp, min_size)), abstract_state)


def check_batch_size(global_batch: int, mesh: Mesh, what: str = 'input.batch_size') -> int:
  """The per-host batch size; the global batch must split evenly over hosts and devices."""
  devices, hosts = mesh.devices.size, jax.process_count()
  if global_batch % devices or global_batch % hosts:
    raise ValueError(f'config.{what} must be a multiple of the {devices} devices and {hosts} hosts; '
                     f'found {global_batch}')
  return global_batch // hosts


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Per-host numpy batch -> global jax.Arrays sharded over the data axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
