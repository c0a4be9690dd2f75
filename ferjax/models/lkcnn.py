"""LKCNN: InceptionNeXt blocks over landmark blocks of the flow image, fused by relative position attention.

"InceptionNeXt Network with Relative Position Information for Microexpression Recognition" (WASA 2024,
LNCS 14999, doi 10.1007/978-3-031-71470-2_15). The full text is not public; this is a reading of its
abstract, built from the parts it names, every choice the abstract leaves open a field of
``config.model`` (docs/models/lkcnn.md has the readings table and the source of each reading).

Input: ``landmark_blocks`` (``ferjax.data.landmark_blocks``), the S x S tiling of four (S/2) x (S/2)
crops of the onset -> apex u / v / strain image around the eyes and the mouth corners.

  * the input is cut back into its four blocks (2 x 2, row-major: left eye, right eye, left mouth
    corner, right mouth corner);
  * each block runs through an InceptionNeXt backbone (Yu et al., "InceptionNeXt: When Inception Meets
    ConvNeXt", CVPR 2024; github.com/sail-sg/inceptionnext ``models/inceptionnext.py``): a patchify stem
    (conv ``stem_patch`` x ``stem_patch``, stride ``stem_patch``, then BatchNorm), stages of MetaNeXt
    blocks (``depths``, ``dims``; between stages BatchNorm + a 2 x 2 stride 2 conv); a MetaNeXt block is
    token mixer -> BatchNorm -> 1x1 conv MLP (ratio ``mlp_ratio``, exact GELU) -> layer scale
    (``layer_scale``, 1e-6) -> residual; its token mixer is the Inception depthwise convolution
    (``InceptionDWConv2d``). One backbone per block, or one shared by all (``shared_backbone``);
  * the blocks' feature maps are concatenated along channels;
  * relative position attention (``RelativePositionAttention``): multi-head self-attention over tokens
    with a learned bias per head and relative offset (a (2g_h - 1) x (2g_w - 1) table indexed as Swin
    Transformer's ``relative_position_index``). Tokens (``tokens``): ``'blocks'``, one per block (its
    map average-pooled; offsets on the 2 x 2 block grid), or ``'positions'``, one per position of the
    concatenated map (offsets on the map's grid);
  * ReLU, then sigmoid: per-token, per-channel weights in [0.5, 1); the tokens are multiplied by them;
  * classifier: the weighted tokens flattened (``pool='flatten'``) or averaged (``'mean'``), dropout,
    one linear layer.

Initialisation as InceptionNeXt's ``_init_weights``: every conv and linear weight truncated normal with
std 0.02, biases 0; BatchNorm momentum 0.1 / eps 1e-5 (PyTorch's); layer scale 1e-6; the relative
position table truncated normal with std 0.02 (Swin's).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ferjax import config as config_lib
from ferjax import registry
from ferjax.data import landmark_blocks

INPUT = landmark_blocks.NAME  # The batch key this family reads: float32 [B, S, S, 3].
GRID = (2, 2)  # The input's blocks per column and per row.
TOKENS = ('blocks', 'positions')
POOLS = ('flatten', 'mean')

_INIT = nnx.initializers.truncated_normal(0.02)  # timm's trunc_normal_(std=.02), cut at +-2 (absolute).
_ZEROS = nnx.initializers.zeros_init()


def _bn(channels: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, rngs=rngs)


def _depthwise(channels: int, kernel: tuple[int, int], rngs: nnx.Rngs) -> nnx.Conv:
  pad = tuple((k // 2, k // 2) for k in kernel)
  return nnx.Conv(channels, channels, kernel, padding=pad, feature_group_count=channels,
                  kernel_init=_INIT, bias_init=_ZEROS, rngs=rngs)


class InceptionDWConv2d(nnx.Module):
  """Channels split as identity | depthwise s x s | depthwise 1 x k | depthwise k x 1 (each with bias,
  'same' padding), concatenated in that order. A branch has int(C * branch_ratio) channels."""

  def __init__(self, channels: int, *, square_kernel: int = 3, band_kernel: int = 11,
               branch_ratio: float = 0.125, rngs: nnx.Rngs):
    branch = int(channels * branch_ratio)
    if branch < 1:
      raise ValueError(f'InceptionDWConv2d: int({channels} channels * branch_ratio {branch_ratio}) = 0 '
                       'channels per branch; widen the stage or raise branch_ratio')
    self.splits = (channels - 3 * branch, channels - 2 * branch, channels - branch)
    self.square = _depthwise(branch, (square_kernel, square_kernel), rngs)
    self.band_w = _depthwise(branch, (1, band_kernel), rngs)
    self.band_h = _depthwise(branch, (band_kernel, 1), rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    identity, square, band_w, band_h = jnp.split(x, self.splits, axis=-1)
    return jnp.concatenate([identity, self.square(square), self.band_w(band_w), self.band_h(band_h)], -1)


class MetaNeXtBlock(nnx.Module):
  """x + gamma * MLP(BN(InceptionDWConv2d(x))), the MLP two 1x1 convs with an exact GELU between."""

  def __init__(self, dim: int, *, mlp_ratio: float, layer_scale: float, square_kernel: int,
               band_kernel: int, branch_ratio: float, rngs: nnx.Rngs):
    self.mixer = InceptionDWConv2d(dim, square_kernel=square_kernel, band_kernel=band_kernel,
                                   branch_ratio=branch_ratio, rngs=rngs)
    self.norm = _bn(dim, rngs)
    hidden = int(mlp_ratio * dim)
    self.fc1 = nnx.Conv(dim, hidden, (1, 1), kernel_init=_INIT, bias_init=_ZEROS, rngs=rngs)
    self.fc2 = nnx.Conv(hidden, dim, (1, 1), kernel_init=_INIT, bias_init=_ZEROS, rngs=rngs)
    self.gamma = nnx.Param(jnp.full((dim,), layer_scale, jnp.float32))

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = self.norm(self.mixer(x), use_running_average=not train)
    y = self.fc2(jax.nn.gelu(self.fc1(y), approximate=False))  # nn.GELU's default is the exact erf.
    return x + y * self.gamma[...]


class Backbone(nnx.Module):
  """InceptionNeXt over one block: patchify stem + BN, stages of MetaNeXt blocks, downsampling between."""

  def __init__(self, in_channels: int, *, dims: tuple[int, ...], depths: tuple[int, ...],
               stem_patch: int, rngs: nnx.Rngs, **block):
    self.stem = nnx.Conv(in_channels, dims[0], (stem_patch, stem_patch), strides=stem_patch,
                         padding='VALID', kernel_init=_INIT, bias_init=_ZEROS, rngs=rngs)
    self.stem_norm = _bn(dims[0], rngs)
    self.down_norms = nnx.List([_bn(dims[i - 1], rngs) for i in range(1, len(dims))])
    self.downs = nnx.List([nnx.Conv(dims[i - 1], dims[i], (2, 2), strides=2, padding='VALID',
                                    kernel_init=_INIT, bias_init=_ZEROS, rngs=rngs)
                           for i in range(1, len(dims))])
    self.stages = nnx.List([nnx.List([MetaNeXtBlock(dim, rngs=rngs, **block) for _ in range(depth)])
                            for dim, depth in zip(dims, depths)])

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = self.stem_norm(self.stem(x), use_running_average=not train)
    for i, stage in enumerate(self.stages):
      if i:
        x = self.downs[i - 1](self.down_norms[i - 1](x, use_running_average=not train))
      for block in stage:
        x = block(x, train=train)
    return x


def relative_position_index(rows: int, cols: int) -> np.ndarray:
  """int32 [N, N], N = rows * cols (tokens row-major): the table row of the offset from token j to token
  i, (dy + rows - 1) * (2 cols - 1) + (dx + cols - 1) with (dy, dx) = position_i - position_j."""
  y, x = np.divmod(np.arange(rows * cols), cols)
  dy, dx = y[:, None] - y[None, :], x[:, None] - x[None, :]
  return ((dy + rows - 1) * (2 * cols - 1) + dx + cols - 1).astype(np.int32)


class RelativePositionAttention(nnx.Module):
  """Multi-head self-attention over tokens on a rows x cols grid, with a learned bias per head and
  relative offset added to the attention logits (Swin Transformer's relative position bias)."""

  def __init__(self, dim: int, grid: tuple[int, int], *, heads: int, relative_bias: bool = True,
               rngs: nnx.Rngs):
    if dim % heads:
      raise ValueError(f'relative position attention: {dim} channels do not split into {heads} heads')
    self.heads, self.grid = heads, tuple(grid)
    self.qkv = nnx.Linear(dim, 3 * dim, kernel_init=_INIT, bias_init=_ZEROS, rngs=rngs)
    self.proj = nnx.Linear(dim, dim, kernel_init=_INIT, bias_init=_ZEROS, rngs=rngs)
    offsets = (2 * grid[0] - 1) * (2 * grid[1] - 1)
    self.table = nnx.Param(_INIT(rngs.params(), (offsets, heads))) if relative_bias else None
    self.index = relative_position_index(*grid)

  def bias(self) -> jax.Array:
    """float32 [heads, N, N]: the table's entries at the relative position index."""
    n = self.index.shape[0]
    if self.table is None:
      return jnp.zeros((self.heads, n, n), jnp.float32)
    return jnp.transpose(self.table[...][self.index.reshape(-1)].reshape(n, n, self.heads), (2, 0, 1))

  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, d = x.shape
    if n != self.index.shape[0]:
      raise ValueError(f'relative position attention was built for {self.grid} = {self.index.shape[0]} '
                       f'tokens; found {n}')
    q, k, v = jnp.split(self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads), 3, axis=2)
    q, k, v = (t[:, :, 0] for t in (q, k, v))  # [B, N, heads, d_head]
    logits = jnp.einsum('bihd,bjhd->bhij', q, k) / jnp.sqrt(d // self.heads).astype(x.dtype)
    attention = jax.nn.softmax(logits + self.bias(), axis=-1)
    return self.proj(jnp.einsum('bhij,bjhd->bihd', attention, v).reshape(b, n, d))


class LKCNN(nnx.Module):
  """InceptionNeXt backbones over the landmark blocks, relative position attention weights, a classifier."""

  def __init__(self, num_classes: int, *, image_size: int = 28, dims: tuple[int, ...] = (32,),
               depths: tuple[int, ...] = (2,), stem_patch: int = 2, square_kernel: int = 3,
               band_kernel: int = 11, branch_ratio: float = 0.125, mlp_ratio: float = 4.0,
               layer_scale: float = 1e-6, shared_backbone: bool = False, tokens: str = 'blocks',
               heads: int = 1, relative_bias: bool = True, pool: str = 'flatten', dropout: float = 0.0,
               in_channels: int = 3, rngs: nnx.Rngs):
    if tokens not in TOKENS or pool not in POOLS:
      raise ValueError(f'LKCNN: tokens must be one of {TOKENS} and pool one of {POOLS}; got {tokens!r}, '
                       f'{pool!r}')
    if len(dims) != len(depths):
      raise ValueError(f'LKCNN: dims {dims} and depths {depths} must have one entry per stage')
    block = image_size // GRID[0]
    side = block // stem_patch // 2 ** (len(dims) - 1)
    if image_size % (2 * GRID[0]) or side < 1 or block % (stem_patch * 2 ** (len(dims) - 1)):
      raise ValueError(f'LKCNN: {image_size} px input, {block} px blocks: the stem patch {stem_patch} and '
                       f'{len(dims) - 1} downsamplings by 2 must divide the block side')
    self.image_size, self.tokens, self.pool = image_size, tokens, pool
    kw = dict(dims=tuple(dims), depths=tuple(depths), stem_patch=stem_patch, mlp_ratio=mlp_ratio,
              layer_scale=layer_scale, square_kernel=square_kernel, band_kernel=band_kernel,
              branch_ratio=branch_ratio)
    count = 1 if shared_backbone else GRID[0] * GRID[1]
    self.backbones = nnx.List([Backbone(in_channels, rngs=rngs, **kw) for _ in range(count)])
    width = dims[-1]
    if tokens == 'blocks':
      dim, grid = width, GRID
    else:
      dim, grid = GRID[0] * GRID[1] * width, (side, side)
    self.attention = RelativePositionAttention(dim, grid, heads=heads, relative_bias=relative_bias,
                                               rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    features = dim * grid[0] * grid[1] if pool == 'flatten' else dim
    self.head = nnx.Linear(features, num_classes, kernel_init=_INIT, bias_init=_ZEROS, rngs=rngs)

  def blocks(self, x: jax.Array) -> list[jax.Array]:
    """The input's four blocks [B, S/2, S/2, C], row-major."""
    half = x.shape[1] // GRID[0]
    return [x[:, r * half:(r + 1) * half, c * half:(c + 1) * half]
            for r in range(GRID[0]) for c in range(GRID[1])]

  def __call__(self, batch: dict[str, jax.Array], *, train: bool = False,
               rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    x = batch[INPUT]
    channels = self.backbones[0].stem.in_features
    if x.shape[1:] != (self.image_size, self.image_size, channels):
      raise ValueError(f'LKCNN reads {INPUT} [B, {self.image_size}, {self.image_size}, {channels}] '
                       f'(model.image_size); found {x.shape}')
    if train and self.dropout.rate > 0 and rngs is None:
      raise ValueError('LKCNN(train=True) with dropout > 0 needs `rngs` (e.g. nnx.Rngs(dropout=0))')
    maps = [self.backbones[i % len(self.backbones)](block, train=train)
            for i, block in enumerate(self.blocks(x))]
    if self.tokens == 'blocks':
      tokens = jnp.stack([m.mean(axis=(1, 2)) for m in maps], axis=1)  # [B, 4, C]
    else:
      fused = jnp.concatenate(maps, axis=-1)  # [B, h, w, 4C]
      tokens = fused.reshape(fused.shape[0], -1, fused.shape[-1])
    weights = jax.nn.sigmoid(jax.nn.relu(self.attention(tokens)))
    weighted = tokens * weights
    y = weighted.reshape(weighted.shape[0], -1) if self.pool == 'flatten' else weighted.mean(axis=1)
    y = self.dropout(y, deterministic=not train, rngs=rngs)
    return {'logits': self.head(y).astype(jnp.float32), 'block_weights': weights.astype(jnp.float32)}


# config.model of 'lkcnn': the checks; the defaults are in configs/lkcnn.py.
SCHEMA = {
    'image_size': config_lib.number(8, integer=True),
    'dims': config_lib.int_tuple,
    'depths': config_lib.int_tuple,
    'stem_patch': config_lib.number(1, integer=True),
    'square_kernel': config_lib.number(1, integer=True),
    'band_kernel': config_lib.number(1, integer=True),
    'branch_ratio': config_lib.number(0, 1 / 3, lo_open=True),
    'mlp_ratio': config_lib.number(0, lo_open=True),
    'layer_scale': config_lib.number(0, lo_open=True),
    'shared_backbone': config_lib.boolean,
    'tokens': config_lib.one_of(*TOKENS),
    'heads': config_lib.number(1, integer=True),
    'relative_bias': config_lib.boolean,
    'pool': config_lib.one_of(*POOLS),
    'dropout': config_lib.number(0, 1, hi_open=True),
}


def from_config(config, num_classes: int, *, rngs: nnx.Rngs) -> LKCNN:
  fields = {k: v for k, v in config.items() if k != 'name'}
  config_lib.check_fields({f'model.{k}': v for k, v in fields.items()},
                          {f'model.{k}': v for k, v in SCHEMA.items()}, partial=True)
  for key in ('dims', 'depths'):
    if key in fields:
      fields[key] = tuple(fields[key])
      if not fields[key] or min(fields[key]) < 1:
        raise config_lib.ConfigError(f'model.{key} must be positive integers, one per stage; found '
                                     f'{fields[key]}')
  try:
    return LKCNN(num_classes, **fields, rngs=rngs)
  except ValueError as e:
    raise config_lib.ConfigError(f'model: {e}') from e


registry.register(registry.Family('lkcnn', SCHEMA, from_config, inputs=('frames', INPUT)))
